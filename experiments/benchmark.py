"""Reference-pipeline benchmark on real Amazon domains.

    python -m experiments.benchmark [--config experiments/configs/amazon3.yaml] [--output DIR]

Runs every method of the core library (popularity, zero-shot θ₀, the K×K fine-tuned matrix,
joint training, the training-free merges, entropy-only and the full learned merges) and
writes ``report.md`` / ``report.json`` / ``results.csv`` with per-stage wall time and peak
memory, plus a check of the targets (printed, never asserted).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from common.config import load_yaml
from common.federated import OWN_TRAIN_METRIC
from common.pipeline import PipelineConfig, run_pipeline
from common.report import atomic_write_text, markdown_table, write_report

ROOT = Path(__file__).resolve().parents[1]
TRAINING_FREE = ("average", "task arithmetic", "ties", "dare", "pcb", "localize stitch")


def check_targets(report: dict) -> list[tuple[str, bool, str]]:
    """The benchmark targets of the core-library issue, measured on this report."""
    res = report["results"]
    domains = [d for d in res["zero-shot base θ₀"] if d != "average"]
    checks = []
    for d in domains:
        ft, base = res["in-domain fine-tuned"][d]["recall@10"], res["zero-shot base θ₀"][d]["recall@10"]
        gain = ft / base - 1 if base else float("inf")
        checks.append((f"fine-tuned {d} beats θ₀ by >= 30% R@10", gain >= 0.30,
                       f"{ft:.4f} vs {base:.4f} ({gain:+.1%})"))
    best_tf = max(TRAINING_FREE, key=lambda m: res[m]["average"]["recall@10"] if m in res else -1)
    tf = res[best_tf]["average"]["recall@10"]
    in_domain = res["in-domain fine-tuned"]["average"]["recall@10"]
    for name in [k for k in res if k.startswith("mergerec")]:
        full = res[name]["average"]["recall@10"]
        checks.append((f"{name}: avg R@10 >= 1.10 x best training-free ({best_tf})",
                       full >= 1.10 * tf, f"{full:.4f} vs {tf:.4f} ({full / tf - 1:+.1%})"))
        checks.append((f"{name}: avg R@10 >= 0.90 x in-domain fine-tuned", full >= 0.9 * in_domain,
                       f"{full:.4f} vs {in_domain:.4f} ({full / in_domain:.1%})"))
    total = report["total_seconds"]
    checks.append(("whole benchmark < 45 min on this machine", total < 45 * 60, f"{total / 60:.1f} min"))
    return checks


def training_table(report: dict) -> str:
    """Fine-tuning per silo (and joint training): the settings it changed from the run's,
    epochs run, best epoch and its validation NDCG@10, seconds."""
    run = report["config"]["train"]
    lines = [f"run's settings: {run['batch_size']} users per step, {run['epochs']} epochs, "
             f"lr {run['lr']:g}", "",
             "| model | own settings | epochs run | best epoch | best val N@10 | seconds |",
             "|---|---|---:|---:|---:|---:|"]
    for name, t in report["training"].items():
        own = ", ".join(f"{k.removeprefix(OWN_TRAIN_METRIC)} {v:g}" for k, v in t.items()
                        if k.startswith(OWN_TRAIN_METRIC)) or "the run's"
        secs = "reused" if t.get("reused_checkpoint") else f"{t['seconds']:.0f}"
        lines.append(f"| {name} | {own} | {t['epochs_run']:.0f} | {t['best_epoch']:.0f} | "
                     f"{t['best_val_ndcg@10']:.4f} | {secs} |")
    return "\n".join(lines)


def benchmark_markdown(report: dict, checks: list[tuple[str, bool, str]]) -> str:
    """report.md: results, targets, fine-tuning per silo, stages."""
    stage_lines = ["| stage | seconds | peak RSS MB |", "|---|---:|---:|"]
    stage_lines += [f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mb']:.0f} |"
                    for k, v in report["stages"].items()]
    check_lines = ["| target | met | measured |", "|---|---|---|"]
    check_lines += [f"| {n} | {'yes' if ok else 'NO'} | {m} |" for n, ok, m in checks]
    return "\n\n".join([
        "## Recall@10 / NDCG@10 (test, full ranking, no history masking)", markdown_table(report),
        "## Targets", "\n".join(check_lines),
        "## Fine-tuning", training_table(report),
        f"## Stages (total {report['total_seconds'] / 60:.1f} min, peak RSS {report['peak_rss_mb']:.0f} MB)",
        "\n".join(stage_lines),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "experiments/configs/amazon3.yaml"))
    parser.add_argument("--output", default=str(ROOT / "results/benchmark"))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/amazon"),
                        help="folder with <Domain>.tar.gz (default: ../shared/data/amazon)")
    args = parser.parse_args(argv)
    cfg = load_yaml(PipelineConfig, args.config)
    for src in cfg.data.sources:
        if not Path(src.path).is_absolute():
            src.path = str(Path(args.data_dir) / src.path)
    cfg.output_dir = args.output
    report = run_pipeline(cfg)
    out = Path(args.output)
    checks = check_targets(report)
    text = benchmark_markdown(report, checks)
    report["targets"] = [{"target": n, "met": ok, "measured": m} for n, ok, m in checks]
    write_report(report, out, text)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["method", "domain", "metric", "value"])
    for method, row in report["results"].items():
        for dom, metrics in row.items():
            for k, v in metrics.items():
                writer.writerow([method, dom, k, f"{v:.6f}"])
    atomic_write_text(out / "results.csv", rows.getvalue())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
