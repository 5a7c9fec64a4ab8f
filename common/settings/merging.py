"""Merge settings and the catalogue of training-free merge methods.

:data:`REGISTRY` is the one list of methods: each one's name in configs, the
:class:`MergeConfig` fields it reads, its default λ and where it comes from. Configs are
validated against it; :mod:`common.merging.methods` implements each entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

GRID_PARAMS = {"lam": 10.0, "density": 1.0, "drop_rate": 0.99}  # tunable, with their upper bound


@dataclass(frozen=True)
class MergeMethod:
    """One training-free merge: its name in configs, the :class:`MergeConfig` fields it reads,
    its default λ (``None``: the weights are 1/K) and where it comes from."""

    name: str
    params: tuple[str, ...]
    default_lam: float | None
    reference: str

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


REGISTRY: dict[str, MergeMethod] = {m.name: m for m in (
    MergeMethod("average", (), None, "model soups / FedAvg: the mean of the fine-tuned models"),
    MergeMethod("task_arithmetic", ("lam",), 0.3, "Ilharco et al., ICLR 2023"),
    MergeMethod("ties", ("lam", "density", "scope"), 1.0, "Yadav et al., NeurIPS 2023"),
    MergeMethod("dare", ("lam", "drop_rate", "rescale", "dare_base", "density", "scope", "seed"),
                0.3, "Yu et al., ICML 2024"),
    MergeMethod("pcb", ("lam", "density", "scope"), 1.0, "Du et al., NeurIPS 2024"),
    MergeMethod("localize_stitch", ("density", "scope"), 1.0, "He et al., TMLR 2025 (dataless)"),
)}
METHODS = tuple(REGISTRY)
TRAINING_FREE_LABELS = tuple(m.label for m in REGISTRY.values())


@dataclass
class MergeConfig:
    """Which merge to build and its hyper-parameters; ``name`` tells two variants of one
    method apart in a run. ``grid``: values to try for some of the method's numeric
    hyper-parameters (``{lam: [0.3, 0.5, 1.0], density: [0.1, 0.2]}``): the coordinator builds
    every combination and keeps the one with the best mean Recall@10 on the training silos'
    validation splits (``query.validate``), as the method's authors tune it."""

    method: str = "task_arithmetic"
    lam: float | None = None
    density: float = 0.2
    drop_rate: float = 0.9
    rescale: bool = True
    dare_base: Literal["task_arithmetic", "ties"] = "task_arithmetic"
    scope: Literal["tensor", "model"] = "tensor"
    seed: int = 0
    name: str | None = None
    grid: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in REGISTRY:
            raise ValueError(f"unknown merge method '{self.method}'; choose from {list(REGISTRY)}")
        own = REGISTRY[self.method].params
        for key, spec in MergeConfig.__dataclass_fields__.items():  # a method's parameters
            if key in ("method", "name", "grid") or key in own:
                continue
            if getattr(self, key) != spec.default:
                raise ValueError(f"merge {self.label}: {key} is not a parameter of "
                                 f"{self.method} (its parameters: {list(own) or 'none'})")
        tunable = [p for p in REGISTRY[self.method].params if p in GRID_PARAMS]
        for key, values in self.grid.items():
            if key not in tunable:
                raise ValueError(f"merge {self.label}: grid key {key!r} is not a tunable "
                                 f"hyper-parameter of {self.method} (tunable: {tunable})")
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                 or not 0.0 < v <= GRID_PARAMS[key] for v in values):
                raise ValueError(f"merge {self.label}: grid {key} must be a non-empty list of "
                                 f"numbers in (0, {GRID_PARAMS[key]}], got {values!r}")

    def candidates(self) -> list["MergeConfig"]:
        """Every combination of the grid's values (this config alone without a grid)."""
        out = [replace(self, grid={})]
        for key, values in self.grid.items():
            out = [replace(c, **{key: float(v)}) for c in out for v in values]
        return out

    @property
    def label(self) -> str:
        """The merge's row in the results: its ``name``, or the method's name."""
        return self.name or self.method.replace("_", " ")
