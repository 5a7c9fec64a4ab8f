"""In-memory representation of one recommendation domain (a silo's data)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..settings import Split

class DataError(ValueError):
    """Bad input data; the message names the file (or domain) and the problem."""


@dataclass
class Domain:
    """A domain: an item catalogue with text and leave-one-out user sequences.

    Items are indexed ``0..num_items-1``. For user ``u`` the chronological history is
    ``train[u] + [val[u]] + [test[u]]``; users without a val/test target (``None``) only
    contribute training sequences.
    """

    name: str
    item_texts: list[str]
    user_ids: list[str]
    train: list[list[int]]
    val: list[int | None]
    test: list[int | None]
    source: str = "<memory>"
    item_keys: list[str] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.item_texts)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def eval_examples(self, split: Split) -> tuple[list[list[int]], list[int]]:
        """Histories and targets for ``split``: val uses train, test uses train + val."""
        targets = self.val if split == "val" else self.test
        histories: list[list[int]] = []
        out_targets: list[int] = []
        for u, target in enumerate(targets):
            if target is None:
                continue
            hist = list(self.train[u])
            if split == "test" and self.val[u] is not None:
                hist.append(self.val[u])  # type: ignore[arg-type]
            if not hist:
                continue
            histories.append(hist)
            out_targets.append(target)
        return histories, out_targets

    def item_popularity(self) -> list[int]:
        """Interaction counts per item over the training split only."""
        counts = [0] * self.num_items
        for seq in self.train:
            for i in seq:
                counts[i] += 1
        return counts

    def catalogue_hash(self) -> str:
        """Stable hash of the item texts (used to key feature caches)."""
        return texts_hash(self.item_texts)

    def stats(self) -> dict[str, float]:
        n_inter = sum(len(s) for s in self.train) + sum(v is not None for v in self.val)
        n_inter += sum(t is not None for t in self.test)
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": n_inter,
            "mean_train_len": sum(len(s) for s in self.train) / max(1, self.num_users),
        }


def texts_hash(texts: list[str]) -> str:
    """Stable 16-hex-digit hash of a list of texts."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]
