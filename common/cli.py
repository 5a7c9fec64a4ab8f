"""``mergerec-reference``: run the in-process reference pipeline and print its table."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_yaml
from .data import DataError
from .pipeline import PipelineConfig, run_pipeline
from .report import markdown_table
from .runtime import log_to_stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML PipelineConfig (default: embedded synthetic run)")
    parser.add_argument("--output", help="output folder for report.json / report.md / weights")
    parser.add_argument("--seed", type=int, help="override the seed")
    args = parser.parse_args(argv)
    log_to_stderr()
    try:
        cfg = load_yaml(PipelineConfig, args.config) if args.config else PipelineConfig()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        cfg.output_dir = args.output
    if args.seed is not None:
        cfg.seed = args.seed
    try:
        report = run_pipeline(cfg)
    except (DataError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(report))
    print(f"\ntotal {report['total_seconds']} s, peak RSS {report['peak_rss_mb']} MB"
          + (f"; report in {cfg.output_dir}" if cfg.output_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
