"""Loader for RecBole atomic files (``<name>.inter`` and ``<name>.item``).

Items listed more than once in the ``.item`` file keep their first row. Headers carry RecBole
types, e.g. ``user_id:token  item_id:token  timestamp:float`` and
``item_id:token  title:token_seq  brand:token  categories:token_seq``. Each user's
interactions are sorted by timestamp and split leave-one-out (last = test, second to last
= val, the rest = train); users with fewer than ``min_len`` interactions are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .domain import DataError, Domain
from .validation import validate_domain


def _read_atomic(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: required file is missing")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse as a tab-separated atomic file ({exc})") from None
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def load_recbole(
    folder: str | Path,
    name: str | None = None,
    text_fields: tuple[str, ...] = ("title", "brand", "categories"),
    min_len: int = 3,
) -> Domain:
    """Load a RecBole dataset folder holding ``<name>.inter`` and ``<name>.item``."""
    folder = Path(folder)
    name = name or folder.name
    inter_path, item_path = folder / f"{name}.inter", folder / f"{name}.item"
    inter = _read_atomic(inter_path)
    items = _read_atomic(item_path)
    for col in ("user_id", "item_id", "timestamp"):
        if col not in inter.columns:
            raise DataError(f"{inter_path}: column '{col}' is missing (have {list(inter.columns)})")
    if "item_id" not in items.columns:
        raise DataError(f"{item_path}: column 'item_id' is missing")
    if inter.empty:
        raise DataError(f"{inter_path}: no interactions")
    fields = [f for f in text_fields if f in items.columns]
    if not fields:
        raise DataError(f"{item_path}: none of the text fields {list(text_fields)} is present")
    items = items.drop_duplicates("item_id")
    text_of = {
        row["item_id"]: " ".join(str(row[f]).strip() for f in fields if str(row[f]).strip())
        for _, row in items.iterrows()
    }
    try:
        inter["ts"] = inter["timestamp"].astype(float)
    except ValueError:
        raise DataError(f"{inter_path}: column 'timestamp' has non-numeric values") from None
    bad = inter.index[~np.isfinite(inter["ts"].to_numpy())]
    if len(bad):
        raise DataError(f"{inter_path}: timestamp {inter['timestamp'][bad[0]]!r} (data row "
                        f"{bad[0] + 1}) is not a finite number")
    unknown = sorted(set(inter["item_id"]) - set(text_of))
    if unknown:
        raise DataError(
            f"{item_path}: {len(unknown)} item(s) of {inter_path.name} have no metadata "
            f"(first: {unknown[0]})"
        )
    inter = inter.sort_values(["user_id", "ts"], kind="stable")
    item_keys = sorted(set(inter["item_id"]))
    index = {k: i for i, k in enumerate(item_keys)}
    user_ids, train, val, test = [], [], [], []
    for user, group in inter.groupby("user_id", sort=True):
        seq = [index[i] for i in group["item_id"]]
        if len(seq) < min_len:
            continue
        user_ids.append(str(user))
        train.append(seq[:-2])
        val.append(seq[-2])
        test.append(seq[-1])
    domain = Domain(
        name=name,
        item_texts=[text_of[k] for k in item_keys],
        user_ids=user_ids,
        train=train,
        val=val,
        test=test,
        source=str(folder),
        item_keys=item_keys,
    )
    files = {"train": str(inter_path), "val": str(inter_path), "test": str(inter_path),
             "meta": str(item_path)}
    return validate_domain(domain, files)
