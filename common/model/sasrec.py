"""SASRec (Kang & McAuley, ICDM 2018): the ID-based "train alone" reference of a silo.

Each item has its own learned embedding, so the model cannot serve another catalogue and cannot
be merged across domains; it is what a silo would train on its own data without the federation.
Configured as the field's standard full-softmax variant (cross-entropy over every item at every
position, as in RecBole's ``loss_type: CE``): a causal pre-LN transformer over item embeddings,
positional embeddings, dropout, scores = dot product with the (shared) item embedding table.
"""

from __future__ import annotations


import torch
import torch.nn as nn

from ..settings import SASRecConfig


class SASRec(nn.Module):
    """Item-ID sequential recommender over one catalogue of ``num_items`` items."""

    def __init__(self, cfg: SASRecConfig, num_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(num_items, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def sequence_states(self, seqs: torch.Tensor, at: tuple[torch.Tensor, ...] | None = None
                        ) -> torch.Tensor:
        """User states [B, L, H] for left-aligned, right-padded ``seqs`` (padding comes after
        the real items, so causal attention never sees it), or [P, H] at the positions ``at``."""
        length = seqs.shape[1]
        h = self.items(seqs) * self.cfg.hidden ** 0.5 + self.pos(torch.arange(length,
                                                                              device=seqs.device))
        h = self.drop(h)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seqs.device), 1)
        for block in self.blocks:
            h = block(h, src_mask=causal)
        h = self.norm(h)
        return h if at is None else h[at]

    def score_sequences(self, seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores [B, N] of every item after the last real item of each history."""
        last = (torch.arange(len(seqs), device=seqs.device), lengths - 1)
        return self.sequence_states(seqs, last) @ self.items.weight.T
