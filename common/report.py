"""Run reports: stage timing, the results table, atomic report files."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from .io import atomic_write_text

T = TypeVar("T")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Stages:
    """Wall time and peak memory per named stage, each logged as it ends."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.records: dict[str, dict[str, float]] = {}
        self.log = log

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.log is not None:
            self.log(f"stage '{name}' ...")
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.records[name] = {"seconds": round(time.perf_counter() - start, 2),
                              "peak_rss_mb": round(peak_rss_mb(), 1)}
        if self.log is not None:
            self.log(f"stage '{name}': {self.records[name]['seconds']:.1f} s")
        return out

    def total_seconds(self) -> float:
        return round(sum(r["seconds"] for r in self.records.values()), 1)


def markdown_table(report: dict[str, object], metrics: tuple[str, ...] = ("recall@10", "ndcg@10")
                   ) -> str:
    """Methods × (domain, metric) table with the average last; '—' where a cell is missing."""
    results: dict[str, dict[str, dict[str, float]]] = report["results"]  # type: ignore[assignment]
    cols: list[str] = []
    for row in results.values():
        cols += [c for c in row if c not in cols and not c.startswith("average")]
    cols += [c for c in ("average", "average unseen") if any(c in r for r in results.values())]
    head = "| method | " + " | ".join(f"{c} {m.replace('recall', 'R').replace('ndcg', 'N')}"
                                      for c in cols for m in metrics) + " |"
    lines = [head, "|---|" + "---:|" * (len(cols) * len(metrics))]
    for method, row in results.items():
        cells = [f"{row[c][m]:.4f}" if c in row and m in row[c] else "—"
                 for c in cols for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict[str, object], out_dir: Path, markdown: str | None = None) -> None:
    """``report.json`` and ``report.md`` (default: the results table), written atomically."""
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out_dir / "report.md", (markdown or markdown_table(report)) + "\n")
