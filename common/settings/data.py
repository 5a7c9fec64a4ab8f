"""Where a run's domains come from: real sources or the synthetic generator."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Split = Literal["val", "test"]


def default_cache() -> Path:
    """Caches (unpacked archives, encoded catalogues) when a run names none:
    ``$MERGEREC_CACHE``, else ``~/.cache/mergerec`` (never inside the installed package)."""
    return Path(os.environ.get("MERGEREC_CACHE") or Path.home() / ".cache" / "mergerec")


@dataclass
class SyntheticConfig:
    """Size and behaviour of the synthetic benchmark."""

    domains: tuple[str, ...] = ("beauty", "sports", "pantry")
    items_per_domain: int = 240
    users_per_domain: int = 800
    min_len: int = 5
    max_len: int = 14
    attribute_rule: float = 0.75
    type_rule: float = 0.6
    seed: int = 0


@dataclass
class DomainSource:
    """Where one domain comes from (``format``: ``auto`` tells it by the files);
    ``max_users`` keeps a fixed random sample of that many users and the items they touched
    (:func:`common.data.subsample_users`); ``description_chars`` > 0 adds an LC-Rec item's
    description, cut to that many characters, to its text."""

    name: str
    format: Literal["mergerec_json", "recbole", "lcrec", "auto"] = "mergerec_json"
    path: str = ""
    max_users: int | None = None
    sample_seed: int = 0
    description_chars: int = 0

    def __post_init__(self) -> None:
        if self.description_chars < 0:
            raise ValueError(f"data source {self.name}: description_chars must be >= 0, "
                             f"got {self.description_chars}")
        if self.description_chars and self.format not in ("lcrec", "auto"):
            raise ValueError(f"data source {self.name}: description_chars applies to the lcrec "
                             f"format only, not {self.format}")


@dataclass
class DataConfig:
    """The domains of a run: real sources, or the synthetic generator when ``sources`` is empty.

    ``holdout_fraction`` > 0 keeps that share of each domain's users out of the run entirely
    (the silo never sees them): the non-members of the membership-inference experiment.
    """

    sources: list[DomainSource] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    cache_dir: str = ""
    holdout_fraction: float = 0.0
    holdout_seed: int = 0

    def cache(self) -> Path:
        """The cache folder: ``cache_dir``, or the user cache when empty (:func:`default_cache`)."""
        return Path(self.cache_dir) if self.cache_dir else default_cache()

    def domain_names(self) -> list[str]:
        """Names of the configured domains, in order (partition ``i`` in simulation)."""
        if self.sources:
            return [s.name for s in self.sources]
        return list(self.synthetic.domains)
