"""Length-bucketed next-item training batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.recommender import pad_sequences


@dataclass
class TrainBatch:
    """Padded inputs, per-position targets and which positions are real."""

    domain: int
    seqs: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device) -> "TrainBatch":
        return TrainBatch(self.domain, self.seqs.to(device), self.lengths.to(device),
                          self.targets.to(device), self.mask.to(device))


def training_sequences(train: list[list[int]], max_len: int) -> list[list[int]]:
    """Each user's last ``max_len + 1`` training items (inputs + shifted targets), len >= 2."""
    return [s[-(max_len + 1):] for s in train if len(s) >= 2]


def make_batch(domain: int, seqs: list[list[int]], max_len: int) -> TrainBatch:
    """Inputs are ``s[:-1]``, the target at position t is ``s[t+1]``."""
    inputs, lengths = pad_sequences([s[:-1] for s in seqs], max_len)
    targets = torch.zeros_like(inputs)
    for r, s in enumerate(seqs):
        tail = s[1:][-max_len:]
        targets[r, : len(tail)] = torch.tensor(tail, dtype=torch.long)
    mask = torch.arange(inputs.shape[1])[None] < lengths[:, None]
    return TrainBatch(domain, inputs, lengths, targets, mask)


def bucketed_batches(per_domain: list[list[list[int]]], batch_size: int, max_len: int,
                     generator: torch.Generator) -> list[TrainBatch]:
    """One epoch of batches: sequences of similar length together, batch order shuffled.

    Each batch holds sequences of one domain only (its targets index that domain's items).
    """
    batches: list[TrainBatch] = []
    for d, seqs in enumerate(per_domain):
        jitter = torch.rand(len(seqs), generator=generator).tolist()
        order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), jitter[i]))
        for start in range(0, len(order), batch_size):
            chunk = [seqs[i] for i in order[start:start + batch_size]]
            batches.append(make_batch(d, chunk, max_len))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]
