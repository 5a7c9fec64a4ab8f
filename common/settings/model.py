"""Architectures: the text-based recommender and the ID-based SASRec reference."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from .bounds import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bound, check_bounds

MAX_WHITEN = 0.9  # whitening strength at which the catalogue's weakest directions still stay bounded
MAX_HISTORY_DECAY = 0.95


@dataclass
class ServingConfig:
    """How a model scores a catalogue beyond its weights: catalogue-level settings that need no
    training and no user data, only the catalogue it is serving (zero: off, as the model was
    trained).

    ``whiten`` = p in [0, 0.9]: user and item vectors are compared in the catalogue's partially
    whitened space, ``(z − μ) V Λ^(−p/2) Vᵀ`` with μ, V, Λ the mean, eigenvectors and
    eigenvalues of the covariance of the catalogue's item vectors (p = 0: plain cosine; 1 would
    be full whitening). A text encoder's vectors crowd into a few directions that every item
    shares; whitening spreads a catalogue's items over the directions that tell them apart.
    ``history_decay`` = d in [0, 0.95]: the user vector is the recency-weighted mean of the
    model's (unit-length) user vectors after each history item, the one k items back weighted
    d^k (0: the vector after the last item only)."""

    whiten: float = 0.0
    history_decay: float = 0.0

    def __post_init__(self) -> None:
        for name, top in (("whiten", MAX_WHITEN), ("history_decay", MAX_HISTORY_DECAY)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value <= top:  # NaN fails too
                raise ValueError(f"serving.{name} must be a number in [0, {top}], got {value!r}")

    @property
    def active(self) -> bool:
        return self.whiten > 0 or self.history_decay > 0


@dataclass
class ModelConfig:
    """Architecture of the recommender. ``repeat_head``: the bonus of an item already in the
    history is β + a linear function of the item's vector (zero at θ₀) instead of one β for
    every item, so a repeat-purchase shop and a no-repeat shop need not pull one shared
    number in opposite directions when their models are merged. ``text_dim`` comes from the
    text encoder;
    ``text_layers`` > 0 makes that many of the encoder's top layers part of the model
    (``text_heads``, ``text_ffn``, ``text_eps``: their shape, also from the encoder).
    ``user``: the user vector comes from the ``sequence`` tower over the history's item vectors,
    or (``history_text``, needs ``text_layers`` > 0) from the trainable encoder layers over the
    history's text, its items' token states one after another, the last ``history_tokens``
    kept (Recformer's user = the encoder over the history's text); the model then has no
    sequence tower. ``serving``: how it scores a catalogue (:class:`ServingConfig`; not part of
    what the model is: the same weights serve with any of them)."""

    text_dim: int = 384
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.1
    item_hidden: int = 256
    temperature: float = 0.05
    branch_init: Literal["rezero", "zero_out"] = "rezero"
    repeat_head: bool = False
    text_layers: int = 0
    text_heads: int = 12
    text_ffn: int = 1536
    text_eps: float = 1e-12
    user: Literal["sequence", "history_text"] = "sequence"
    history_tokens: int = 256
    serving: ServingConfig = field(default_factory=ServingConfig)

    def __post_init__(self) -> None:
        check_bounds(self, text_dim=AT_LEAST_1, hidden=AT_LEAST_1, layers=AT_LEAST_0,
                     heads=AT_LEAST_1, max_len=AT_LEAST_1, dropout=Bound(0, 0.99),
                     item_hidden=AT_LEAST_1, temperature=POSITIVE, text_layers=AT_LEAST_0,
                     text_heads=AT_LEAST_1, text_ffn=AT_LEAST_1, text_eps=POSITIVE)
        if self.user not in ("sequence", "history_text"):
            raise ValueError(f"model.user must be 'sequence' or 'history_text', got {self.user!r}")
        if self.user == "history_text" and self.text_layers <= 0:
            raise ValueError("model.user = history_text encodes the history's text with the "
                             "trainable encoder layers: set model.text_layers > 0")
        if self.history_tokens < 1:
            raise ValueError(f"model.history_tokens must be >= 1, got {self.history_tokens}")

    def identity(self) -> dict:
        """The settings that make a model what it is (what checkpoints are keyed by): every
        field but ``serving``, less the history-text ones for a sequence-tower model (they do not act on it,
        so a checkpoint made before they existed keeps its key)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "serving"}
        if self.user == "sequence":
            del out["user"], out["history_tokens"]
        return out


@dataclass
class SASRecConfig:
    """Architecture and training of the ID baseline (defaults: the usual Amazon settings)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.5
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    val_max_users: int | None = None
    seed: int = 0
