"""Recommendations from a model package for any catalogue, seen or never seen by the run.

    rec = Recommender.open("results/flower/models/mergerec_layer-wise", "shop.csv")
    rec.recommend([["B00123", "Rose lip balm"]], k=10)

A catalogue is a domain file the loaders read (a MergeRec JSON folder or ``.tar.gz``, a RecBole
folder) or a plain item table (``.csv`` / ``.tsv`` with a header: an ``item_id`` (or ``id``)
column and a ``text`` column, or ``title`` / ``brand`` / ``category`` columns joined as the
loaders join them). Its items are encoded once with the package's text encoder and cached.
Scores and ties are those of the evaluation (cosine + history bonus, fp32, lower item index
first), in the same batches.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbone import item_inputs
from .data import DataError, load_path
from .data.item_table import unescape_cell
from .model import TextSeqRec, pad_sequences
from .package import PackageInfo, load_package
from .runtime import compute_device
from .settings import default_cache

ID_COLUMNS = ("item_id", "id", "asin")
TEXT_COLUMNS = ("title", "brand", "category", "categories")
BATCH = 1024  # histories scored at once (as in evaluation)


class UnknownItem(KeyError):
    """A history entry that names no item of the catalogue (or several)."""


@dataclass
class Catalogue:
    """Item ids and texts of one domain, in index order."""

    name: str
    item_ids: list[str]
    texts: list[str]

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.by_text = {t.lower(): i for i, t in enumerate(self.texts)}

    def resolve(self, entry: str | int) -> int:
        """An item's index from its id, its full text, or the start of its text (a title)."""
        if isinstance(entry, int) and not isinstance(entry, bool):
            if 0 <= entry < len(self.texts):
                return entry
            raise UnknownItem(f"item index {entry} outside 0..{len(self.texts) - 1}")
        key = str(entry)
        if key in self.index:
            return self.index[key]
        if key.lower() in self.by_text:
            return self.by_text[key.lower()]
        starts = [i for i, t in enumerate(self.texts) if t.lower().startswith(key.lower())] if key else []
        if len(starts) == 1:
            return starts[0]
        raise UnknownItem(f"{key!r} is not an item id or title of catalogue {self.name}"
                          + (f" ({len(starts)} titles start with it)" if starts else ""))


def load_catalogue(path: str | Path, cache_dir: str | Path | None = None) -> Catalogue:
    """A catalogue from a domain file or an item table (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return _read_table(path)
    domain = load_path(path, cache_dir=Path(cache_dir or default_cache()) / "data")
    ids = domain.item_keys or [str(i) for i in range(domain.num_items)]
    return Catalogue(domain.name, list(ids), list(domain.item_texts))


def _read_table(path: Path) -> Catalogue:
    if not path.is_file():
        raise DataError(f"{path}: catalogue file not found")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            dialect = csv.excel_tab if path.suffix.lower() == ".tsv" or "\t" in sample.split("\n")[0] \
                else csv.excel
            rows = list(csv.DictReader(fh, dialect=dialect))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a UTF-8 CSV/TSV item table ({exc})") from None
    if not rows:
        raise DataError(f"{path}: no items (a header line and one row per item are needed)")
    columns = list(rows[0])
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    text_cols = ["text"] if "text" in columns else [c for c in TEXT_COLUMNS if c in columns]
    if id_col is None or not text_cols:
        raise DataError(f"{path}: needs an id column ({' / '.join(ID_COLUMNS)}) and a 'text' "
                        f"column or {' / '.join(TEXT_COLUMNS)}; has {columns}")
    ids, texts = [], []
    for n, row in enumerate(rows, start=2):
        text = " ".join(unescape_cell((row.get(c) or "").strip()) for c in text_cols
                        if (row.get(c) or "").strip())
        if not row.get(id_col) or not text:
            raise DataError(f"{path}: line {n} has no id or no text")
        ids.append(row[id_col])
        texts.append(text)
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: item ids must be unique")
    return Catalogue(path.stem, ids, texts)


@dataclass
class Recommendation:
    item_id: str
    text: str
    score: float
    rank: int


class Recommender:
    """A packaged model serving one catalogue: its items encoded once."""

    def __init__(self, model: TextSeqRec, info: PackageInfo, catalogue: Catalogue,
                 cache_dir: str | Path | None = None) -> None:
        self.model, self.info, self.catalogue = model, info, catalogue
        self.route = info.route(catalogue.texts)  # which of the package's paths serves it
        inputs = item_inputs(catalogue.texts, info.encoder, info.model, info.center_features,
                             Path(cache_dir or default_cache()) / "features", catalogue.name)
        self.device = compute_device()  # moved once: requests served in threads share it
        model.to(self.device).eval()
        on_device = inputs.float().to(self.device)
        with torch.no_grad():
            self.item_emb = model.encode_items(on_device)
        # kept only where users are encoded from the history's text (token states are large)
        self.inputs = on_device if model.seq_tower is None else None

    @classmethod
    def open(cls, model_dir: str | Path, catalogue: str | Path | Catalogue,
             cache_dir: str | Path | None = None) -> "Recommender":
        cat = catalogue if isinstance(catalogue, Catalogue) else load_catalogue(catalogue, cache_dir)
        model, info = load_package(model_dir, cat.texts)
        return cls(model, info, cat, cache_dir)

    @torch.no_grad()
    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """Scores [B, N] of every item for item-index histories (the evaluation's scores)."""
        seqs, lengths = pad_sequences(histories, self.model.cfg.max_len)
        return self.model.score_sequences(self.item_emb, seqs.to(self.device),
                                          lengths.to(self.device), self.inputs).float().cpu()

    def recommend(self, histories: list[list[str | int]], k: int = 10,
                  exclude_history: bool | None = None) -> list[list[Recommendation]]:
        """Top ``k`` items for each history (item ids, titles or indices, oldest first).
        ``exclude_history``: drop items already in the history (default: as the run's
        evaluation protocol did; fewer than ``k`` come back when the catalogue runs out)."""
        if exclude_history is None:
            exclude_history = bool(self.info.protocol.get("mask_history", False))
        if not 1 <= k <= len(self.catalogue.texts):
            raise ValueError(f"k must lie in 1..{len(self.catalogue.texts)}, got {k}")
        if any(len(h) == 0 for h in histories):
            raise ValueError("every history needs at least one item")
        resolved = [[self.catalogue.resolve(e) for e in h] for h in histories]
        out: list[list[Recommendation]] = []
        for start in range(0, len(resolved), BATCH):
            part = resolved[start:start + BATCH]
            scores = self.scores(part)
            if exclude_history:
                for r, h in enumerate(part):
                    scores[r, torch.tensor(h)] = float("-inf")
            # stable sort: equal scores keep the lower item index first, as the evaluation ranks
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            for r in range(len(part)):
                kept = [i for i in order[r].tolist() if scores[r, i] != float("-inf")]
                out.append([Recommendation(self.catalogue.item_ids[i], self.catalogue.texts[i],
                                           float(scores[r, i]), rank + 1)
                            for rank, i in enumerate(kept)])
        return out
