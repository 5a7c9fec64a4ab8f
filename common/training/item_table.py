"""The item table of a training step when the text encoder's top layers are trained.

Re-encoding a whole catalogue through transformer layers at every step costs far more than the
rest of a step on a CPU. So the main loss (full softmax, or in-batch) runs over a table of
every item's text vectors encoded without gradient and refreshed every few steps: it trains
the item adapter and the sequence tower, as with frozen vectors (with ``history_text`` users,
the encoder layers too, through the freshly encoded user side). The encoder layers learn from
a second, in-batch term whose candidates are all re-encoded with gradient: the batch's target
items at each user's last position (``last``) or at every position (``targets``).

Mixing fresh rows into the stale table instead would let the model tell the fresh rows (the
positives) from the stale ones and learn that difference rather than the items: measured on
Beauty, validation NDCG@10 fell below the frozen backbone's.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..model.recommender import ItemInputs, TextSeqRec
from .batching import TrainBatch

InBatchLoss = Callable[..., torch.Tensor]


class ItemTable:
    """Item vectors [N, D] per domain for training steps, and the encoder layers' loss."""

    def __init__(self, model: TextSeqRec, inputs: list[ItemInputs], rows: str,
                 refresh_steps: int, in_batch: InBatchLoss) -> None:
        if rows not in ("last", "targets", "catalogue"):
            raise ValueError(f"text_rows must be 'last', 'targets' or 'catalogue', got {rows!r}")
        if refresh_steps < 1:
            raise ValueError(f"text_refresh_steps must be >= 1, got {refresh_steps}")
        self.model = model
        self.inputs = inputs
        self.rows = rows
        self.refresh_steps = refresh_steps
        self.in_batch = in_batch
        self._tables: dict[int, torch.Tensor] = {}
        self._steps: dict[int, int] = {}

    @property
    def cached(self) -> bool:
        """Whether steps use the refreshed table (trainable encoder layers, not ``catalogue``)."""
        return self.model.text_tower is not None and self.rows != "catalogue"

    def item_emb(self, batch: TrainBatch) -> torch.Tensor:
        """The item vectors of this batch's domain for the main loss."""
        model, inputs = self.model, self.inputs[batch.domain]
        if not self.cached:
            return model.encode_items(inputs)
        d = batch.domain
        if self._steps.get(d, 0) % self.refresh_steps == 0:
            with torch.no_grad():
                self._tables[d] = model.text_vectors(inputs)
        self._steps[d] = self._steps.get(d, 0) + 1
        return model.item_tower(self._tables[d])

    def encoder_loss(self, batch: TrainBatch, item_emb: torch.Tensor) -> torch.Tensor:
        """In-batch loss over freshly encoded candidates (zero when nothing is cached)."""
        if not self.cached:
            return item_emb.new_zeros(())
        positions = batch.mask
        if self.rows == "last":
            positions = torch.zeros_like(batch.mask)
            positions[torch.arange(len(batch.seqs), device=positions.device), batch.lengths - 1] = True
        inputs = self.inputs[batch.domain]
        model = self.model

        def encode(ids: torch.Tensor) -> torch.Tensor:
            return model.item_tower(model.text_tower(inputs[ids]))  # type: ignore[misc,index]

        return self.in_batch(model, item_emb, batch, positions, encode, inputs)
