"""In-process reference pipeline: θ₀ → fine-tune per domain → training-free merges →
learned merges with pseudo-user distillation → full-ranking evaluation on every domain.

The Flower apps call the same building blocks (``fine_tune_cached``, ``build_pseudo_data``,
``run_learned_merge``, ``evaluate_state``); for the same seed they must reproduce these numbers.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

from .config import to_dict
from .data import Domain, SyntheticConfig, load_mergerec_json, load_recbole, make_synthetic_domains
from .distill import (DistillConfig, DomainPseudoData, LearnResult, LossConfig, PseudoUserConfig,
                      build_pseudo_users, learn_merge_weights, teacher_scores)
from .evaluation import EvalConfig, evaluate_model, evaluate_popularity
from .merging import MergeConfig, build_merge
from .merging.methods import StateDict
from .model import ModelConfig, TextSeqRec, build_base_model, state_hash
from .text import center_features, item_features, make_encoder
from .text.cache import atomic_save_safetensors
from .training import TrainConfig, fine_tune


@dataclass
class DomainSource:
    """Where one domain comes from."""

    name: str
    format: Literal["mergerec_json", "recbole"] = "mergerec_json"
    path: str = ""


@dataclass
class DataConfig:
    """The domains of a run: real sources, or the synthetic generator when ``sources`` is empty."""

    sources: list[DomainSource] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    cache_dir: str = ".cache"


@dataclass
class LearnedMergeSpec:
    """One learned-merge variant: its initialisation, pseudo-users, teacher and optimiser."""

    name: str
    init: MergeConfig = field(default_factory=MergeConfig)
    pseudo_users: PseudoUserConfig = field(default_factory=PseudoUserConfig)
    teacher_topk: int | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)


def default_learned() -> list[LearnedMergeSpec]:
    """Entropy-only (AdaMerging) and the full method, task-wise and layer-wise."""
    return [
        LearnedMergeSpec("adamerging (entropy)", distill=DistillConfig(
            loss=LossConfig(rec_weight=0.0, kd_weight=0.0, entropy_weight=1.0))),
        LearnedMergeSpec("mergerec task-wise", distill=DistillConfig(granularity="task")),
        LearnedMergeSpec("mergerec layer-wise", distill=DistillConfig(granularity="layer")),
    ]


def default_merges() -> list[MergeConfig]:
    """The training-free baselines, each with its customary hyper-parameters."""
    return [
        MergeConfig("average"),
        MergeConfig("task_arithmetic", lam=0.3),
        MergeConfig("ties", lam=1.0, density=0.2),
        MergeConfig("dare", lam=0.3, drop_rate=0.9),
        MergeConfig("pcb", lam=1.0, density=0.2),
        MergeConfig("localize_stitch", density=0.2),
    ]


@dataclass
class PipelineConfig:
    """Everything the reference pipeline needs (loadable from YAML)."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: str = "hashing-256"
    center_features: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, patience=10))
    eval: EvalConfig = field(default_factory=EvalConfig)
    merges: list[MergeConfig] = field(default_factory=default_merges)
    learned: list[LearnedMergeSpec] = field(default_factory=default_learned)
    joint: bool = True
    seed: int = 0
    output_dir: str | None = None


def load_domains(cfg: DataConfig) -> list[Domain]:
    """Load the configured domains (or generate the synthetic ones)."""
    if not cfg.sources:
        return make_synthetic_domains(cfg.synthetic)
    out = []
    for src in cfg.sources:
        if src.format == "mergerec_json":
            out.append(load_mergerec_json(src.path, src.name, cache_dir=Path(cfg.cache_dir) / "data"))
        else:
            out.append(load_recbole(src.path, src.name))
    return out


def domain_features(domains: list[Domain], encoder_spec: str, cache_dir: str | Path,
                    center: bool = True) -> list[torch.Tensor]:
    """Frozen text vectors per domain (cached under ``cache_dir/features``), optionally
    centred on each catalogue's mean (see :func:`common.text.center_features`)."""
    encoder = make_encoder(encoder_spec)
    feats = [item_features(d, encoder, Path(cache_dir) / "features") for d in domains]
    return [center_features(f) for f in feats] if center else feats


def model_from_state(cfg: ModelConfig, state: StateDict) -> TextSeqRec:
    """A model with the given weights (architecture from ``cfg``)."""
    model = TextSeqRec(cfg)
    model.load_state_dict(state)
    return model.eval()


def training_key(base: StateDict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 domains: list[Domain]) -> str:
    """Identifies a fine-tuning run: θ₀ hash, configs and the training data's catalogue."""
    train = {k: v for k, v in to_dict(train_cfg).items() if k != "progress"}  # display only
    payload = json.dumps([state_hash(base), to_dict(model_cfg), train,
                          [(d.name, d.catalogue_hash(), d.num_users) for d in domains]],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fine_tune_cached(base: StateDict, model_cfg: ModelConfig, domains: list[Domain],
                     features: list[torch.Tensor], train_cfg: TrainConfig,
                     checkpoint_dir: str | Path | None = None) -> tuple[StateDict, dict[str, object]]:
    """Fine-tune from θ₀ (one domain = a silo; several = joint training).

    With ``checkpoint_dir`` the best weights are kept as
    ``<names>-<training key>.safetensors`` and reused by a rerun with the same θ₀, configs
    and data instead of retraining.
    """
    path = None
    if checkpoint_dir is not None:
        key = training_key(base, model_cfg, train_cfg, domains)
        path = Path(checkpoint_dir) / f"{'+'.join(d.name for d in domains)}-{key}.safetensors"
        if path.is_file():
            return load_file(str(path)), {"reused_checkpoint": str(path)}
    model = model_from_state(model_cfg, base)
    result = fine_tune(model, domains, features, train_cfg, path)
    stats = {"best_epoch": result.best_epoch, "best_val_ndcg@10": result.best_val_ndcg10,
             "epochs_run": len(result.history) - 1, "seconds": result.seconds}
    return result.state_dict, stats


def evaluate_state(state: StateDict, model_cfg: ModelConfig, domain: Domain,
                   features: torch.Tensor, eval_cfg: EvalConfig) -> dict[str, float]:
    """Metrics of the model with weights ``state`` on ``domain`` (what a silo reports back)."""
    return evaluate_model(model_from_state(model_cfg, state), domain, features, eval_cfg).metrics


def build_pseudo_data(spec: LearnedMergeSpec, model_cfg: ModelConfig, domains: list[Domain],
                      features: list[torch.Tensor], teachers: list[StateDict] | None
                      ) -> list[DomainPseudoData]:
    """Pseudo-users per domain and (if the loss needs it) the teacher's answers to them."""
    out = []
    for k, (domain, feats) in enumerate(zip(domains, features)):
        teacher_model = model_from_state(model_cfg, teachers[k]) if teachers else None
        scorer = None
        if teacher_model is not None:
            scorer = lambda seqs, m=teacher_model, f=feats: teacher_scores(m, f, seqs).scores  # noqa: E731
        seqs = build_pseudo_users(feats, spec.pseudo_users, scorer)
        signal = None
        if spec.distill.loss.needs_teacher:
            if teacher_model is None:
                raise ValueError(f"{spec.name}: the loss needs teacher models")
            signal = teacher_scores(teacher_model, feats, seqs, spec.teacher_topk)
        out.append(DomainPseudoData(domain.name, feats, seqs, signal))
    return out


def run_learned_merge(spec: LearnedMergeSpec, base: StateDict, finetuned: list[StateDict],
                      model_cfg: ModelConfig, pseudo: list[DomainPseudoData]) -> LearnResult:
    """Merge initialisation, then learned merging weights on the pseudo-users."""
    init = build_merge(spec.init, base, finetuned)
    return learn_merge_weights(TextSeqRec(model_cfg), base, init, pseudo, spec.distill)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Stages:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.records[name] = {"seconds": round(time.perf_counter() - start, 2),
                              "peak_rss_mb": round(_peak_rss_mb(), 1)}
        return out


def run_pipeline(cfg: PipelineConfig) -> dict[str, object]:
    """Run the whole method in-process and return a JSON-ready report."""
    stages = _Stages()
    domains = stages.run("load data", load_domains, cfg.data)
    names = [d.name for d in domains]
    feats = stages.run("encode item text", domain_features, domains, cfg.encoder, cfg.data.cache_dir,
                       cfg.center_features)
    model_cfg = replace(cfg.model, text_dim=int(feats[0].shape[1]))
    base = build_base_model(model_cfg, cfg.seed).state_dict()
    train_cfg = replace(cfg.train, seed=cfg.seed)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    results: dict[str, dict[str, dict[str, float]]] = {}
    info: dict[str, object] = {}

    def eval_all(state: StateDict) -> dict[str, dict[str, float]]:
        return {d.name: evaluate_state(state, model_cfg, d, f, cfg.eval) for d, f in zip(domains, feats)}

    results["popularity"] = stages.run(
        "eval popularity", lambda: {d.name: evaluate_popularity(d, cfg.eval).metrics for d in domains})
    results["zero-shot base θ₀"] = stages.run("eval base", eval_all, base)

    finetuned: list[StateDict] = []
    train_stats: dict[str, object] = {}
    ckpt_dir = out_dir / "checkpoints" if out_dir else None
    for d, f in zip(domains, feats):
        state, stats = stages.run(f"fine-tune {d.name}", fine_tune_cached, base, model_cfg, [d], [f],
                                  train_cfg, ckpt_dir)
        finetuned.append(state)
        train_stats[d.name] = stats
    matrix = {}
    for d, state in zip(domains, finetuned):
        matrix[d.name] = stages.run(f"eval fine-tuned {d.name}", eval_all, state)
        results[f"fine-tuned on {d.name}"] = matrix[d.name]
    results["in-domain fine-tuned"] = {n: matrix[n][n] for n in names}

    if cfg.joint:
        joint, train_stats["joint"] = stages.run("joint training", fine_tune_cached, base, model_cfg,
                                                 domains, feats, train_cfg, ckpt_dir)
        results["joint (pooled data, non-private)"] = stages.run("eval joint", eval_all, joint)

    for mcfg in cfg.merges:
        label = mcfg.method.replace("_", " ")
        merged = stages.run(f"merge {label}", lambda m=mcfg: build_merge(m, base, finetuned).merged(base))
        results[label] = stages.run(f"eval {label}", eval_all, merged)

    learned_weights = {}
    pseudo_cache: dict[str, list[DomainPseudoData]] = {}
    for spec in cfg.learned:
        key = json.dumps([to_dict(spec.pseudo_users), spec.teacher_topk,
                          spec.distill.loss.needs_teacher])
        if key not in pseudo_cache:  # variants with the same pseudo-users share the answers
            pseudo_cache[key] = stages.run(f"pseudo-users + teacher ({spec.name})", build_pseudo_data,
                                           spec, model_cfg, domains, feats, finetuned)
        pseudo = pseudo_cache[key]
        learned = stages.run(f"learn ({spec.name})", run_learned_merge, spec, base, finetuned,
                             model_cfg, pseudo)
        learned_weights[spec.name] = learned.weights
        results[spec.name] = stages.run(f"eval {spec.name}", eval_all, learned.state_dict)
        if out_dir:
            safe = spec.name.replace(" ", "_").replace("(", "").replace(")", "")
            atomic_save_safetensors(learned.state_dict, out_dir / "merged" / f"{safe}.safetensors",
                                    metadata={"base_hash": state_hash(base)})

    for row in results.values():
        row["average"] = {k: sum(row[n][k] for n in names) / len(names) for k in row[names[0]]}
    info.update(
        domains={d.name: d.stats() for d in domains},
        base_hash=state_hash(base),
        training=train_stats,
        learned_weights=learned_weights,
        stages=stages.records,
        total_seconds=round(sum(r["seconds"] for r in stages.records.values()), 1),
        peak_rss_mb=round(_peak_rss_mb(), 1),
        protocol={**to_dict(cfg.eval), "ranking": "full catalogue", "precision": "fp32",
                  "tie_break": "lower item index first", "history_cut": model_cfg.max_len},
        config=to_dict(cfg),
    )
    report = {"results": results, **info}
    if out_dir:
        write_report(report, out_dir)
    return report


def markdown_table(report: dict[str, object], metrics: tuple[str, ...] = ("recall@10", "ndcg@10")
                   ) -> str:
    """Methods × (domain, metric) table with the average last."""
    results: dict[str, dict[str, dict[str, float]]] = report["results"]  # type: ignore[assignment]
    first = next(iter(results.values()))
    cols = list(first)
    head = "| method | " + " | ".join(f"{c} {m.replace('recall', 'R').replace('ndcg', 'N')}"
                                      for c in cols for m in metrics) + " |"
    sep = "|---|" + "---:|" * (len(cols) * len(metrics))
    lines = [head, sep]
    for method, row in results.items():
        cells = [f"{row[c][m]:.4f}" for c in cols for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_report(report: dict[str, object], out_dir: Path, markdown: str | None = None) -> None:
    """``report.json`` and ``report.md`` (default: the results table), written atomically."""
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out_dir / "report.md", (markdown or markdown_table(report)) + "\n")

