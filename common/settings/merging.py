"""Merge settings and the catalogue of training-free merge methods.

:data:`REGISTRY` is the one list of methods: each one's name in configs, the
:class:`MergeConfig` fields it reads, its default λ and where it comes from. Configs are
validated against it; :mod:`common.merging.methods` implements each entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
    method apart in a run."""

    method: str = "task_arithmetic"
    lam: float | None = None
    density: float = 0.2
    drop_rate: float = 0.9
    rescale: bool = True
    dare_base: Literal["task_arithmetic", "ties"] = "task_arithmetic"
    scope: Literal["tensor", "model"] = "tensor"
    seed: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.method not in REGISTRY:
            raise ValueError(f"unknown merge method '{self.method}'; choose from {list(REGISTRY)}")

    @property
    def label(self) -> str:
        """The merge's row in the results: its ``name``, or the method's name."""
        return self.name or self.method.replace("_", " ")
