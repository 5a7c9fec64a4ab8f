"""Teacher signals: a (silo's) fine-tuned model's cosine scores for pseudo-user sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.recommender import ItemInputs, TextSeqRec, pad_sequences
from ..runtime import on_device


@dataclass
class TeacherSignal:
    """Scores for P pseudo-users: full rows ``[P, N]`` or top-k ``scores``/``indices`` [P, k]."""

    scores: torch.Tensor
    num_items: int
    indices: torch.Tensor | None = None

    def top1(self) -> torch.Tensor:
        """The teacher's top item per pseudo-user (the pseudo label)."""
        if self.indices is not None:
            return self.indices[:, 0]
        return self.scores.argmax(1)

    def to(self, device: torch.device) -> "TeacherSignal":
        return TeacherSignal(self.scores.to(device), self.num_items,
                             None if self.indices is None else self.indices.to(device))

    def rows(self, idx: torch.Tensor) -> "TeacherSignal":
        return TeacherSignal(self.scores[idx], self.num_items,
                             None if self.indices is None else self.indices[idx])

    def validate(self, num_users: int) -> None:
        """Shape, dtype and range checks (a malformed answer raises ``ValueError``)."""
        if self.scores.dtype != torch.float32 or self.scores.shape[0] != num_users:
            raise ValueError(f"teacher scores must be float32 with {num_users} rows, "
                             f"got {self.scores.dtype} {tuple(self.scores.shape)}")
        if not torch.isfinite(self.scores).all():
            raise ValueError("teacher scores contain non-finite values")
        if self.indices is None:
            if self.scores.shape[1] != self.num_items:
                raise ValueError(f"full teacher rows need {self.num_items} columns")
        elif (self.indices.shape != self.scores.shape or self.indices.min() < 0
              or self.indices.max() >= self.num_items):
            raise ValueError("teacher top-k indices have the wrong shape or are out of range")


@torch.no_grad()
def teacher_scores(model: TextSeqRec, features: ItemInputs, seqs: list[list[int]],
                   topk: int | None = None, batch_size: int = 1024) -> TeacherSignal:
    """Cosine scores of ``model`` for ``seqs`` against all items (eval mode, fp32)."""
    with on_device(model, eval_mode=True) as device:
        inputs = features.float().to(device)
        item_emb = model.encode_items(inputs)
        rows, idx_rows = [], []
        for start in range(0, len(seqs), batch_size):
            padded, lengths = pad_sequences(seqs[start:start + batch_size], model.cfg.max_len)
            s = model.score_sequences(item_emb, padded.to(device), lengths.to(device), inputs)
            if topk is not None:
                top = torch.topk(s, min(topk, s.shape[1]), dim=1)
                rows.append(top.values.cpu())
                idx_rows.append(top.indices.cpu())
            else:
                rows.append(s.cpu())
    n = len(features)
    if topk is None:
        return TeacherSignal(torch.cat(rows).float(), n)
    return TeacherSignal(torch.cat(rows).float(), n, torch.cat(idx_rows))
