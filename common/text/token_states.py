"""A catalogue's token states at the input of the text encoder's top layers.

The lower layers of the encoder are frozen, so each item's token states below the split are
computed once per catalogue (and cached); the trainable top layers then cost a fraction of the
full encoder per step. Items are packed without padding: ``states`` holds every item's tokens
one after another, ``offsets[i]:offsets[i+1]`` are item ``i``'s rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenStates:
    """Packed token states [tokens, H] of N items, and the catalogue's centre.

    ``center`` [H] is the catalogue mean of the pretrained encoder's pooled, L2-normalised item
    vectors (the same centring as the frozen-vector backbone's), or ``None`` for no centring.
    Indexing with a tensor of item ids gives the sub-catalogue of those items (same centre).
    """

    states: torch.Tensor
    offsets: torch.Tensor
    center: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.states.ndim != 2 or self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise ValueError("token states must be [tokens, H] with offsets [N + 1]")
        if int(self.offsets[-1]) != len(self.states) or bool((self.offsets.diff() <= 0).any()):
            raise ValueError("token-state offsets must rise strictly and end at the token count")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.states.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets.diff()

    def __getitem__(self, items: torch.Tensor) -> "TokenStates":
        items = torch.as_tensor(items, dtype=torch.long, device=self.offsets.device).reshape(-1)
        starts, lengths = self.offsets[items], self.lengths[items]
        first = torch.cumsum(lengths, 0) - lengths
        rows = torch.repeat_interleave(starts - first, lengths) + torch.arange(
            int(lengths.sum()), device=lengths.device)
        offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        return TokenStates(self.states[rows], offsets, self.center)

    def histories(self, seqs: torch.Tensor, lengths: torch.Tensor, max_tokens: int
                  ) -> "TokenStates":
        """One entry per row of ``seqs`` [P, L]: the token states of its first ``lengths[p]``
        items one after another (oldest first), cut to the last ``max_tokens`` tokens."""
        if max_tokens < 1:
            raise ValueError(f"history_tokens must be >= 1, got {max_tokens}")
        real = torch.arange(seqs.shape[1], device=seqs.device)[None] < lengths[:, None]
        ids = seqs[real]  # row-major: each row's items in order
        row_of_item = torch.arange(len(seqs), device=seqs.device).repeat_interleave(lengths)
        # items whose last token lies within the last max_tokens (the rest is never gathered)
        to_end = _to_row_end(self.lengths[ids], row_of_item, len(seqs))[1]
        needed = to_end - self.lengths[ids] < max_tokens
        items, rows = self[ids[needed]], row_of_item[needed]
        per_row = _to_row_end(items.lengths, rows, len(seqs))[0]
        row_of_token = torch.arange(len(seqs), device=seqs.device).repeat_interleave(per_row)
        from_end = _to_row_end(torch.ones_like(row_of_token), row_of_token, len(seqs))[1]
        kept = per_row.clamp(max=max_tokens)
        offsets = torch.cat([kept.new_zeros(1), torch.cumsum(kept, 0)])
        return TokenStates(items.states[from_end <= max_tokens], offsets, self.center)

    def to(self, device: torch.device | str) -> "TokenStates":
        return TokenStates(self.states.to(device), self.offsets.to(device),
                           None if self.center is None else self.center.to(device))

    def float(self) -> "TokenStates":
        return TokenStates(self.states.float(), self.offsets,
                           None if self.center is None else self.center.float())

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded states [N, T, H] and the mask [N, T] of real tokens."""
        lengths = self.lengths
        mask = torch.arange(int(lengths.max()), device=lengths.device)[None] < lengths[:, None]
        out = self.states.new_zeros(len(self), mask.shape[1], self.dim)
        out[mask] = self.states
        return out, mask

    def chunks(self, max_tokens: int) -> list[torch.Tensor]:
        """Item ids in length order, cut into groups whose padded size stays near
        ``max_tokens`` (similar lengths together: little padding)."""
        lengths = self.lengths
        order = torch.argsort(lengths, stable=True)
        groups, start = [], 0
        sorted_len = lengths[order].tolist()
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * sorted_len[end] <= max_tokens:
                end += 1
            groups.append(order[start:end])
            start = end
        return groups


def _to_row_end(sizes: torch.Tensor, rows: torch.Tensor, num_rows: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """For elements of ``sizes`` grouped in rows (``rows`` non-decreasing): each row's total
    [num_rows] and, per element, the size from its start to its row's end (itself included)."""
    total = torch.zeros(num_rows, dtype=sizes.dtype, device=sizes.device).index_add_(0, rows, sizes)
    before = torch.cumsum(sizes, 0) - sizes - (torch.cumsum(total, 0) - total)[rows]
    return total, total[rows] - before
