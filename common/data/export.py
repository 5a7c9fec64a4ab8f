"""Write a :class:`Domain` in the MergeRec JSON format (e.g. one data folder per silo)."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text
from .domain import Domain


def write_mergerec_json(domain: Domain, folder: str | Path) -> Path:
    """``train/val/test.json``, ``meta_data.json`` (item text as title), ``smap.json``,
    ``umap.json``; :func:`load_mergerec_json` reads it back to an equal domain."""
    out = Path(folder)
    keys = domain.item_keys or [f"item{i}" for i in range(domain.num_items)]
    files = {
        "smap.json": {k: i for i, k in enumerate(keys)},
        "meta_data.json": {k: {"title": t} for k, t in zip(keys, domain.item_texts)},
        "umap.json": {u: i for i, u in enumerate(domain.user_ids)},
        "train.json": {str(u): seq for u, seq in enumerate(domain.train)},
        "val.json": {str(u): [v] for u, v in enumerate(domain.val) if v is not None},
        "test.json": {str(u): [t] for u, t in enumerate(domain.test) if t is not None},
    }
    for name, content in files.items():
        atomic_write_text(out / name, json.dumps(content))
    return out
