"""Loader for the LC-Rec JSON format, the format of most generative-recommendation code.

A domain folder (or a ``.tar.gz`` holding one) contains ``<Domain>.inter.json``
(``{"user id": [item id, ...]}``, each user's items in time order) and ``<Domain>.item.json``
(``{"item id": {"title", "description", "brand", "categories"}}``). There are no pre-made
splits: leave-one-out (last item test, the one before validation, the rest training), as for
the other formats. Item text = title, brand and categories; the description is added when
``description_chars`` > 0, cut to at most that many characters at a word boundary. The placeholders the LC-Rec
preprocessing writes for missing text (``title_<n>``, ``description_<n>``) count as empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .domain import DataError, Domain
from .mergerec_json import extract_archive, read_json
from .validation import validate_domain

TEXT_FIELDS = ("title", "brand", "categories")
MIN_LEN = 3  # a user needs a training item, a validation item and a test item
_PLACEHOLDER = re.compile(r"(title|description)_\d+")


def _field_text(value: Any, where: str) -> str:
    """One metadata field as text: a string, a list of strings (joined) or null (empty)."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ", ".join(v.strip() for v in value if v.strip())
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string or a list of strings, got {type(value).__name__}")
    value = " ".join(value.split())
    return "" if _PLACEHOLDER.fullmatch(value) else value


def item_text(entry: dict[str, Any], where: str, description_chars: int = 0) -> str:
    """An item's text: title, brand and categories (commas spaced), then the description cut
    to at most ``description_chars`` characters at a word boundary when that is positive."""
    parts = [_field_text(entry.get(f), f"{where} field '{f}'") for f in TEXT_FIELDS]
    parts[2] = ", ".join(c.strip() for c in parts[2].split(",") if c.strip())
    if description_chars > 0:
        desc = _field_text(entry.get("description"), f"{where} field 'description'")
        cut = desc[:description_chars + 1]
        if len(cut) > description_chars:  # too long: back to the last whole word
            cut = cut.rsplit(" ", 1)[0] if " " in cut else cut[:description_chars]
        parts.append(cut)
    return " ".join(p for p in parts if p)


def _domain_files(folder: Path, name: str | None) -> tuple[str, Path, Path]:
    """The domain's name and its two files; without ``name`` the folder must hold exactly one
    ``*.inter.json``."""
    if name is None or not (folder / f"{name}.inter.json").is_file():
        found = sorted(folder.glob("*.inter.json"))
        if len(found) != 1:
            want = f"{name}.inter.json" if name else "one *.inter.json"
            raise DataError(f"{folder}: expected {want} (found {[p.name for p in found]})")
        stem = found[0].name.removesuffix(".inter.json")
    else:
        stem = name
    return name or stem, folder / f"{stem}.inter.json", folder / f"{stem}.item.json"


def _catalogue(item_path: Path, description_chars: int) -> tuple[list[str], list[str]]:
    """(item keys, item texts) from the item file, in numeric order of the ids."""
    raw = read_json(item_path)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{item_path}: expected a non-empty JSON object of item id -> metadata")
    bad = next((k for k in raw if not k.isdigit()), None)
    if bad is not None:
        raise DataError(f"{item_path}: item id {bad!r} is not a non-negative integer")
    keys = sorted(raw, key=int)
    if len({int(k) for k in keys}) != len(keys):
        raise DataError(f"{item_path}: item ids repeat as numbers (e.g. '1' and '01')")
    texts = []
    for key in keys:
        entry = raw[key]
        if not isinstance(entry, dict):
            raise DataError(f"{item_path}: metadata of item {key} is not an object")
        texts.append(item_text(entry, f"{item_path}: item {key}", description_chars))
    return keys, texts


def _sequences(inter_path: Path, index: dict[int, int], item_path: Path
               ) -> tuple[list[str], list[list[int]]]:
    """(user ids, item-index sequences) of the users with at least :data:`MIN_LEN` items."""
    raw = read_json(inter_path)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{inter_path}: expected a non-empty JSON object of user id -> item ids")
    users, seqs = [], []
    for user, items in raw.items():
        if not isinstance(items, list):
            raise DataError(f"{inter_path}: user {user} must map to a list of item ids, "
                            f"got {type(items).__name__}")
        seq = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise DataError(f"{inter_path}: user {user} has item id {item!r}, not an integer")
            if item not in index:
                raise DataError(f"{inter_path}: user {user} has item {item}, which "
                                f"{item_path.name} does not list")
            seq.append(index[item])
        if len(seq) >= MIN_LEN:
            users.append(user)
            seqs.append(seq)
    if not users:
        raise DataError(f"{inter_path}: no user has the {MIN_LEN} items a leave-one-out split needs")
    return users, seqs


def load_lcrec(path: str | Path, name: str | None = None, cache_dir: str | Path = ".cache/data",
               description_chars: int = 0) -> Domain:
    """Load one domain from an LC-Rec folder or ``.tar.gz``; ``name`` picks the domain's files
    (``<name>.inter.json``) when the folder holds several, else the one pair is read."""
    path = Path(path)
    if description_chars < 0:
        raise DataError(f"{path}: description_chars must be >= 0, got {description_chars}")
    folder = extract_archive(path, Path(cache_dir), marker="*.inter.json") \
        if path.suffix in (".gz", ".tgz") else path
    if not folder.is_dir():
        raise DataError(f"{folder}: domain folder not found")
    name, inter_path, item_path = _domain_files(folder, name)
    keys, texts = _catalogue(item_path, description_chars)
    users, seqs = _sequences(inter_path, {int(k): i for i, k in enumerate(keys)}, item_path)
    domain = Domain(name=name, item_texts=texts, user_ids=users,
                    train=[s[:-2] for s in seqs], val=[s[-2] for s in seqs],
                    test=[s[-1] for s in seqs], source=str(folder), item_keys=keys)
    files = {"train": str(inter_path), "val": str(inter_path), "test": str(inter_path),
             "meta": str(item_path)}
    return validate_domain(domain, files)
