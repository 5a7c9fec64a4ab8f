"""Fine-tuning with checkpoint reuse: a rerun with the same θ₀, configs and data loads the
kept weights instead of retraining."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..config import to_dict
from ..data import Domain
from ..model import ModelConfig, model_from_state, state_hash
from ..model.recommender import ItemInputs
from ..settings.training import check_interpolation
from ..io import atomic_save_safetensors
from .dp_sgd import dp_fine_tune
from .finetune import TrainConfig, TrainResult, fine_tune

StateDict = dict[str, torch.Tensor]


def training_key(base: StateDict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 domains: list[Domain]) -> str:
    """Identifies a fine-tuning run: θ₀ hash, configs and the training data's catalogue."""
    train = to_dict(train_cfg)
    payload = json.dumps([state_hash(base), model_cfg.identity(), train,
                          [(d.name, d.catalogue_hash(), d.num_users) for d in domains]],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_path(checkpoint_dir: str | Path, base: StateDict, model_cfg: ModelConfig,
                    train_cfg: TrainConfig, domains: list[Domain]) -> Path:
    """``<dir>/<domain names>-<training key>.safetensors``."""
    key = training_key(base, model_cfg, train_cfg, domains)
    return Path(checkpoint_dir) / f"{'+'.join(d.name for d in domains)}-{key}.safetensors"


def fine_tune_cached(base: StateDict, model_cfg: ModelConfig, domains: list[Domain],
                     features: list[ItemInputs], train_cfg: TrainConfig,
                     checkpoint_dir: str | Path | None = None) -> tuple[StateDict, dict[str, object]]:
    """Fine-tune from θ₀ (one domain = a silo; several = joint training).

    With ``checkpoint_dir`` the best weights are kept at :func:`checkpoint_path` (training stats,
    ε included, in its metadata) and reused by a rerun with the same θ₀, configs and data.
    A ``train_cfg.dp`` with an ``epsilon`` trains with user-level DP-SGD.
    """
    check_interpolation(train_cfg, "train")
    path = None
    if checkpoint_dir is not None:
        path = checkpoint_path(checkpoint_dir, base, model_cfg, train_cfg, domains)
        if path.is_file():
            return read_checkpoint(path)
    model = model_from_state(model_cfg, base)
    if train_cfg.dp is not None and train_cfg.dp.epsilon is not None:
        if len(domains) != 1:
            raise ValueError("DP fine-tuning is per silo: give exactly one domain")
        result = dp_fine_tune(model, domains[0], features[0], train_cfg)
    else:
        result = fine_tune(model, domains, features, train_cfg)
    return keep_checkpoint(path, result)


def read_checkpoint(path: Path) -> tuple[StateDict, dict[str, float]]:
    """Kept weights and the training stats stored with them."""
    with safe_open(str(path), "pt") as f:
        kept = {k: float(v) for k, v in (f.metadata() or {}).items()}
    return load_file(str(path)), {**kept, "reused_checkpoint": 1.0}


def keep_checkpoint(path: Path | None, result: TrainResult) -> tuple[StateDict, dict[str, float]]:
    """Keep a training result's best weights at ``path`` (if any) with its stats (the training
    time included) in the metadata, so a reuse reports them too; returns the weights and the
    stats."""
    stats = {"best_epoch": float(result.best_epoch), "best_val_ndcg@10": result.best_val_ndcg10,
             "epochs_run": float(len(result.history) - 1), "seconds": result.seconds,
             "alpha": result.alpha,
             **result.privacy}
    if path is not None:
        atomic_save_safetensors(result.state_dict, path, metadata={k: repr(v) for k, v in stats.items()})
    return result.state_dict, {**stats, "reused_checkpoint": 0.0}
