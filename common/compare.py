"""A side-by-side look at several models on one domain the user holds (run it where that
domain's data lives, e.g. inside a silo): for sampled users, each model's top 10 next to the
item the user actually took next, as a Markdown report."""

from __future__ import annotations

import random
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .data import Domain, DataError, load_path
from .model import model_from_state
from .package import PackageInfo, load_package
from .recommend import Catalogue, Recommender
from .settings import default_cache

TOP = 10


def _domain(path: str | Path) -> Domain:
    return load_path(path, cache_dir=default_cache() / "data")


def compare_report(packages: dict[str, str], weights: dict[str, str], domain_path: str | Path,
                   users: int = 20, split: str = "test", seed: int = 0) -> str:
    """Markdown: for ``users`` sampled users of ``split``, the last history items, the next
    item, and each model's top 10 (the next item marked). ``weights`` are bare weight files
    read with the first package's architecture and encoder (e.g. a silo's own checkpoint)."""
    if not packages:
        raise ValueError("give at least one model package (--model NAME=DIR)")
    domain = _domain(domain_path)
    catalogue = Catalogue(domain.name, domain.item_keys or [str(i) for i in range(domain.num_items)],
                          domain.item_texts)
    recs: dict[str, Recommender] = {}
    first: PackageInfo | None = None
    for name, folder in packages.items():
        model, info = load_package(folder, catalogue.texts)
        first = first or info
        recs[name] = Recommender(model, info, catalogue)
    for name, path in weights.items():
        assert first is not None
        try:
            model = model_from_state(first.model, load_file(str(path)))
        except (ValueError, RuntimeError, OSError, SafetensorError) as exc:
            raise DataError(f"{path}: not weights of the packages' architecture ({exc})") from None
        recs[name] = Recommender(model, first, catalogue)
    histories, targets = domain.eval_examples(split)  # type: ignore[arg-type]
    picked = sorted(random.Random(seed).sample(range(len(histories)), min(users, len(histories))))
    tops = {name: rec.recommend([histories[u] for u in picked], TOP, exclude_history=False)
            for name, rec in recs.items()}
    hits = {name: sum(any(r.item_id == catalogue.item_ids[targets[u]] for r in tops[name][j])
                      for j, u in enumerate(picked)) for name in recs}
    lines = [f"# Top {TOP} side by side: {domain.name}", "",
             f"{len(picked)} users sampled from the {split} split (seed {seed}); the item each "
             "user took next is **bold**. Next item in the top 10: "
             + ", ".join(f"{n} {h}/{len(picked)}" for n, h in hits.items()) + ".", ""]
    for j, u in enumerate(picked):
        target = targets[u]
        lines += [f"## User {j + 1}", "",
                  "Last items: " + " → ".join(domain.item_texts[i][:60] for i in histories[u][-5:]),
                  "", f"Next: **{domain.item_texts[target][:80]}**", "",
                  "| rank | " + " | ".join(recs) + " |", "|---:|" + "---|" * len(recs)]
        for rank in range(TOP):
            cells = []
            for name in recs:
                r = tops[name][j][rank]
                text = r.text[:50].replace("|", "/")
                cells.append(f"**{text}**" if r.item_id == catalogue.item_ids[target] else text)
            lines.append(f"| {rank + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
