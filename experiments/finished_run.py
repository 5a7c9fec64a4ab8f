"""A finished benchmark seed read back for analyses that reuse its fine-tuned weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
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
from common.report import write_report
from common.settings import ModelConfig


@dataclass
class FinishedRun:
    """One finished run: its report, config, seen domains, θ₀, the weights each seen silo sent
    (``received/``, in the order of ``domains``), every domain's item inputs and the
    evaluation-only (``unseen``) domains."""

    report: dict
    cfg: PipelineConfig
    domains: list[Domain]
    model_cfg: ModelConfig
    base: dict[str, torch.Tensor]
    finetuned: list[dict[str, torch.Tensor]]
    features: dict[str, torch.Tensor]
    unseen: list[Domain]


def load_finished_run(bench: Path) -> FinishedRun:
    """Read ``bench`` (a finished run's folder, e.g. a benchmark's ``seed<k>/``); ``SystemExit``
    naming the file when the run is missing, made with another θ₀, or kept no weights for a
    seen silo."""
    source = bench / "report.json"
    if not source.is_file():
        raise SystemExit(f"{source}: not found (not a finished run's folder: run the benchmark "
                         "or the experiment first)")
    report = json.loads(source.read_text())
    cfg = from_dict(PipelineConfig, report["config"], str(source))
    every = load_domains(cfg.data)
    domains = [d for d in every if d.name not in cfg.federation.eval_only]
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
    features = {s.cfg.name: s.features(run) for s in local_silos(cfg, every)}
    unseen = [d for d in every if d.name in cfg.federation.eval_only]
    return FinishedRun(report, cfg, domains, model_cfg, base, finetuned, features, unseen)


def reused_or_made(run_dir: Path, out: Path, settings: dict, made_by: dict[str, str],
                   make: Callable[[], dict], text: Callable[[dict], str]) -> dict:
    """An analysis of the finished run ``run_dir`` kept in ``out``: a finished report there on
    the same run (its path under ``benchmark``, the digest of its ``report.json``, which a rerun
    rewrites) with the same ``settings`` is reused; otherwise ``make()`` runs and its report is
    written with ``text(report)`` as Markdown."""
    source = run_dir / "report.json"
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else None
    done = out / "report.json"
    if done.is_file():
        report = json.loads(done.read_text())
        if (report.get("benchmark") == str(run_dir) and report.get("settings") == settings
                and report.get("benchmark_digest") == digest):
            print(f"{out}: finished with these settings, reused", flush=True)
            return report
    report = {**make(), "benchmark": str(run_dir), "settings": settings, "stamp": made_by,
              "benchmark_digest": digest}
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out, text(report))
    return report
