"""Synthetic multi-domain generator: the embedded default for demos and tests.

Every domain sells its own product types, described with attribute words (colours,
materials, styles, ...) shared by all domains. Users follow latent sequential rules: the
next item's attribute usually follows a transition shared across domains, and its product
type follows a domain-specific transition. Text similarity to the last item (the zero-shot
base) therefore only partly predicts the next item; a fine-tuned model learns the rules, and
what it learns about the shared rule transfers across domains, which makes merging meaningful.
"""

from __future__ import annotations


import numpy as np

from ..settings import SyntheticConfig
from .domain import Domain
from .validation import validate_domain

ATTRIBUTE_GROUPS = [
    ["crimson", "scarlet", "ruby"], ["azure", "cobalt", "navy"], ["emerald", "olive", "jade"],
    ["golden", "amber", "honey"], ["ivory", "pearl", "snow"], ["onyx", "charcoal", "ebony"],
    ["silk", "satin", "velvet"], ["bamboo", "oak", "cedar"], ["steel", "chrome", "titanium"],
    ["vintage", "retro", "classic"], ["sporty", "active", "dynamic"], ["organic", "natural", "herbal"],
]
DOMAIN_TYPES = {
    "beauty": ["lipstick", "mascara", "serum", "shampoo", "perfume", "lotion", "eyeliner", "cleanser"],
    "sports": ["racket", "helmet", "sneaker", "jersey", "dumbbell", "backpack", "bottle", "glove"],
    "pantry": ["coffee", "pasta", "cereal", "tea", "cracker", "sauce", "granola", "spice"],
    "toys": ["puzzle", "robot", "doll", "kite", "blocks", "train", "marble", "yoyo"],
    "office": ["stapler", "notebook", "pen", "folder", "marker", "binder", "clip", "tape"],
}
VARIANTS = ["mini", "deluxe", "pro", "travel", "family", "premium", "lite", "max"]
BRANDS = ["acme", "nova", "zenith", "orbit", "lumen", "vertex", "solace", "kinetic"]


def _domain(name: str, cfg: SyntheticConfig, shared_next_attr: np.ndarray, rng: np.random.Generator
            ) -> Domain:
    types = DOMAIN_TYPES[name]
    n_attr = len(ATTRIBUTE_GROUPS)
    type_next = rng.permutation(len(types))
    items: list[tuple[int, int]] = []
    texts: list[str] = []
    seen: set[str] = set()
    while len(items) < cfg.items_per_domain:
        t, a = int(rng.integers(len(types))), int(rng.integers(n_attr))
        word = ATTRIBUTE_GROUPS[a][int(rng.integers(3))]
        text = (f"{BRANDS[int(rng.integers(len(BRANDS)))]} {word} {types[t]} "
                f"{VARIANTS[int(rng.integers(len(VARIANTS)))]} {name}")
        if text in seen:
            continue
        seen.add(text)
        items.append((t, a))
        texts.append(text)
    by_cell: dict[tuple[int, int], list[int]] = {}
    for i, cell in enumerate(items):
        by_cell.setdefault(cell, []).append(i)
    popularity = rng.zipf(1.6, size=len(items)).clip(max=50).astype(float)

    def pick(t: int, a: int) -> int:
        for cell in ((t, a), (t, int(rng.integers(n_attr))), None):
            if cell is None:
                pool = list(range(len(items)))
            else:
                pool = by_cell.get(cell, [])
            if pool:
                w = popularity[pool] / popularity[pool].sum()
                return int(pool[rng.choice(len(pool), p=w)])
        raise AssertionError("unreachable")

    user_ids, train, val, test = [], [], [], []
    for u in range(cfg.users_per_domain):
        length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        t, a = items[int(rng.integers(len(items)))]
        seq = []
        for _ in range(length):
            seq.append(pick(t, a))
            a = int(shared_next_attr[a]) if rng.random() < cfg.attribute_rule else int(rng.integers(n_attr))
            t = int(type_next[t]) if rng.random() < cfg.type_rule else t
        user_ids.append(f"{name}-u{u}")
        train.append(seq[:-2])
        val.append(seq[-2])
        test.append(seq[-1])
    return Domain(name=name, item_texts=texts, user_ids=user_ids, train=train, val=val, test=test,
                  source=f"synthetic:{name}:seed{cfg.seed}", item_keys=[f"{name}-i{i}" for i in range(len(texts))])


def make_synthetic_domains(cfg: SyntheticConfig | None = None) -> list[Domain]:
    """Generate ``cfg.domains`` deterministically from ``cfg.seed``."""
    cfg = cfg or SyntheticConfig()
    unknown = [d for d in cfg.domains if d not in DOMAIN_TYPES]
    if unknown:
        raise ValueError(f"unknown synthetic domain(s) {unknown}; choose from {sorted(DOMAIN_TYPES)}")
    rng = np.random.default_rng(cfg.seed)
    shared_next_attr = rng.permutation(len(ATTRIBUTE_GROUPS))
    out = []
    for name in cfg.domains:
        sub = np.random.default_rng([cfg.seed, sum(map(ord, name))])
        out.append(validate_domain(_domain(name, cfg, shared_next_attr, sub)))
    return out
