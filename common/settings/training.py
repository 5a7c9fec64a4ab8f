"""Fine-tuning, user-level DP and the evaluation protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .bounds import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bound, check_bounds
from .data import Split
from .model import ModelConfig


@dataclass
class DPConfig:
    """User-level DP for a silo's fine-tuning: one user = one privacy unit.

    ``epsilon`` is the target (``None``: no DP); ``delta`` defaults to 1 / number of users;
    the noise multiplier is calibrated to reach ``epsilon`` after ``epochs`` passes with
    Poisson sampling rate ``batch_size / users``, unless given explicitly.
    ``train_item_tower``: also train the item tower privately. Off by default: the item tower
    stays at θ₀ (it then holds nothing private), because a user's gradient through it needs a
    backward pass over the whole catalogue per user (measured 30-45× slower on 2.5k-5k items).
    """

    epsilon: float | None = None
    delta: float | None = None
    clip_norm: float = 1.0
    noise_multiplier: float | None = None
    train_item_tower: bool = False

    def __post_init__(self) -> None:
        check_bounds(self, epsilon=Bound(0, strict=True, why="the privacy target"),
                     delta=Bound(0, 1, strict=True), clip_norm=POSITIVE,
                     noise_multiplier=Bound(0, why="0 adds no noise"))


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters; ``dp`` with an ``epsilon`` switches to user-level DP-SGD
    (:func:`common.training.dp_sgd.dp_fine_tune`).

    ``loss``: ``full_softmax`` over the whole catalogue at every position, ``sampled_softmax``
    (over ``negatives`` items drawn uniformly for each step, plus the batch's targets and
    history items: a step costs a fraction of the full softmax on a large catalogue; frozen
    text vectors and the sequence tower only, fp32), or ``in_batch`` (the paper's: a softmax
    over the batch's distinct target items only).
    With trainable text encoder layers (``model.text_layers`` > 0) they learn at ``text_lr``
    from the rows ``text_rows`` names (:class:`~common.training.item_table.ItemTable`):
    ``last`` (each user's last position), ``targets`` (every position) or ``catalogue`` (the
    loss itself re-encodes every item at every step: exact, costly); the item table is
    re-encoded without gradient every ``text_refresh_steps`` steps.
    ``interpolation_grid`` = n > 0: after training, the silo validates θ₀ + α·(θ − θ₀) for
    α = 1/n, 2/n, …, 1 and keeps the best (weight-space ensembling, WiSE-FT, Wortsman et al.
    2022); 0: off. Chosen on the silo's own validation split, like the best epoch.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    loss: Literal["full_softmax", "sampled_softmax", "in_batch"] = "full_softmax"
    negatives: int = 2048
    text_lr: float = 1e-4
    text_rows: Literal["last", "targets", "catalogue"] = "last"
    text_refresh_steps: int = 100
    weight_decay: float = 0.01
    warmup_steps: int = 50
    patience: int = 3
    val_max_users: int | None = None
    interpolation_grid: int = 0
    bf16: bool = True
    seed: int = 0
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        # negatives and interpolation_grid: checked where they apply, naming the setting's
        # place (check_loss, check_interpolation)
        check_bounds(self, epochs=AT_LEAST_1, batch_size=AT_LEAST_1, lr=POSITIVE,
                     text_lr=POSITIVE, text_refresh_steps=AT_LEAST_1,
                     weight_decay=AT_LEAST_0, warmup_steps=AT_LEAST_0, patience=AT_LEAST_1,
                     val_max_users=AT_LEAST_1)


@dataclass
class EvalConfig:
    """Evaluation protocol; recorded next to every number it produces."""

    split: Split = "test"
    ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    mask_history: bool = False
    batch_size: int = 1024
    max_users: int | None = None

    def __post_init__(self) -> None:
        check_bounds(self, ks=AT_LEAST_1, batch_size=AT_LEAST_1, max_users=AT_LEAST_1)


MAX_INTERPOLATION_GRID = 20  # each point of the grid costs the silo one validation pass


def check_interpolation(train: TrainConfig, where: str) -> None:
    """``interpolation_grid`` is a count in [0, 20], and not combined with DP-SGD (choosing α
    on the validation split after private training is not covered by the privacy accounting)."""
    if not 0 <= train.interpolation_grid <= MAX_INTERPOLATION_GRID:
        raise ValueError(f"{where}.interpolation_grid must be between 0 (off) and "
                         f"{MAX_INTERPOLATION_GRID}, got {train.interpolation_grid}")
    if train.interpolation_grid > 1 and train.dp is not None and train.dp.epsilon is not None:
        raise ValueError(f"{where}.interpolation_grid: not available with DP-SGD (dp.epsilon set)")


def check_loss(train: TrainConfig, model: ModelConfig, where: str) -> None:
    """The sampled softmax's settings: at least one negative, frozen text vectors with the
    sequence tower, no DP-SGD (which trains with the full softmax)."""
    if train.loss != "sampled_softmax":
        return
    if train.negatives < 1:
        raise ValueError(f"{where}.negatives must be at least 1, got {train.negatives}")
    if model.text_layers or model.user != "sequence":
        raise ValueError(f"{where}.loss: sampled_softmax runs over frozen text vectors with the "
                         "sequence tower (model.text_layers: 0, model.user: sequence)")
    if train.dp is not None and train.dp.epsilon is not None:
        raise ValueError(f"{where}.loss: DP-SGD trains with the full softmax; sampled_softmax "
                         "is not available with dp.epsilon")
