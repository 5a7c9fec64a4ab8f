"""Smaller versions of a domain for experiments sized to a CPU."""

from __future__ import annotations

import random
from dataclasses import replace

from .domain import DataError, Domain


def subsample_users(domain: Domain, max_users: int, seed: int = 0) -> Domain:
    """A random sample of ``max_users`` users with only the items they interacted with.

    Items are re-indexed ``0..M-1`` in their original order; texts and keys follow. The sample
    depends on ``seed`` only, so every run seed sees the same sub-domain.
    """
    if max_users <= 0:
        raise DataError(f"{domain.source}: max_users must be positive, got {max_users}")
    if max_users >= domain.num_users:
        return domain
    users = sorted(random.Random(seed).sample(range(domain.num_users), max_users))
    touched = sorted({i for u in users for i in domain.train[u]}
                     | {t for u in users for t in (domain.val[u], domain.test[u]) if t is not None})
    new_id = {old: new for new, old in enumerate(touched)}

    def remap(item: int | None) -> int | None:
        return None if item is None else new_id[item]

    return replace(domain,
                   item_texts=[domain.item_texts[i] for i in touched],
                   item_keys=[domain.item_keys[i] for i in touched] if domain.item_keys else [],
                   user_ids=[domain.user_ids[u] for u in users],
                   train=[[new_id[i] for i in domain.train[u]] for u in users],
                   val=[remap(domain.val[u]) for u in users],
                   test=[remap(domain.test[u]) for u in users],
                   source=f"{domain.source} (sample of {max_users} users, seed {seed})")
