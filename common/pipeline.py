"""In-process reference pipeline: the coordinator flow of :mod:`common.federated` over silos
living in this process, plus the baselines only a non-private setting allows (joint training on
the pooled data of all training domains).

The Flower apps run the same coordinator flow and silo handlers over Flower messages; for the
same seed they reproduce these numbers (tested).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from .data import Domain
from .experiment import load_domains
from .config import to_dict
from .federated import BASE_LABEL, LocalFederation, RunSettings, Silo, SiloConfig, run_coordinator
from .federated.silo import policy_from
from .io import RunOutputs
from .report import markdown_table, peak_rss_mb, write_report
from .settings import (DataConfig, DomainSource, FederationConfig, LearnedMergeSpec, ModelConfig,
                       PipelineConfig)
from .training import fine_tune_cached
from .training.id_baseline import evaluate_sasrec, sasrec_cached

__all__ = ["DataConfig", "DomainSource", "FederationConfig", "LearnedMergeSpec", "PipelineConfig",
           "local_silos", "markdown_table", "run_pipeline"]

StateDict = dict[str, torch.Tensor]


def simulated_silo_config(cfg: PipelineConfig, name: str, work_dir: str | Path) -> SiloConfig:
    """A silo's settings where it has no node config of its own (in-process, and Flower's
    simulation: one operator runs every silo): the run's evaluation protocol, its silo-side
    federation settings, and the run's encoder folder as an allowed one."""
    fed = cfg.federation
    policy = policy_from({**fed.silo_policy, "eval": to_dict(cfg.eval),
                          "query_budget": fed.query_budget,
                          "encoder_dirs": [cfg.encoder] if Path(cfg.encoder).is_dir() else []},
                         "federation.silo_policy")
    return SiloConfig(name, str(work_dir), name in fed.eval_only,
                      str(cfg.data.cache() / "features"), fed.silo_train.get(name, {}),
                      policy)


def local_silos(cfg: PipelineConfig, domains: list[Domain]) -> list[Silo]:
    """One in-process silo per domain, working under ``<silo_dir>/<name>`` (default silo dir:
    ``<output or cache dir>/silos``)."""
    root = Path(cfg.silo_dir) if cfg.silo_dir else (Path(cfg.output_dir) if cfg.output_dir
                                                    else cfg.data.cache()) / "silos"
    return [Silo(simulated_silo_config(cfg, d.name, root / d.name), lambda d=d: d) for d in domains]


ID_BASELINE = "SASRec (item ids, each silo alone)"


def add_id_baseline(report: dict, cfg: PipelineConfig, silos: list[Silo]) -> None:
    """Train and evaluate the ID-based SASRec in each silo (its own data, kept in its work
    folder); its row follows θ₀'s in the results, its training stats join the report's."""
    assert cfg.id_baseline is not None
    sasrec = replace(cfg.id_baseline, seed=cfg.seed)
    row: dict[str, dict[str, float]] = {}
    for silo in silos:
        model, stats = sasrec_cached(silo.domain, sasrec, silo.work / "checkpoints")
        row[silo.cfg.name] = evaluate_sasrec(model, silo.domain, cfg.eval).metrics
        report["training"][f"SASRec on {silo.cfg.name}"] = stats
    names = list(row)
    row["average"] = {k: sum(row[n][k] for n in names) / len(names) for k in row[names[0]]}
    results = report["results"]
    at = list(results).index(BASE_LABEL) + 1 if BASE_LABEL in results else 0
    items = list(results.items())
    report["results"] = dict(items[:at] + [(ID_BASELINE, row)] + items[at:])


def run_pipeline(cfg: PipelineConfig) -> dict[str, object]:
    """Run the whole method in-process and return a JSON-ready report."""
    start = time.perf_counter()
    domains = load_domains(cfg.data)
    silos = local_silos(cfg, domains)
    loaded = time.perf_counter() - start
    joint_stats: dict[str, object] = {}

    def joint(base: StateDict, model_cfg: ModelConfig) -> dict[str, StateDict]:
        if not cfg.joint:
            return {}
        run = RunSettings(cfg.encoder, cfg.center_features, model_cfg)
        train = [s for s in silos if not s.cfg.eval_only]
        t0 = time.perf_counter()
        state, stats = fine_tune_cached(
            base, model_cfg, [s.domain for s in train], [s.features(run) for s in train],
            replace(cfg.train, seed=cfg.seed),
            Path(cfg.output_dir) / "joint" if cfg.output_dir else None)
        joint_stats.update(stats, wall_seconds=round(time.perf_counter() - t0, 2))
        return {"joint (pooled data, non-private)": state}

    outputs = RunOutputs(cfg.output_dir) if cfg.output_dir else None
    report = run_coordinator(cfg.coordinator(), LocalFederation(silos), joint, outputs=outputs)
    report["config"] = to_dict(cfg)  # the whole run's, data sources included
    report["training"] = {**report["training"], **({"joint": joint_stats} if joint_stats else {})}  # type: ignore[dict-item]
    if cfg.id_baseline is not None:
        t0 = time.perf_counter()
        add_id_baseline(report, cfg, [s for s in silos if not s.cfg.eval_only])
        report["stages"][ID_BASELINE] = {"seconds": round(time.perf_counter() - t0, 2),  # type: ignore[index]
                                         "peak_rss_mb": round(peak_rss_mb(), 1)}
    report["domains"] = {d.name: d.stats() for d in domains}
    report["stages"] = {"load data": {"seconds": round(loaded, 2),
                                      "peak_rss_mb": round(peak_rss_mb(), 1)}, **report["stages"]}  # type: ignore[dict-item]
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if outputs is not None:
        write_report(report, outputs.stage)
        outputs.commit()
    return report
