"""Tiny run configs shared by the federation tests (seconds in-process)."""

from __future__ import annotations

from pathlib import Path

import yaml

from common.config import deep_merge, from_dict
from common.pipeline import PipelineConfig

TINY: dict = {
    "data": {"synthetic": {"items_per_domain": 60, "users_per_domain": 120, "seed": 3}},
    "encoder": "hashing-64",
    "model": {"hidden": 16, "layers": 1, "heads": 2, "max_len": 8, "item_hidden": 32},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.003, "warmup_steps": 2, "patience": 3},
    "merges": [{"method": "average"},
               {"method": "ties", "lam": 1.0, "density": 0.2, "grid": {"lam": [0.5, 1.0]}}],
    "learned": [
        {"name": "mergerec task-wise",
         "distill": {"steps": 20, "batch_size": 16, "lr": 0.01}},
        {"name": "mergerec layer-wise walk", "teacher_topk": 10,
         "pseudo_users": {"kind": "walk", "walk_length": 2},
         "distill": {"steps": 20, "batch_size": 16, "lr": 0.01, "granularity": "layer"}},
    ],
    # one silo fine-tunes with its own settings: every mode must apply them the same way
    "federation": {"silo_train": {"pantry": {"batch_size": 16, "epochs": 2}}},
    "new_domain": {"task_arithmetic": [0.0, 0.3], "whiten": [0.0, 0.5], "history_decay": [0.0, 0.3]},
    "joint": False,
}


def tiny_raw(tmp: Path, **overrides: object) -> dict:
    """TINY with its caches under ``tmp`` and ``overrides`` deep-merged in (lists replaced)."""
    return deep_merge(TINY, {**overrides, "data": {**overrides.get("data", {}),  # type: ignore[dict-item]
                                                   "cache_dir": str(tmp / "cache")}})


def tiny_config(tmp: Path, **overrides: object) -> PipelineConfig:
    return from_dict(PipelineConfig, tiny_raw(tmp, **overrides))


def write_tiny_yaml(tmp: Path, **overrides: object) -> Path:
    """The tiny config as an experiment YAML file (for the Flower runs)."""
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp, **overrides), allow_unicode=True))
    return path
