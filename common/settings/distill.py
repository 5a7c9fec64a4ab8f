"""Pseudo-users, the merge-learning loss and its optimiser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .bounds import AT_LEAST_1, POSITIVE, Bound, check_bounds

Granularity = Literal["task", "layer", "tensor"]


@dataclass
class PseudoUserConfig:
    """How to build pseudo-users for one domain.

    ``kind="one_item"``: every selected item as a one-item history (the paper).
    ``kind="walk"``: start from a selected item and append, ``walk_length - 1`` times, the
    top-scored item not yet in the sequence according to a scorer (a silo's teacher).
    ``sample``: ``all`` items, a ``random`` subset of ``num``, or ``centroid`` (k-means with
    ``num`` clusters over the item text vectors, the item nearest each centroid).
    """

    kind: Literal["one_item", "walk"] = "one_item"
    sample: Literal["all", "random", "centroid"] = "all"
    num: int | None = None
    walk_length: int = 3
    seed: int = 0


@dataclass
class LossConfig:
    """Weights of the loss terms; the paper's objective is ``rec + kd``.

    ``kd_weight`` multiplies ``τ² · KL(softmax(t/τ) ‖ softmax(z/τ))`` (the paper's λ = 1000
    at τ = 0.05 corresponds to ``kd_weight = 1000``). The recommendation loss is the
    cross-entropy of ``z / rec_temperature`` with the teacher's top item as label.
    """

    rec_weight: float = 1.0
    kd_weight: float = 1000.0
    entropy_weight: float = 0.0
    mse_weight: float = 0.0
    temperature: float = 0.05
    rec_temperature: float = 0.05

    @property
    def needs_teacher(self) -> bool:
        """Whether any active term uses teacher signals."""
        return bool(self.rec_weight or self.kd_weight or self.mse_weight)


@dataclass
class DistillConfig:
    """Optimisation of the merging weights.

    ``item_table``: ``frozen`` encodes the student's item table once with the initial merge
    (the paper); ``refresh`` re-encodes it without gradient every ``item_refresh_every``
    steps; ``differentiable`` encodes it with the current weights at every step, with
    gradient (no train/test mismatch; affordable because the item tower is small).
    ``domain_sampling``: ``proportional`` draws each batch row uniformly from all domains'
    pseudo-users pooled (the paper: a domain weighs as much as its catalogue is large);
    ``equal`` first draws a domain uniformly, then one of its pseudo-users, so every domain
    weighs the same, as in the average metric the merge is judged by.
    ``student_dropout`` runs the student in train mode (the official code does; off here so
    that student, teacher and item table see the same dropout-free model).
    ``residual_lr`` > 0 also trains a free residual on every weight (Adam at this learning rate,
    zero at the start) with the same loss: distillation of the silos' answers into all of the
    merged model's weights, beyond the paper's merging weights (0: off, the paper). Use it with
    ``item_table: differentiable``, or the item tower's residual learns nothing.
    """

    granularity: Granularity = "task"
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    loss: LossConfig = field(default_factory=LossConfig)
    item_table: Literal["frozen", "refresh", "differentiable"] = "frozen"
    item_refresh_every: int = 50
    domain_sampling: Literal["proportional", "equal"] = "proportional"
    student_dropout: bool = False
    residual_lr: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(self, steps=AT_LEAST_1, batch_size=AT_LEAST_1, lr=POSITIVE,
                     item_refresh_every=AT_LEAST_1, residual_lr=Bound(0, why="0 = off"))
