"""The item table of a training step when the text encoder's top layers are trained.

Re-encoding a whole catalogue through transformer layers at every step costs far more than the
rest of a step on a CPU. So the text vectors of every item are kept in a table computed
without gradient and refreshed every few steps; at each step only the rows the step needs most
are re-encoded with gradient (each user's last target, or every target of the batch) and put
in their place. The softmax still runs over the whole catalogue, and the encoder layers learn
from the re-encoded rows, as positives and as negatives of every position.
"""

from __future__ import annotations

import torch

from ..model.recommender import ItemInputs, TextSeqRec
from .batching import TrainBatch


class ItemTable:
    """Item vectors [N, D] per domain for training steps (see the module docstring)."""

    def __init__(self, model: TextSeqRec, inputs: list[ItemInputs], rows: str,
                 refresh_steps: int) -> None:
        if rows not in ("last", "targets", "catalogue"):
            raise ValueError(f"text_rows must be 'last', 'targets' or 'catalogue', got {rows!r}")
        if refresh_steps < 1:
            raise ValueError(f"text_refresh_steps must be >= 1, got {refresh_steps}")
        self.model = model
        self.inputs = inputs
        self.rows = rows
        self.refresh_steps = refresh_steps
        self._tables: dict[int, torch.Tensor] = {}
        self._steps: dict[int, int] = {}

    def item_emb(self, batch: TrainBatch) -> torch.Tensor:
        """The item vectors for this batch's step (gradient through the re-encoded rows)."""
        model, inputs = self.model, self.inputs[batch.domain]
        if model.text_tower is None or self.rows == "catalogue":
            return model.encode_items(inputs)
        d = batch.domain
        if self._steps.get(d, 0) % self.refresh_steps == 0:
            with torch.no_grad():
                self._tables[d] = model.text_vectors(inputs)
        self._steps[d] = self._steps.get(d, 0) + 1
        if self.rows == "last":
            ids = batch.targets[torch.arange(len(batch.seqs), device=batch.seqs.device),
                                batch.lengths - 1]
        else:
            ids = batch.targets[batch.mask]
        ids = torch.unique(ids)
        text = self._tables[d].index_put((ids,), model.text_tower(inputs[ids]))  # type: ignore[index]
        return model.item_tower(text)
