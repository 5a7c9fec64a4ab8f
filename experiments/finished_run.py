"""A finished benchmark seed read back for analyses that reuse its fine-tuned weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.backbone import resolve_base
from common.config import from_dict
from common.data import Domain
from common.experiment import load_domains
from common.federated import RunSettings
from common.federated.coordinator import safe_name
from common.model import state_hash
from common.pipeline import PipelineConfig, local_silos
from common.settings import ModelConfig


@dataclass
class FinishedRun:
    """One benchmark seed: its report, config, seen domains (with their item inputs), θ₀ and
    the weights each silo sent (``received/``), in the order of ``domains``."""

    report: dict
    cfg: PipelineConfig
    domains: list[Domain]
    model_cfg: ModelConfig
    base: dict[str, torch.Tensor]
    finetuned: list[dict[str, torch.Tensor]]
    features: dict[str, torch.Tensor]


def load_finished_run(bench: Path) -> FinishedRun:
    """Read ``bench`` (a benchmark's ``seed<k>/`` folder); ``SystemExit`` naming the file
    when the run is missing, made with another θ₀, or kept no weights for a silo."""
    source = bench / "report.json"
    if not source.is_file():
        raise SystemExit(f"{source}: not found (run python -m experiments.benchmark first)")
    report = json.loads(source.read_text())
    cfg = from_dict(PipelineConfig, report["config"], str(source))
    domains = [d for d in load_domains(cfg.data) if d.name not in cfg.federation.eval_only]
    model_cfg, base = resolve_base(cfg.encoder, cfg.model, cfg.seed)
    if state_hash(base) != report["base_hash"]:
        raise SystemExit(f"{source}: θ₀ of this code differs from the benchmark's; re-run it")
    finetuned = []
    for d in domains:
        path = bench / "received" / f"{safe_name(d.name)}.safetensors"
        if not path.is_file():
            raise SystemExit(f"{path}: the benchmark kept no weights for silo {d.name}")
        finetuned.append(load_file(str(path)))
    run = RunSettings(cfg.encoder, cfg.center_features, model_cfg)
    features = {s.cfg.name: s.features(run) for s in local_silos(cfg, domains)}
    return FinishedRun(report, cfg, domains, model_cfg, base, finetuned, features)
