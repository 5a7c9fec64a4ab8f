"""The coordinator ServerApp: waits for the silos, then runs the MergeRec coordinator flow.

Settings come from ``[tool.flwr.app.config]`` (override with ``flwr run . -c "key=value"``):
``experiment`` (YAML PipelineConfig, empty = synthetic default), ``seed``, ``output-dir``,
``catalogue``, ``min-silos``, ``num-silos`` (silos to wait for; 0 = every configured domain),
``eval-only``, ``query-budget``, ``root-dir``, ``identity`` (``registered``: a silo's name is
accepted only from the SuperNode whose key was registered under it; ``claimed``: the name a
node states, for simulation and plain deployments). Outputs: ``<output-dir>/report.json``,
``report.md``, ``ledger.json``, ``learned_weights.json``, ``models/<name>/`` (model packages:
weights, config, model card) and ``received/*.safetensors``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.experiment import config_from_run
from common.federated import run_coordinator
from common.report import markdown_table

from .flower_federation import FlowerFederation

app = ServerApp()


def log(text: str) -> None:
    print(f"[coordinator] {text}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    root = Path(str(rc.get("root-dir", "") or ".")).resolve()
    cfg = config_from_run(rc, root)
    expected = int(rc.get("num-silos", 0) or 0) or len(cfg.data.domain_names())  # type: ignore[call-overload]
    identity = str(rc.get("identity", "registered"))
    if identity not in ("registered", "claimed"):
        raise ValueError(f"run config identity must be 'registered' or 'claimed', got {identity!r}")
    fed = FlowerFederation(grid, log)
    fed.connect(expected, cfg.federation.wait_for_silos_s, cfg.data.domain_names(),
                registered=identity == "registered")
    log(f"silos: {fed.roles()}")
    report = run_coordinator(cfg.coordinator(), fed, log=log, ledger=fed.ledger)
    print(markdown_table(report), flush=True)
    for failure in report["failures"]:  # type: ignore[attr-defined]
        log(f"FAILED silo {failure['silo']} ({failure['stage']}): {failure['reason']}")
    log(f"done in {report['total_seconds']} s; report in {cfg.output_dir}")
    sys.stdout.flush()
