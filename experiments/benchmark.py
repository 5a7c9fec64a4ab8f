"""Reference-pipeline benchmark on real Amazon domains.

    python -m experiments.benchmark [--config experiments/configs/pipelines/amazon3.yaml] [--seeds 0 1]
                                    [--output DIR] [--publish NAME]

Runs every method of the core library (popularity, zero-shot θ₀, the ID-based SASRec of each
silo when the config asks for it, the K×K fine-tuned matrix, joint training, the training-free
merges, entropy-only and the full learned merges) once per seed into ``<output>/seed<k>/``
(``report.md`` / ``report.json`` / ``results.csv``, with per-stage wall time and peak memory and
a check of the targets, printed, never asserted). A seed whose finished report has the same
configuration is not run again. ``--publish NAME`` writes the combined report (every seed, the
mean, a plot) to ``experiments/reports/NAME/``, stamped with the commit and date.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from common.config import ConfigError, from_dict, load_yaml, to_dict
from common.federated import BASE_LABEL, IN_DOMAIN_LABEL, OWN_TRAIN_METRIC
from common.federated.coordinator import safe_name
from common.federated.pool import NEW_DOMAIN_LABEL
from common.pipeline import ID_BASELINE, PipelineConfig, run_pipeline
from common.io import atomic_write_text
from common.merging import MergeConfig
from common.report import markdown_table, write_report
from common.runtime import log_to_stderr
from experiments.publish import grouped_bars, publish, stamp

ROOT = Path(__file__).resolve().parents[1]
TARGET_DOMAINS = ("Beauty", "Sports")  # where the silo models are held to the ID baseline
TIME_LIMIT_MIN = 60


def avg_r10(res: dict, label: str) -> float:
    return res[label]["average"]["recall@10"] if label in res else -1.0


def training_free(report: dict) -> list[str]:
    """The rows of the run's training-free merges."""
    labels = [MergeConfig(**m).label for m in report["config"]["merges"]]
    return [label for label in labels if label in report["results"]]


def learned_merges(report: dict) -> list[str]:
    """The learned merges trained with the recommendation or distillation loss (not entropy
    only): the method's own rows."""
    out = []
    for spec in report["config"]["learned"]:
        loss = spec["distill"]["loss"]
        if (loss["rec_weight"] > 0 or loss["kd_weight"] > 0) and spec["name"] in report["results"]:
            out.append(spec["name"])
    return out


def residual_merges(report: dict) -> list[str]:
    """The learned merges that also trained a residual on every weight (``residual_lr``)."""
    return [spec["name"] for spec in report["config"]["learned"]
            if spec["distill"].get("residual_lr", 0.0) > 0]


def check_targets(report: dict) -> list[tuple[str, bool, str]]:
    """The silo-model, merge and time targets, measured on this report."""
    res = report["results"]
    own, base, ids = res[IN_DOMAIN_LABEL], res[BASE_LABEL], res.get(ID_BASELINE)
    checks = []
    for d in [d for d in TARGET_DOMAINS if d in own]:
        for metric in ("recall@10", "ndcg@10") if ids else ():
            ours, theirs = own[d][metric], ids[d][metric]
            checks.append((f"{d}: fine-tuned text model >= 1.0 x SASRec, {metric}", ours >= theirs,
                           f"{ours:.4f} vs {theirs:.4f} ({ours / theirs:.2f}x)"))
        ours, zero = own[d]["recall@10"], base[d]["recall@10"]
        checks.append((f"{d}: fine-tuned text model >= 1.3 x θ₀, recall@10", ours >= 1.3 * zero,
                       f"{ours:.4f} vs {zero:.4f} ({ours / zero:.2f}x)"))
    free = training_free(report)
    best_tf = max(free, key=lambda m: avg_r10(res, m)) if free else "none"
    tf, in_domain = avg_r10(res, best_tf), avg_r10(res, IN_DOMAIN_LABEL)
    learned = learned_merges(report)
    residual = set(residual_merges(report))
    weights_only = [m for m in learned if m not in residual]
    groups = [("best learned merge", learned)]
    if weights_only != learned:  # the paper's family beside it, for reference
        groups.append(("best merging-weights-only learned merge (the paper's)", weights_only))
    for title, names in groups:
        if not names or tf <= 0:
            continue
        best = max(names, key=lambda m: avg_r10(res, m))
        r10 = avg_r10(res, best)
        checks.append((f"{title} ({best}) >= 0.95 x in-domain, avg recall@10",
                       r10 >= 0.95 * in_domain, f"{r10:.4f} vs {in_domain:.4f} ({r10 / in_domain:.1%})"))
        checks.append((f"{title} ({best}) >= 1.10 x best training-free ({best_tf})",
                       r10 >= 1.10 * tf, f"{r10:.4f} vs {tf:.4f} ({r10 / tf - 1:+.1%})"))
    if NEW_DOMAIN_LABEL in res and learned:
        checks.append(route_check(report, max(learned, key=lambda m: avg_r10(res, m))))
    total, known, note = wall_time(report)  # an unknown time never meets the target
    checks.append((f"whole benchmark <= {TIME_LIMIT_MIN} min on this machine",
                   known and total <= TIME_LIMIT_MIN * 60, f"{total / 60:.1f} min{note}"))
    return checks


def route_check(report: dict, best: str) -> tuple[str, bool, str]:
    """The new-domain path costs the seen domains nothing: the best learned merge's package
    serves every seen silo's catalogue with its own weights (its ``trained_on``) and keeps the
    path for other catalogues only. Beside it, what the path would score on the seen domains."""
    seen = [n for n, s in report["silos"].items() if s["trained"]]
    path = Path(report["config"].get("output_dir") or ".") / "models" / safe_name(best) / "config.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    ok = sorted(info.get("trained_on", {})) == sorted(seen) and info.get("new_domain") is not None
    res = report["results"]
    return (f"new-domain path costs the seen domains nothing: {best}'s package serves their "
            "catalogues with its own weights", ok,
            f"trained_on {sorted(info.get('trained_on', {})) or 'missing'}; the path alone on the "
            f"seen domains: {avg_r10(res, NEW_DOMAIN_LABEL):.4f} vs {avg_r10(res, best):.4f}")


def wall_time(report: dict) -> tuple[float, bool, str]:
    """A run's whole wall time in seconds: its own, plus the recorded time of every training it
    reused from an earlier run; whether all of it is known; a note saying what it includes."""
    reused = [t for t in report["training"].values() if t.get("reused_checkpoint")]
    known = all("seconds" in t for t in reused)
    earlier = sum(t.get("seconds", 0.0) for t in reused)
    if not reused:
        note = ""
    elif known:
        note = f", {earlier / 60:.1f} min of it the reused trainings' own time"
    else:
        note = (f" here, plus {len(reused)} reused training(s) whose time their checkpoints "
                "do not record: not measured")
    return report["total_seconds"] + earlier, known, note


def targets(report: dict) -> list[dict]:
    return [{"target": n, "met": ok, "measured": m} for n, ok, m in check_targets(report)]


def training_table(report: dict) -> str:
    """Fine-tuning per silo (and joint training, and the ID baseline): the settings it changed
    from the run's, epochs run, best epoch, the kept weight interpolation α (1: the trained
    weights), validation NDCG@10, seconds. A silo's metrics carry its numeric settings only;
    the others (the loss) come from the run's recorded config (the benchmark runs in-process)."""
    run = report["config"]["train"]
    silo_train = report["config"].get("federation", {}).get("silo_train", {})
    lines = [f"run's settings: {run['batch_size']} users per step, {run['epochs']} epochs, "
             f"lr {run['lr']:g}, loss {run.get('loss', 'full_softmax')}", "",
             "| model | own settings | epochs run | best epoch | kept α | best val N@10 | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, t in report["training"].items():
        own = [f"{k.removeprefix(OWN_TRAIN_METRIC)} {v:g}" for k, v in t.items()
               if k.startswith(OWN_TRAIN_METRIC)]
        own += [f"{k} {v}" for k, v in silo_train.get(name, {}).items() if isinstance(v, str)]
        settings = ", ".join(own) or "the run's"
        secs = f"{t['seconds']:.0f}" if "seconds" in t else "?"
        secs += " (reused)" if t.get("reused_checkpoint") else ""
        lines.append(f"| {name} | {settings} | {t['epochs_run']:.0f} | {t['best_epoch']:.0f} | "
                     f"{t.get('alpha', 1.0):g} | {t['best_val_ndcg@10']:.4f} | {secs} |")
    return "\n".join(lines)


def choices_markdown(report: dict) -> str:
    """What the run chose on its training silos' validation splits: each tuned merge's
    hyper-parameters and the new-domain path, with every candidate's mean validation metric."""
    lines = []
    for label, choice in report.get("chosen_on_validation", {}).items():
        table = choice["table"]
        metric = next(iter(next(iter(table.values())))) if table else "recall@10"
        ranked = sorted(table, key=lambda c: -table[c][metric])
        shown = ", ".join(f"{c}: {table[c][metric]:.4f}" for c in ranked[:4])
        lines.append(f"| {label} | {choice['chosen']} | {metric} (mean over "
                     f"{', '.join(choice['silos'])}); best of {len(table)}: {shown} |")
    if not lines:
        return "none"
    return "\n".join(["| model | chosen | validation (top candidates) |", "|---|---|---|", *lines])


def benchmark_markdown(report: dict, checks: list[tuple[str, bool, str]], level: str = "##") -> str:
    """One run's results, targets, fine-tuning per silo and stages."""
    stage_lines = ["| stage | seconds | peak RSS MB |", "|---|---:|---:|"]
    stage_lines += [f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mb']:.0f} |"
                    for k, v in report["stages"].items()]
    check_lines = ["| target | met | measured |", "|---|---|---|"]
    check_lines += [f"| {n} | {'yes' if ok else 'NO'} | {m} |" for n, ok, m in checks]
    split = report["protocol"]["split"]
    return "\n\n".join([
        f"{level} Recall@10 / NDCG@10 ({split}, full ranking, no history masking)",
        markdown_table(report),
        f"{level} Targets", "\n".join(check_lines),
        f"{level} Chosen on the training silos' validation splits", choices_markdown(report),
        f"{level} Fine-tuning", training_table(report),
        f"{level} Stages (total {report['total_seconds'] / 60:.1f} min, peak RSS "
        f"{report['peak_rss_mb']:.0f} MB)", "\n".join(stage_lines),
    ])


def mean_report(reports: list[dict]) -> dict:
    """The results averaged over seeds (cells present in every seed)."""
    first = reports[0]["results"]
    out: dict = {}
    for method, row in first.items():
        out[method] = {}
        for dom, metrics in row.items():
            if all(dom in r["results"].get(method, {}) for r in reports):
                out[method][dom] = {k: statistics.fmean(r["results"][method][dom][k] for r in reports)
                                    for k in metrics}
    return {"results": out}


def results_csv(report: dict) -> str:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["method", "domain", "metric", "value"])
    for method, row in report["results"].items():
        for dom, metrics in row.items():
            for k, v in metrics.items():
                writer.writerow([method, dom, k, f"{v:.6f}"])
    return rows.getvalue()


def as_json(cfg: PipelineConfig) -> object:
    return json.loads(json.dumps(to_dict(cfg), default=str))


def same_config(recorded: object, cfg: PipelineConfig) -> bool:
    """Whether a finished report's recorded configuration is ``cfg`` (read back through the
    current settings, so a setting added since, at its default, still matches)."""
    try:
        return as_json(from_dict(PipelineConfig, recorded)) == as_json(cfg)
    except (ConfigError, ValueError, TypeError):
        return False


def run_seed(cfg: PipelineConfig, out: Path, made_by: dict[str, str] | None = None) -> dict:
    """One seed's run into ``out`` (reused when a finished report has the same config),
    stamped ``made_by`` (default: the checkout now)."""
    done = out / "report.json"
    cfg.output_dir = str(out)  # part of the configuration a finished report records
    if done.is_file():
        kept = json.loads(done.read_text())
        if same_config(kept.get("config"), cfg):
            print(f"{out}: finished run with this configuration, reused", flush=True)
            kept["targets"] = targets(kept)  # checked by this code
            return kept
    made_by = made_by or stamp()
    report = run_pipeline(cfg)
    report["stamp"] = made_by
    report["targets"] = targets(report)
    write_report(report, out, benchmark_markdown(report, check_targets(report)))
    atomic_write_text(out / "results.csv", results_csv(report))
    return json.loads(done.read_text())


def plot(reports: dict[int, dict], path: Path) -> Path:
    """Average Recall@10 of every method, one bar per seed."""
    methods = list(next(iter(reports.values()))["results"])
    series = {f"seed {seed}": [avg_r10(rep["results"], m) for m in methods]
              for seed, rep in sorted(reports.items())}
    return grouped_bars(methods, series, "average Recall@10 over the domains (test)", path)


def runs_made_by(reports: dict[int, dict]) -> str:
    """Which code produced each seed's run, and when (from the runs' stamps)."""
    return ", ".join(f"seed {s}: `{r.get('stamp', {}).get('commit', '?')}` on "
                     f"{r.get('stamp', {}).get('date', '?')}" for s, r in sorted(reports.items()))


def combined_markdown(config: str, reports: dict[int, dict]) -> str:
    parts = [f"Config: `{config}`; seeds {', '.join(map(str, sorted(reports)))}; runs produced by "
             f"{runs_made_by(reports)}."]
    if len(reports) > 1:
        mean = mean_report(list(reports.values()))
        parts += ["## Mean over seeds", markdown_table(mean)]
        targets = {seed: rep["targets"] for seed, rep in reports.items()}
        lines = ["| target | " + " | ".join(f"seed {s}" for s in sorted(targets)) + " |",
                 "|---|" + "---|" * len(targets)]
        for i, t in enumerate(next(iter(targets.values()))):
            cells = [f"{'yes' if targets[s][i]['met'] else 'NO'}: {targets[s][i]['measured']}"
                     for s in sorted(targets)]
            lines.append(f"| {t['target']} | " + " | ".join(cells) + " |")
        parts += ["## Targets per seed", "\n".join(lines)]
    for seed, rep in sorted(reports.items()):
        checks = [(t["target"], t["met"], t["measured"]) for t in rep["targets"]]
        parts += [f"## Seed {seed}", benchmark_markdown(rep, checks, "###")]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "experiments/configs/pipelines/amazon3.yaml"))
    parser.add_argument("--output", help="results folder (default results/benchmark/<config name>)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data"),
                        help="base of the source paths (default: ../shared/data)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the config's)")
    parser.add_argument("--publish", metavar="NAME",
                        help="write the combined report to experiments/reports/NAME/")
    args = parser.parse_args(argv)
    log_to_stderr()
    cfg = load_yaml(PipelineConfig, args.config)
    for src in cfg.data.sources:
        if not Path(src.path).is_absolute():
            src.path = str(Path(args.data_dir) / src.path)
    out = Path(args.output) if args.output else Path("results") / "benchmark" / Path(args.config).stem
    loaded = stamp()  # the code this process imported: what every seed runs
    reports = {seed: run_seed(replace(cfg, seed=seed), out / f"seed{seed}", loaded)
               for seed in (args.seeds or [cfg.seed])}
    text = combined_markdown(Path(args.config).name, reports)
    atomic_write_text(out / "report.md", text + "\n")
    print(text)
    if args.publish:
        image = plot(reports, out / "benchmark.png")
        first = next(iter(reports.values()))
        summary = {"config": Path(args.config).name, "merges": first["config"]["merges"],
                   "learned": learned_merges(first),
                   "seeds": {s: {k: r.get(k) for k in ("results", "targets", "training", "stages",
                                                       "total_seconds", "peak_rss_mb", "protocol",
                                                       "stamp")}
                             for s, r in reports.items()}}
        where = publish(args.publish, f"Benchmark: {Path(args.config).stem}", text, summary, [image])
        print(f"published to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
