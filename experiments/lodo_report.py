"""The leave-one-domain-out report: every method on each domain that took no part, against θ₀.

    python -m experiments.lodo_report [--runs results/lodo/runs] [--publish lodo]

Reads the finished runs of ``experiments/configs/experiments/lodo.yaml`` (one setting per
left-out domain, one folder per seed) and writes, per left-out domain and on average, Recall@10
and NDCG@10 of θ₀, every single silo's model transferred there, joint training of the others,
the training-free merges, the learned merges the experiment ran and the new-domain path, with their ratios to θ₀ and a check of issue 33's targets per seed; the new-domain path
each run chose (on the seen silos' validation splits only), wall time and memory.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from common.federated import BASE_LABEL
from common.federated.pool import NEW_DOMAIN_LABEL, finetuned_label
from experiments.publish import grouped_bars, publish

METRICS = ("recall@10", "ndcg@10")
JOINT = "joint (pooled data, non-private)"
TRANSFERRED = "best single silo transferred"
TARGET_AVG = 1.05


def load_runs(root: Path) -> dict[str, dict[int, dict]]:
    """Left-out domain → seed → finished report (settings ``unseen <domain>``)."""
    out: dict[str, dict[int, dict]] = {}
    for report in sorted(root.glob("unseen_*/seed*/report.json")):
        data = json.loads(report.read_text())
        [left_out] = data["config"]["federation"]["eval_only"]
        out.setdefault(left_out, {})[int(report.parent.name.removeprefix("seed"))] = data
    if not out:
        raise SystemExit(f"{root}: no finished leave-one-domain-out runs (run lodo.yaml first)")
    return out


def methods_of(report: dict) -> list[str]:
    """The rows: θ₀, the single silos' best, joint, merges, learned merges, the new-domain path."""
    res = report["results"]
    merges = [m.get("name") or m["method"].replace("_", " ") for m in report["config"]["merges"]]
    learned = [s["name"] for s in report["config"]["learned"]]
    rows = [BASE_LABEL, TRANSFERRED, JOINT, *merges, *learned, NEW_DOMAIN_LABEL]
    return [r for r in rows if r == TRANSFERRED or r in res]


def cell(report: dict, method: str, domain: str) -> dict[str, float] | None:
    """A method's metrics on ``domain``; for :data:`TRANSFERRED`, the single seen silo's model
    with the best Recall@10 there (named in the report's table)."""
    res = report["results"]
    if method != TRANSFERRED:
        return res.get(method, {}).get(domain)
    singles = [res[finetuned_label(s)][domain] for s in report["training"]
               if finetuned_label(s) in res and domain in res[finetuned_label(s)]]
    return max(singles, key=lambda m: m["recall@10"]) if singles else None


def best_single(report: dict, domain: str) -> str:
    res = report["results"]
    singles = [s for s in report["training"] if domain in res.get(finetuned_label(s), {})]
    return max(singles, key=lambda s: res[finetuned_label(s)][domain]["recall@10"], default="—")


def check_targets(runs: dict[str, dict[int, dict]], seed: int) -> list[tuple[str, bool, str]]:
    """Issue 33's leave-one-out targets on one seed."""
    checks, ours, base = [], [], []
    for domain, by_seed in runs.items():
        report = by_seed[seed]
        path, zero = cell(report, NEW_DOMAIN_LABEL, domain), cell(report, BASE_LABEL, domain)
        single = cell(report, TRANSFERRED, domain)
        if path is None or zero is None:
            checks.append((f"{domain}: new-domain path evaluated", False, "missing"))
            continue
        ours.append(path["recall@10"])
        base.append(zero["recall@10"])
        for m in METRICS:
            checks.append((f"{domain}: new-domain path >= 1.00 x θ₀, {m}", path[m] >= zero[m],
                           f"{path[m]:.4f} vs {zero[m]:.4f} ({path[m] / zero[m]:.3f}x)"))
        if single is not None:
            name = best_single(report, domain)
            checks.append((f"{domain}: new-domain path >= best single silo transferred "
                           f"({name}), recall@10", path["recall@10"] >= single["recall@10"],
                           f"{path['recall@10']:.4f} vs {single['recall@10']:.4f}"))
    if base:
        a, b = statistics.mean(ours), statistics.mean(base)
        checks.append((f"average over the {len(base)} left-out domains >= {TARGET_AVG} x θ₀, "
                       "recall@10", a >= TARGET_AVG * b, f"{a:.4f} vs {b:.4f} ({a / b:.3f}x)"))
    return checks


def domain_table(runs: dict[str, dict[int, dict]], domain: str) -> list[str]:
    """Mean over seeds of every method on one left-out domain, with its ratio to θ₀."""
    by_seed = runs[domain]
    first = next(iter(by_seed.values()))
    lines = [f"### Left out: {domain}", "",
             "| method | Recall@10 | × θ₀ | NDCG@10 | × θ₀ |", "|---|---:|---:|---:|---:|"]
    zero = {m: statistics.mean(r["results"][BASE_LABEL][domain][m] for r in by_seed.values())
            for m in METRICS}
    for method in methods_of(first):
        cells = [cell(r, method, domain) for r in by_seed.values()]
        if any(c is None for c in cells):
            continue
        mean = {m: statistics.mean(c[m] for c in cells) for m in METRICS}  # type: ignore[index]
        name = method if method != TRANSFERRED else \
            f"{TRANSFERRED} ({', '.join(sorted({best_single(r, domain) for r in by_seed.values()}))})"
        lines.append(f"| {name} | {mean['recall@10']:.4f} | {mean['recall@10'] / zero['recall@10']:.3f} "
                     f"| {mean['ndcg@10']:.4f} | {mean['ndcg@10'] / zero['ndcg@10']:.3f} |")
    return lines


def ratios(runs: dict[str, dict[int, dict]], method: str, metric: str = "recall@10") -> list[float]:
    """Per left-out domain, the method's mean-over-seeds ratio to θ₀."""
    out = []
    for domain, by_seed in runs.items():
        cells = [cell(r, method, domain) for r in by_seed.values()]
        zero = [r["results"][BASE_LABEL][domain][metric] for r in by_seed.values()]
        out.append(statistics.mean(c[metric] for c in cells if c) / statistics.mean(zero)
                   if all(cells) else float("nan"))
    return out


def summary_table(runs: dict[str, dict[int, dict]]) -> list[str]:
    """Every method's ratio to θ₀ (Recall@10) per left-out domain and on average."""
    domains = list(runs)
    first = next(iter(next(iter(runs.values())).values()))
    lines = ["| method | " + " | ".join(domains) + " | average |",
             "|---|" + "---:|" * (len(domains) + 1)]
    for method in methods_of(first):
        r = ratios(runs, method)
        ran = [x for x in r if not math.isnan(x)]  # a method a setting left out: "—"
        note = "" if len(ran) == len(r) else f" (the {len(ran)} run)"
        lines.append(f"| {method} | " + " | ".join("—" if math.isnan(x) else f"{x:.3f}" for x in r)
                     + f" | {statistics.mean(ran):.3f}{note} |")
    return lines


def choices_table(runs: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| left out | seed | chosen on the seen silos' validation | its mean validation "
             "Recall@10 / θ₀ | chosen by |", "|---|---:|---|---:|---|"]
    for domain, by_seed in runs.items():
        for seed, report in sorted(by_seed.items()):
            choice = report.get("chosen_on_validation", {}).get(NEW_DOMAIN_LABEL)
            if choice:
                val = choice["table"].get(choice["chosen"], {}).get("recall@10 / θ₀", float("nan"))
                lines.append(f"| {domain} | {seed} | {choice['chosen']} | {val:.3f} | "
                             f"{', '.join(choice['silos'])} |")
    return lines


def time_table(runs: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| left out | seed | run's own wall time (min) | of it, choosing the new-domain path (s) "
             "| joint training (s) | peak RSS (MB) |", "|---|---:|---:|---:|---:|---:|"]
    for domain, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            stages = r["stages"]
            path = stages.get("choose the new-domain path on validation", {}).get("seconds", 0.0)
            joint = r["training"].get("joint", {}).get("wall_seconds", 0.0)
            peak = max(s["peak_rss_mb"] for s in stages.values())
            lines.append(f"| {domain} | {seed} | {r['total_seconds'] / 60:.1f} | {path:.0f} | "
                         f"{joint:.0f} | {peak:.0f} |")
    return lines


def report_markdown(runs: dict[str, dict[int, dict]]) -> str:
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    users = {d: next(iter(b.values()))["protocol"]["per_silo"][d]["users"] for d, b in runs.items()}
    lines = [f"Left-out domains: {', '.join(runs)}; seeds {', '.join(map(str, seeds))}. Each "
             "setting merges the other four silos (the benchmark's fine-tuned checkpoints of the "
             "same seed) and the left-out silo only evaluates, on its test split with full "
             "ranking; its users choose nothing. Users evaluated: "
             + ", ".join(f"{d} {n:,}" for d, n in users.items()) + ".", "",
             "## Recall@10 / θ₀ on the left-out domain (mean over seeds)", "",
             *summary_table(runs), ""]
    for seed in seeds:
        complete = {d: b for d, b in runs.items() if seed in b}
        lines += [f"## Targets, seed {seed}", "", "| target | met | measured |", "|---|---|---|"]
        lines += [f"| {n} | {'yes' if ok else 'NO'} | {m} |"
                  for n, ok, m in check_targets(complete, seed)] + [""]
    lines += ["## The new-domain path each run chose", "", *choices_table(runs), ""]
    lines += ["## Every method per left-out domain (mean over seeds)", ""]
    for domain in runs:
        lines += domain_table(runs, domain) + [""]
    lines += ["## Wall time and memory", "", *time_table(runs), "",
              "The silos' fine-tuning is the benchmark's (reused checkpoints); its time is in the "
              "benchmark report."]
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict]], path: Path) -> Path:
    first = next(iter(next(iter(runs.values())).values()))
    shown = [m for m in methods_of(first) if m in (TRANSFERRED, JOINT, "task arithmetic",
                                                   "mergerec task-wise", "mergerec layer-wise",
                                                   "mergerec tensor-wise",
                                                   "mergerec tensor-wise + distilled residual",
                                                   NEW_DOMAIN_LABEL)]
    return grouped_bars(list(runs), {m: ratios(runs, m) for m in shown},
                        "Recall@10 on the left-out domain / θ₀ (mean over seeds)", path,
                        target=TARGET_AVG, zoom=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/lodo/runs")
    ap.add_argument("--output", default="results/lodo")
    ap.add_argument("--publish", metavar="NAME")
    args = ap.parse_args(argv)
    runs = load_runs(Path(args.runs))
    text = report_markdown(runs)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lodo-report.md").write_text(text + "\n")
    print(text)
    if args.publish:
        summary = {"targets": {s: [{"target": n, "met": ok, "measured": m}
                                   for n, ok, m in check_targets(
                                       {d: b for d, b in runs.items() if s in b}, s)]
                               for s in sorted({s for b in runs.values() for s in b})},
                   "ratios_recall@10": {m: dict(zip(runs, ratios(runs, m)))
                                        for m in methods_of(next(iter(next(iter(runs.values())).values())))},
                   "runs": {d: {s: {k: r.get(k) for k in ("results", "chosen_on_validation",
                                                          "stages", "total_seconds")}
                                for s, r in b.items()} for d, b in runs.items()}}
        where = publish(args.publish, "Leave one domain out: five domains", text, summary,
                        [plot(runs, out / "lodo.png")])
        print(f"published to {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
