"""Wall time of the same experiment in-process, in Flower simulation and in a loopback
deployment (SuperLink + one SuperNode per silo), side by side, with a check that all three
produce the same metrics.

    python -m experiments.federation_overhead [--experiment run.yaml] [--output results/overhead]

Writes ``overhead.md``, ``overhead.json`` and ``overhead.csv`` to the output folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from common.config import load_yaml, to_dict
from common.pipeline import PipelineConfig, run_pipeline
from common.io import atomic_write_text
from common.runtime import set_progress

ROOT = Path(__file__).resolve().parents[1]


def _timed_launch(mode: str, experiment: str | None, out: Path, work: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "coordinator.launch", mode, "--output", str(out)]
    if experiment:
        cmd += ["--experiment", experiment]
    cmd += ["--work", str(work)] if mode == "deploy" else ["--flwr-home", str(work / "flwr-home"),
                                                           "-c", f"work-dir={work / 'silos'}"]
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (out.parent / f"{mode}.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"{mode} failed (log: {out.parent / f'{mode}.log'})")
    return seconds, json.loads((out / "report.json").read_text())


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference over all (method, domain, metric) cells of two result sets."""
    if a.keys() != b.keys():
        return float("inf")
    return max(abs(a[m][d][k] - b[m][d][k]) for m in a for d in a[m] for k in a[m][d])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", help="YAML PipelineConfig (default: synthetic default)")
    parser.add_argument("--output", default="results/overhead")
    args = parser.parse_args(argv)
    out = Path(args.output).resolve()
    cfg = load_yaml(PipelineConfig, args.experiment) if args.experiment else PipelineConfig()
    cfg.joint = False  # not available in a federation; keep the three runs identical
    set_progress(False)
    cfg.output_dir = str(out / "in-process")
    cfg.data.cache_dir = str(out / "cache")
    experiment = out / "experiment.yaml"
    out.mkdir(parents=True, exist_ok=True)
    experiment.write_text(json.dumps(to_dict(cfg)))  # JSON is valid YAML

    start = time.perf_counter()
    reference = run_pipeline(cfg)
    rows = [{"mode": "in-process", "wall_s": round(time.perf_counter() - start, 1),
             "coordinator_s": reference["total_seconds"]}]
    results = {"in-process": reference["results"]}
    for mode in ("simulate", "deploy"):
        seconds, report = _timed_launch(mode, str(experiment), out / mode, out / f"{mode}-work")
        rows.append({"mode": mode, "wall_s": round(seconds, 1),
                     "coordinator_s": report["total_seconds"]})
        results[mode] = report["results"]
    base = rows[0]["wall_s"]
    for row in rows:
        row["overhead_s"] = round(row["wall_s"] - base, 1)
        row["max_metric_diff"] = max_difference(results[row["mode"]], results["in-process"])
    table = ["| mode | wall time (s) | coordinator stages (s) | overhead vs in-process (s) | "
             "max abs. metric difference |", "|---|---:|---:|---:|---:|"]
    table += [f"| {r['mode']} | {r['wall_s']} | {r['coordinator_s']} | {r['overhead_s']} | "
              f"{r['max_metric_diff']:.5f} |" for r in rows]
    verdict = (f"deployment overhead {rows[2]['overhead_s']} s "
               f"({'meets' if rows[2]['overhead_s'] < 120 else 'misses'} the < 120 s target)")
    text = "\n".join(table) + f"\n\n{verdict}\n"
    print(text)
    atomic_write_text(out / "overhead.md", text)
    atomic_write_text(out / "overhead.json", json.dumps(rows, indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "overhead.csv", buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
