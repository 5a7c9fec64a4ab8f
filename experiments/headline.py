"""The README's headline table, generated from the committed benchmark report.

    python -m experiments.headline            # prints the table the README must hold

The README holds it between ``<!-- headline:start -->`` and ``<!-- headline:end -->``; a test
checks that the two agree, so the README never carries a number the report does not.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from experiments.publish import REPORTS

START, END = "<!-- headline:start -->", "<!-- headline:end -->"
ROWS = ("popularity", "zero-shot base θ₀", "SASRec (item ids, each silo alone)",
        "in-domain fine-tuned", "joint (pooled data, non-private)")


def headline(report_dir: Path = REPORTS / "benchmark", lodo_dir: Path = REPORTS / "lodo") -> str:
    """Average Recall@10 / NDCG@10 over the domains, mean over the report's seeds, for the
    reference rows, the best training-free merge and the best learned merge; then, when the
    leave-one-domain-out report exists, θ₀ and the new-domain path on the domains left out."""
    summary = json.loads((report_dir / "summary.json").read_text())
    seeds = list(summary["seeds"].values())
    domains = [d for d in seeds[0]["results"]["zero-shot base θ₀"] if not d.startswith("average")]

    def avg(label: str, metric: str) -> float | None:
        vals = [s["results"][label]["average"][metric] for s in seeds if label in s["results"]]
        return statistics.fmean(vals) if len(vals) == len(seeds) else None

    merges = [m.get("name") or m["method"].replace("_", " ")
              for m in summary.get("merges", [])]
    learned = summary.get("learned", [])
    best_free = max((m for m in merges if avg(m, "recall@10") is not None),
                    key=lambda m: avg(m, "recall@10"), default=None)
    best_learned = max((m for m in learned if avg(m, "recall@10") is not None),
                       key=lambda m: avg(m, "recall@10"), default=None)
    rows = [r for r in ROWS if avg(r, "recall@10") is not None]
    rows += [r for r in (best_free, best_learned) if r]
    lines = [f"Average over {', '.join(domains[:-1])} and {domains[-1]} (test, full ranking), "
             f"mean of {len(seeds)} seed(s); from [experiments/reports/benchmark]"
             f"(experiments/reports/benchmark/report.md) (commit `{summary['stamp']['commit']}`).",
             "", "| method | Recall@10 | NDCG@10 |", "|---|---:|---:|"]
    for r in rows:
        note = " (best training-free merge)" if r == best_free else \
            " (best learned merge)" if r == best_learned else ""
        lines.append(f"| {r}{note} | {avg(r, 'recall@10'):.4f} | {avg(r, 'ndcg@10'):.4f} |")
    if (lodo_dir / "summary.json").is_file():
        lines += ["", *new_domain_lines(lodo_dir)]
    return "\n".join(lines)


def new_domain_lines(lodo_dir: Path) -> list[str]:
    """θ₀ and the new-domain path on each domain left out of the merge (its own run each),
    averaged over the left-out domains and the seeds."""
    lodo = json.loads((lodo_dir / "summary.json").read_text())
    runs = lodo["runs"]

    def avg(label: str, metric: str) -> float:
        return statistics.fmean(r["results"][label][d][metric]
                                for d, by_seed in runs.items() for r in by_seed.values())

    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    out = [f"On a domain that took no part (each of the {len(runs)} left out in turn, the other "
           f"{len(runs) - 1} merged; mean of {len(seeds)} seed(s)); from "
           "[experiments/reports/lodo](experiments/reports/lodo/report.md) (commit "
           f"`{lodo['stamp']['commit']}`).", "", "| method | Recall@10 | NDCG@10 |",
           "|---|---:|---:|"]
    for label in ("zero-shot base θ₀", "new-domain path"):
        out.append(f"| {label} | {avg(label, 'recall@10'):.4f} | {avg(label, 'ndcg@10'):.4f} |")
    return out


def readme_block(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no headline block ({START} ... {END})")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


if __name__ == "__main__":
    print(headline())
    sys.exit(0)
