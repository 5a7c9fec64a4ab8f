"""``mergerec-experiment``: run a named experiment (a YAML file) over settings × seeds, then
write a results folder with tables (mean ± std over seeds) and PNG plots.

    mergerec-experiment experiments/configs/experiments/dp.yaml [--mode simulation|in-process] [--report-only]
                        [--seeds 0 1] [--silo-dir DIR] [--output DIR]

An experiment YAML::

    name: dp                          # results/<name>/
    base: amazon3.yaml                # PipelineConfig YAML, relative to this file (null: synthetic)
    data_dir: ../../../shared/data/amazon   # base of the data source paths (relative to this file)
    seeds: [0, 1, 2]
    common: {joint: false}            # deep-merged into the base for every setting
    settings:
      - {label: "ε=∞"}
      - {label: "ε=8", set: {train: {dp: {epsilon: 8}}}, epsilon: 8}
    attack: true                      # membership inference per silo (needs data.holdout_fraction)
    headline: mergerec task-wise      # the method the summary and plots follow
    silo_dir: ../../../results/benchmark/amazon3/seed0/silos  # optional (relative to this file): reuse another
                                      # run's silo work (checkpoints); default results/<name>/silos
    extends: other.yaml               # optional: another experiment YAML this one changes

Each (setting, seed) run writes ``runs/<setting>/seed<k>/`` (report.json, ledger, weights);
a finished run is not re-run, so an interrupted experiment resumes, and ``--report-only``
rebuilds the tables and plots from what is there. A finished run records what it depended on
(its resolved configuration and the hashes of the fine-tuned weights the coordinator received);
when either changed (an edited YAML, or silo checkpoints retrained, e.g. by re-running the
benchmark whose ``silo_dir`` it shares), the run is moved to ``runs/<setting>/stale-seed<k>/``
(``-2``, ``-3``, ... for later ones) and run again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file

from common.config import ConfigError, deep_merge, from_dict, load_yaml, read_yaml, to_dict
from common.data.domain import DataError
from common.experiment import load_full_domains, split_holdout
from common.runtime import log_to_stderr
from common.federated import BASE_LABEL, IN_DOMAIN_LABEL
from common.federated.coordinator import safe_name
from common.backbone import item_inputs, resolve_base
from common.model import state_hash
from common.pipeline import run_pipeline
from common.settings import PipelineConfig
from common.privacy import attack_metrics, membership_scores
from common.io import atomic_write_text
from experiments.benchmark import training_free, wall_time
from experiments.publish import publish, stamp

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Setting:
    """One column of an experiment: a label, the config changes, and (for DP) its ε."""

    label: str
    set: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None


@dataclass
class ExperimentConfig:
    name: str
    settings: list[Setting]
    base: str | None = None
    data_dir: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    common: dict[str, Any] = field(default_factory=dict)
    attack: bool = False
    headline: str = "mergerec task-wise"
    silo_dir: str | None = None


def load_experiment(path: Path) -> tuple[ExperimentConfig, dict]:
    """The experiment and its base PipelineConfig as a raw mapping (paths resolved)."""
    exp = load_yaml(ExperimentConfig, path)
    base: dict = {}
    if exp.base:
        base = read_yaml(path.parent / exp.base) or {}
    if exp.data_dir:  # sources may be named by the base, the common part or a setting
        for mapping in (base, exp.common, *(s.set for s in exp.settings)):
            for src in mapping.get("data", {}).get("sources", []):
                src["path"] = str((path.parent / exp.data_dir / src["path"]).resolve())
    if exp.silo_dir:
        exp.silo_dir = str((path.parent / exp.silo_dir).resolve())
    labels = [s.label for s in exp.settings]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: setting labels must be unique, got {labels}")
    return exp, base


def run_dir(out: Path, setting: Setting, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in setting.label)
    return out / "runs" / safe / f"seed{seed}"


def config_sha256(raw: dict) -> str:
    """Hash of a run's resolved configuration (the YAML mapping, seed included)."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def run_inputs(raw: dict, folder: Path) -> dict[str, Any]:
    """What a finished run depended on: its configuration and the received silo weights."""
    received = sorted((folder / "received").glob("*.safetensors"))
    return {"config_sha256": config_sha256(raw),
            "received_sha256": {p.stem: state_hash(load_file(str(p))) for p in received}}


def kept_checkpoints(silo_dir: Path) -> Callable[[], dict[str, set[str]]]:
    """A lazy, computed-once view: silo (file-name-safe, as in ``received/``) -> state hashes
    of the checkpoints it keeps in ``silo_dir``."""
    @functools.cache
    def hashes() -> dict[str, set[str]]:
        kept: dict[str, set[str]] = {}
        for p in sorted(silo_dir.glob("*/checkpoints/*.safetensors")):
            kept.setdefault(safe_name(p.parents[1].name), set()).add(state_hash(load_file(str(p))))
        return kept
    return hashes


def stale_reason(run: dict, raw: dict, kept: Callable[[], dict[str, set[str]]]) -> str | None:
    """Why a finished run no longer matches its inputs, or None (also for runs recorded before
    inputs were kept, which cannot be checked)."""
    inputs = run.get("inputs")
    if not isinstance(inputs, dict):
        return None
    if inputs.get("config_sha256") != config_sha256(raw):
        return "its configuration changed"
    gone = [silo for silo, h in inputs.get("received_sha256", {}).items()
            if h not in kept().get(silo, set())]
    if gone:
        return (f"the fine-tuned weights it received from {', '.join(gone)} are no longer among "
                "the silos' checkpoints (retrained since)")
    return None


def finished_run(folder: Path, raw: dict, kept: Callable[[], dict[str, set[str]]],
                 report_only: bool) -> dict | None:
    """The finished run in ``folder``, or None when there is none or it is stale (then moved
    aside to ``stale-<folder name>[-n]``; with ``report_only`` a stale run is kept, with a
    warning)."""
    done = folder / "run.json"
    if not done.is_file():
        return None
    finished = json.loads(done.read_text())
    why = stale_reason(finished, raw, kept)
    if why is None:
        return finished
    if report_only:
        print(f"warning: {done} is stale ({why}); reported as it is (--report-only)",
              file=sys.stderr)
        return finished
    aside, n = folder.with_name(f"stale-{folder.name}"), 1
    while aside.exists():  # earlier stale copies are kept too
        n += 1
        aside = folder.with_name(f"stale-{folder.name}-{n}")
    folder.rename(aside)
    print(f"{folder}: {why}; the old run is kept in {aside} and run again", flush=True)
    return None


def run_one(raw: dict, folder: Path, mode: str, silo_dir: Path) -> dict:
    """One (setting, seed) run, in-process or through the Flower simulation; the silos of
    every run keep their work in ``silo_dir``, so runs with the same training reuse it."""
    cfg = from_dict(PipelineConfig, {**raw, "output_dir": str(folder), "silo_dir": str(silo_dir)})
    if mode == "in-process":
        return run_pipeline(cfg)
    experiment = folder / "experiment.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    experiment.write_text(json.dumps(to_dict(cfg)))
    run = subprocess.run([sys.executable, "-m", "coordinator.launch", "simulate", "--experiment",
                          str(experiment), "--output", str(folder), "--flwr-home",
                          str(folder / "flwr-home"), "-c", f"work-dir={silo_dir}"],
                         cwd=ROOT, capture_output=True, text=True)
    (folder / "simulation.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise RuntimeError(f"simulation failed, see {folder / 'simulation.log'}")
    return json.loads((folder / "report.json").read_text())


def leakage(raw: dict, folder: Path, report: dict) -> dict[str, dict[str, float]]:
    """Membership inference against each silo with the weights the coordinator received."""
    cfg = from_dict(PipelineConfig, raw)
    if cfg.data.holdout_fraction <= 0:
        raise ConfigError("attack: true needs data.holdout_fraction > 0 (users the silo never saw)")
    full = load_full_domains(cfg.data)
    model_cfg, base = resolve_base(cfg.encoder, cfg.model, cfg.seed)  # θ₀ as the coordinator built it
    out = {}
    for domain in full:
        received = folder / "received" / f"{domain.name}.safetensors"
        if not received.is_file():
            continue
        members, held_out = split_holdout(cfg.data, domain)
        feats = item_inputs(domain.item_texts, cfg.encoder, model_cfg, cfg.center_features,
                            cfg.data.cache() / "features", domain.name)
        state = load_file(str(received))
        out[domain.name] = attack_metrics(
            membership_scores(state, base, model_cfg, members, feats),
            membership_scores(state, base, model_cfg, held_out, feats))
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def minutes_cell(minutes: list[float], runs: int) -> str:
    """A setting's mean wall time over its ``runs``; "?" when one of them reused trainings
    whose time was not recorded."""
    return f"{statistics.mean(minutes):.1f}" if len(minutes) == runs else "?"


def _avg(report: dict, method: str, metric: str, over: str = "average") -> float | None:
    """A method's ``metric`` averaged ``over`` the seen (``average``) or the evaluation-only
    (``average unseen``) domains."""
    row = report["results"].get(method, {})
    return row.get(over, {}).get(metric)


def run_stats(report: dict, headline: str) -> dict[str, float | None]:
    """The numbers one run contributes to the summary (``None`` where not applicable)."""
    spent = [t["dp_epsilon"] for t in report["training"].values() if "dp_epsilon" in t]
    attack = list(report.get("attack", {}).values())
    free = [v for v in (_avg(report, m, "recall@10") for m in training_free(report)) if v is not None]
    ledger = list(report["ledger"].values())
    seconds, known, _ = wall_time(report)
    minutes = seconds / 60
    return {
        "headline_recall@10": _avg(report, headline, "recall@10"),
        "headline_ndcg@10": _avg(report, headline, "ndcg@10"),
        "in_domain_recall@10": _avg(report, IN_DOMAIN_LABEL, "recall@10"),
        "best_free_recall@10": max(free) if free else None,
        "bytes": statistics.mean(v["bytes"] for v in ledger),
        "queries": statistics.mean(v["queries"] for v in ledger),
        "epsilon": statistics.mean(spent) if spent else None,
        "attack_auc": statistics.mean(a["auc"] for a in attack) if attack else None,
        "attack_advantage": statistics.mean(a["advantage"] for a in attack) if attack else None,
        "wall_minutes": minutes if known else None,
    }


def summarize(exp: ExperimentConfig, runs: dict[str, dict[int, dict]]) -> tuple[str, dict]:
    """Markdown report and a JSON summary (per setting: each statistic over seeds)."""
    labels = [s.label for s in exp.settings if s.label in runs]
    protocols = {label: next(iter(runs[label].values()))["protocol"] for label in labels}
    splits = sorted({p["split"] for p in protocols.values()})
    lines = [f"# Experiment `{exp.name}`", "",
             f"Seeds: {exp.seeds}. Headline method: **{exp.headline}**. Metrics: "
             f"{' and '.join(splits) or 'test'} split, full "
             "ranking over each domain's catalogue, averaged over the seen domains; mean ± std "
             "over seeds. Wall time: a run's own, plus the recorded time of the trainings it "
             "reused from an earlier run (shared silo checkpoints).", "",
             f"| setting | ε (nominal, spent by the silos) | {exp.headline} avg R@10 | avg N@10 | "
             "in-domain R@10 | best training-free R@10 | bytes per silo | queries per silo | "
             "attack AUC | attack adv. | wall time (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary: dict[str, dict[str, list[float]]] = {}
    for setting in exp.settings:
        stats = [run_stats(r, exp.headline) for r in runs.get(setting.label, {}).values()]
        if not stats:
            continue
        row = {k: [s[k] for s in stats if s[k] is not None] for k in stats[0]}
        summary[setting.label] = row  # type: ignore[assignment]
        eps = "∞" if not row["epsilon"] else f"{statistics.mean(row['epsilon']):.2f}"
        if setting.epsilon is not None:
            eps = f"{setting.epsilon:g} (spent {eps})"
        cells = [mean_std(row[k]) for k in ("headline_recall@10", "headline_ndcg@10",
                                            "in_domain_recall@10", "best_free_recall@10")]
        lines.append(f"| {setting.label} | {eps} | " + " | ".join(cells) +
                     f" | {statistics.mean(row['bytes']) / 1e6:.2f} MB | "
                     f"{statistics.mean(row['queries']):.0f} | {mean_std(row['attack_auc'])} | "
                     f"{mean_std(row['attack_advantage'])} | {minutes_cell(row['wall_minutes'], len(stats))} |")
    methods = list(dict.fromkeys(m for label in labels for r in runs[label].values()
                                 for m in r["results"]))  # every setting's methods, in order
    tables = [("average", "seen domains")]
    if any("average unseen" in row for r in runs.values() for rep in r.values()
           for row in rep["results"].values()):
        tables.append(("average unseen", "the evaluation-only (unseen) domains"))
    for over, title in tables:
        lines += ["", f"## Every method: Recall@10 / NDCG@10 averaged over {title}", "",
                  "| method | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for m in methods:
            cells = [" / ".join(mean_std([v for v in (_avg(r, m, metric, over)
                                                      for r in runs[label].values())
                                          if v is not None])
                                for metric in ("recall@10", "ndcg@10")) for label in labels]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += per_domain_table(runs, labels, exp.headline)
    lines += fine_tuning_table(runs, labels)
    lines += ["", sampling_error(runs, labels, exp.headline)]
    stamps = {label: json.dumps(p, default=str) for label, p in protocols.items()}
    if len(set(stamps.values())) == 1:
        lines += ["", "Protocol: " + stamps[labels[0]]]
    else:
        lines += [""] + [f"Protocol ({label}): {p}" for label, p in stamps.items()]
    return "\n".join(lines) + "\n", summary


def per_domain_table(runs: dict[str, dict[int, dict]], labels: list[str], headline: str) -> list[str]:
    """θ₀, the in-domain models and the headline per domain and setting (Recall@10, mean over
    seeds): where a setting gains or loses."""
    rows = [m for m in dict.fromkeys((BASE_LABEL, IN_DOMAIN_LABEL, headline))
            if any(m in r["results"] for rep in runs.values() for r in rep.values())]
    domains = list(dict.fromkeys(d for rep in runs.values() for r in rep.values()
                                 for m in rows for d in r["results"].get(m, {})
                                 if not d.startswith("average")))
    lines = ["", "## Recall@10 per domain", "", "| setting | method | " + " | ".join(domains) + " |",
             "|---|---|" + "---:|" * len(domains)]
    for label in labels:
        for m in rows:
            cells = [mean_std([r["results"][m][d]["recall@10"] for r in runs[label].values()
                               if d in r["results"].get(m, {})]) for d in domains]
            lines.append(f"| {label} | {m} | " + " | ".join(cells) + " |")
    return lines


def fine_tuning_table(runs: dict[str, dict[int, dict]], labels: list[str]) -> list[str]:
    """Each silo's fine-tuning per setting, one entry per seed: the best epoch and the kept
    weight interpolation α (1: the trained weights, ``train.interpolation_grid``)."""
    silos = list(dict.fromkeys(s for rep in runs.values() for r in rep.values()
                               for s in r.get("training", {})))
    if not silos:
        return []
    lines = ["", "## Fine-tuning per silo: best epoch, kept α (one entry per seed)", "",
             "| setting | " + " | ".join(silos) + " |", "|---|" + "---:|" * len(silos)]
    for label in labels:
        cells = ["; ".join(f"epoch {t['best_epoch']:.0f}, α {t.get('alpha', 1.0):g}"
                           for t in (r["training"][s] for r in runs[label].values()
                                     if s in r.get("training", {})) if "best_epoch" in t) or "—"
                 for s in silos]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def sampling_error(runs: dict[str, dict[int, dict]], labels: list[str], method: str) -> str:
    """One standard error of the headline's average Recall@10 from the evaluated users alone
    (binomial per domain, domains independent): the size a difference must exceed to be more
    than which users happened to be sampled."""
    report = next(iter(runs[labels[0]].values()))
    row = report["results"].get(method, {})
    users = {d: p.get("users") for d, p in report["protocol"].get("per_silo", {}).items()}
    doms = [d for d in row if d in users and users[d]]
    if not doms:
        return "Sampling error: not known (no per-silo user counts in the report)."
    var = sum(row[d]["recall@10"] * (1 - row[d]["recall@10"]) / users[d] for d in doms)
    se = math.sqrt(var) / len(doms)
    return (f"Sampling error: one standard error of an average Recall@10 here is ±{se:.4f} "
            f"({', '.join(f'{d} {users[d]:,} users' for d in doms)}); a difference between two "
            f"settings on the same users has a smaller paired error.")


def plot(exp: ExperimentConfig, runs: dict[str, dict[int, dict]], summary: dict, out: Path) -> list[str]:
    """Setting curve (utility with attack AUC), per-domain bars, learned-weights heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    labels = [s.label for s in exp.settings if s.label in summary]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels)), 3.6))
    series = [summary[label]["headline_recall@10"] for label in labels]
    means = [statistics.mean(v) if v else float("nan") for v in series]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in series]
    ax.errorbar(labels, means, yerr=stds, marker="o", capsize=3, label=f"{exp.headline} R@10")
    ax.set_ylabel("avg Recall@10")
    ax.set_xlabel("setting")
    if any(summary[label]["attack_auc"] for label in labels):
        ax2 = ax.twinx()
        ax2.plot(labels, [statistics.mean(summary[label]["attack_auc"])
                          if summary[label]["attack_auc"] else float("nan") for label in labels],
                 "s--", color="tab:red", label="attack AUC")
        ax2.axhline(0.5, color="tab:red", lw=0.5)
        ax2.set_ylabel("membership attack AUC")
    ax.set_title(f"{exp.name}: utility per setting")
    fig.tight_layout()
    fig.savefig(out / "settings.png", dpi=120)
    plt.close(fig)
    made.append("settings.png")

    first = next(iter(runs[labels[0]].values()))
    domains = [d for d in first["results"][IN_DOMAIN_LABEL] if not d.startswith("average")]
    methods = [m for m in (BASE_LABEL, IN_DOMAIN_LABEL, "average", "ties",
                           exp.headline) if m in first["results"]]
    fig, ax = plt.subplots(figsize=(1.6 * len(domains) + 2, 3.6))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [statistics.mean(r["results"][m][d]["recall@10"] for r in runs[labels[0]].values()
                                if d in r["results"][m]) for d in domains]
        ax.bar([j + i * width for j in range(len(domains))], vals, width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(domains))], domains)
    ax.set_ylabel("Recall@10")
    ax.set_title(f"per domain ({labels[0]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "per_domain.png", dpi=120)
    plt.close(fig)
    made.append("per_domain.png")

    weights = first.get("learned_weights", {})
    layered = next((w for w in weights.values() if len(w) > 1), None)
    if layered:
        groups = list(layered)
        matrix = [[layered[g][k] for g in groups] for k in range(len(layered[groups[0]]))]
        fig, ax = plt.subplots(figsize=(1.0 * len(groups) + 2, 0.6 * len(matrix) + 1.5))
        im = ax.imshow(matrix, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(matrix)), [d for d in domains][:len(matrix)])
        fig.colorbar(im, ax=ax, label="merging weight")
        ax.set_title("learned merging weights (domain × layer)")
        fig.tight_layout()
        fig.savefig(out / "weights_heatmap.png", dpi=120)
        plt.close(fig)
        made.append("weights_heatmap.png")
    return made


def run_experiment(path: Path, mode: str = "simulation", report_only: bool = False,
                   output: Path | None = None, seeds: list[int] | None = None,
                   silo_dir: Path | None = None, publish_as: str | None = None) -> Path:
    """Run (or resume) every setting × seed, then write the report; returns the results folder.

    Seed-major order: every setting once before the next seed, so an interrupted experiment
    already has complete comparisons. ``seeds`` restricts the run (and the report) to those
    seeds, e.g. to spread seeds over machines or processes sharing one results folder.
    """
    exp, base = load_experiment(path)
    if seeds is not None:
        exp.seeds = seeds
    if silo_dir is not None:  # e.g. another seed's benchmark checkpoints
        exp.silo_dir = str(silo_dir.resolve())
    out = output or Path("results") / exp.name
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, dict]] = {}
    silo_dir = Path(exp.silo_dir) if exp.silo_dir else out / "silos"
    kept = kept_checkpoints(silo_dir)
    loaded = stamp()  # the code this process imported: what in-process runs execute
    todo = [(s, k) for k in exp.seeds for s in exp.settings]
    for i, (setting, seed) in enumerate(todo, 1):
        folder = run_dir(out, setting, seed)
        raw = deep_merge(deep_merge(base, exp.common), setting.set)
        raw["seed"] = seed
        finished = finished_run(folder, raw, kept, report_only)
        if finished is not None:
            runs.setdefault(setting.label, {})[seed] = finished
            continue
        if report_only:
            continue
        print(f"[{i}/{len(todo)}] {exp.name}: {setting.label}, seed {seed} ({mode})", flush=True)
        made_by = loaded if mode == "in-process" else stamp()  # a simulation imports it anew
        report = run_one(raw, folder, mode, silo_dir)
        if exp.attack:
            report["attack"] = leakage(raw, folder, report)
        report["inputs"] = run_inputs(raw, folder)
        report["stamp"] = made_by
        atomic_write_text(folder / "run.json", json.dumps(report, default=str))
        kept = kept_checkpoints(silo_dir)  # the run may have added checkpoints
        runs.setdefault(setting.label, {})[seed] = report
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    atomic_write_text(out / "experiment.json", json.dumps({"experiment": to_dict(exp), "base": base},
                                                           indent=2, default=str))
    markdown, summary = summarize(exp, runs)
    made_by = sorted({r.get("stamp", {}).get("commit", "before run stamps")
                      for per in runs.values() for r in per.values()})
    markdown += f"\nRuns produced by commit(s): {', '.join(made_by)}.\n"
    plots = plot(exp, runs, summary, out)
    markdown += "\nPlots: " + ", ".join(plots) + "\n"
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(markdown)
    if publish_as:
        where = publish(publish_as, f"Experiment: {exp.name}", markdown.split("\n", 1)[1], summary,
                        [out / p for p in plots])
        print(f"published to {where}")
    return out


def exp_name(path: str) -> str:
    return load_experiment(Path(path))[0].name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mergerec-experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment YAML")
    parser.add_argument("--mode", choices=["simulation", "in-process"], default="simulation")
    parser.add_argument("--output", help="results folder (default results/<name>)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild tables and plots from finished runs")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the YAML's)")
    parser.add_argument("--silo-dir", help="the silos' work folder to use (default: the YAML's "
                                           "silo_dir, else results/<name>/silos)")
    parser.add_argument("--publish", action="store_true",
                        help="also write the report to experiments/reports/<name>/")
    args = parser.parse_args(argv)
    log_to_stderr()
    try:
        run_experiment(Path(args.experiment), args.mode, args.report_only,
                       Path(args.output) if args.output else None, args.seeds,
                       Path(args.silo_dir) if args.silo_dir else None,
                       exp_name(args.experiment) if args.publish else None)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
