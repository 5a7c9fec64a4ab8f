"""Loader for the MergeRec / Recformer JSON domain format.

A domain folder (or a ``.tar.gz`` holding one) contains ``train.json``, ``val.json``,
``test.json`` (user index -> item-index list, leave-one-out), ``meta_data.json``
(asin -> {title, brand, category}), ``smap.json`` (asin -> item index) and ``umap.json``.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from .domain import DataError, Domain
from .validation import validate_domain

REQUIRED_FILES = ("train.json", "val.json", "test.json", "meta_data.json", "smap.json")
DEFAULT_TEXT_FIELDS = ("title", "brand", "category")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: required file is missing")
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack ``archive`` (a ``.tar.gz`` with one domain folder) once into ``cache_dir``."""
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    target = cache_dir / f"{name}-{archive.stat().st_size}"
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{archive}: cannot unpack ({exc})") from None
        done.touch()
    candidates = [p.parent for p in target.rglob("train.json")]
    if len(candidates) != 1:
        raise DataError(f"{archive}: expected exactly one folder with train.json inside")
    return candidates[0]


def _item_text(meta: dict[str, Any], fields: tuple[str, ...]) -> str:
    parts = []
    for f in fields:
        v = meta.get(f, "")
        if isinstance(v, list):
            v = " ".join(str(x) for x in v)
        v = str(v).strip()
        if v:
            parts.append(v)
    return " ".join(parts)


def _as_index(value: Any, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{path}: {what} must be an integer, got {value!r}")
    return value


def load_mergerec_json(
    path: str | Path,
    name: str | None = None,
    cache_dir: str | Path = ".cache/data",
    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS,
) -> Domain:
    """Load one domain from a folder or ``.tar.gz`` in the MergeRec JSON format."""
    path = Path(path)
    if path.suffix in (".gz", ".tgz"):
        folder = extract_archive(path, Path(cache_dir))
    else:
        folder = path
    if not folder.is_dir():
        raise DataError(f"{folder}: domain folder not found")
    for f in REQUIRED_FILES:
        if not (folder / f).is_file():
            raise DataError(f"{folder / f}: required file is missing")
    smap = _read_json(folder / "smap.json")
    meta = _read_json(folder / "meta_data.json")
    train_raw = _read_json(folder / "train.json")
    val_raw = _read_json(folder / "val.json")
    test_raw = _read_json(folder / "test.json")
    for fname, obj in (("smap.json", smap), ("meta_data.json", meta), ("train.json", train_raw),
                       ("val.json", val_raw), ("test.json", test_raw)):
        if not isinstance(obj, dict):
            raise DataError(f"{folder / fname}: expected a JSON object at the top level")

    num_items = len(smap)
    keys: list[str | None] = [None] * num_items
    for asin, idx in smap.items():
        idx = _as_index(idx, folder / "smap.json", f"item index of {asin}")
        if not 0 <= idx < num_items or keys[idx] is not None:
            raise DataError(
                f"{folder / 'smap.json'}: item indices must be unique and contiguous in "
                f"[0, {num_items}); got {idx} for {asin}"
            )
        keys[idx] = asin
    texts: list[str] = []
    for idx, asin in enumerate(keys):
        if asin not in meta:
            raise DataError(f"{folder / 'meta_data.json'}: item {asin} (index {idx}) has no metadata")
        entry = meta[asin]
        if not isinstance(entry, dict):
            raise DataError(f"{folder / 'meta_data.json'}: metadata of {asin} is not an object")
        texts.append(_item_text(entry, text_fields))

    for fname, raw in (("val.json", val_raw), ("test.json", test_raw)):
        missing = [u for u in raw if u not in train_raw]
        if missing:
            raise DataError(
                f"{folder / fname}: {len(missing)} user(s) missing from train.json "
                f"(first: {missing[0]})"
            )

    def _target(raw: dict[str, Any], user: str, fname: str) -> int | None:
        if user not in raw:
            return None
        v = raw[user]
        if not isinstance(v, list) or len(v) != 1:
            raise DataError(f"{folder / fname}: user {user} must map to a one-item list, got {v!r}")
        return _as_index(v[0], folder / fname, f"item of user {user}")

    user_ids = list(train_raw.keys())
    train: list[list[int]] = []
    for u in user_ids:
        seq = train_raw[u]
        if not isinstance(seq, list):
            raise DataError(f"{folder / 'train.json'}: user {u} must map to a list of item indices")
        train.append([_as_index(i, folder / "train.json", f"item of user {u}") for i in seq])
    domain = Domain(
        name=name or folder.name,
        item_texts=texts,
        user_ids=user_ids,
        train=train,
        val=[_target(val_raw, u, "val.json") for u in user_ids],
        test=[_target(test_raw, u, "test.json") for u in user_ids],
        source=str(folder),
        item_keys=[k or "" for k in keys],
    )
    files = {
        "train": str(folder / "train.json"),
        "val": str(folder / "val.json"),
        "test": str(folder / "test.json"),
        "meta": str(folder / "meta_data.json"),
    }
    return validate_domain(domain, files)
