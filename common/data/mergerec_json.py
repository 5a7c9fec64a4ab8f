"""Loader for the MergeRec / Recformer JSON domain format.

A domain folder (or a ``.tar.gz`` holding one) contains ``train.json``, ``val.json``,
``test.json`` (user index -> item-index list, leave-one-out), ``meta_data.json``
(asin -> {title, brand, category}), ``smap.json`` (asin -> item index) and ``umap.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

from .domain import DataError, Domain
from .validation import validate_domain

REQUIRED_FILES = ("train.json", "val.json", "test.json", "meta_data.json", "smap.json")
DEFAULT_TEXT_FIELDS = ("title", "brand", "category")
MAX_EXTRACTED_BYTES = 4 << 30  # a domain archive unpacks to at most this many bytes
MAX_EXPANSION = 100.0  # ... and to at most this many times its own size (real ones: about 4)


def read_json(path: Path) -> Any:
    """A UTF-8 JSON document; duplicate object keys, other encodings and absurd nesting are
    :class:`DataError` naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: required file is missing")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                        "save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DataError(f"{path}: key {dup!r} appears more than once in one object")
    return out


def archive_digest(archive: Path) -> str:
    """SHA-256 of an archive's bytes (its extraction cache key: a replaced archive of the same
    size is unpacked again)."""
    h = hashlib.sha256()
    with archive.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def extract_archive(archive: Path, cache_dir: Path, max_bytes: int = MAX_EXTRACTED_BYTES,
                    max_ratio: float = MAX_EXPANSION, marker: str = "train.json") -> Path:
    """Unpack ``archive`` (a ``.tar.gz`` with one domain folder) once into ``cache_dir``,
    keyed by its content, and return the one folder holding a file matching ``marker`` (a
    glob). Refused before anything is written: members that would expand beyond
    ``max_bytes`` in total or ``max_ratio`` times the archive's size, links, devices."""
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    target = cache_dir / f"{name}-{archive_digest(archive)}"
    done = target / ".complete"
    if not done.exists():
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                total = sum(m.size for m in members if m.isfile())
                limit = min(max_bytes, max_ratio * max(1, archive.stat().st_size))
                if total > limit:
                    raise DataError(f"{archive}: members would expand to {total} bytes, more than "
                                    f"the limit of {int(limit)} (at most {max_ratio:g} x the "
                                    f"archive and {max_bytes} bytes)")
                odd = [m.name for m in members if not (m.isfile() or m.isdir())]
                if odd:
                    raise DataError(f"{archive}: holds links or special files ({odd[0]})")
                partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
                shutil.rmtree(partial, ignore_errors=True)
                tar.extractall(partial, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); "
                            "the archive may be truncated or not a .tar.gz") from None
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        done.touch()
    candidates = sorted({p.parent for p in target.rglob(marker)})
    if len(candidates) != 1:
        raise DataError(f"{archive}: expected exactly one folder with {marker} inside, "
                        f"found {len(candidates)}")
    return candidates[0]


def _item_text(meta: dict[str, Any], fields: tuple[str, ...]) -> str:
    parts = []
    for f in fields:
        v = meta.get(f)
        if v is None:  # a missing or null field is empty
            continue
        if isinstance(v, list):
            v = " ".join(str(x) for x in v if x is not None)
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
    smap = read_json(folder / "smap.json")
    meta = read_json(folder / "meta_data.json")
    train_raw = read_json(folder / "train.json")
    val_raw = read_json(folder / "val.json")
    test_raw = read_json(folder / "test.json")
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
