"""Ranking metrics for one held-out target per user."""

from __future__ import annotations

import math

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, inplace: bool = False
                 ) -> torch.Tensor:
    """0-based rank of each target in its row of ``scores`` [B, N].

    Ties are broken by item index (a lower index ranks first), the same order a stable
    ``topk`` would give, so a model cannot gain from tied scores. ``inplace`` lets it
    overwrite ``scores`` (float32) instead of working on a copy.
    """
    n = scores.shape[1]
    t = scores.gather(1, targets[:, None])
    if scores.dtype != torch.float32 or n >= 2 ** 24:  # counts below must be exact in fp32
        return _target_ranks_by_comparison(scores, t, targets)
    # sign(score - target) in {-1, 0, 1}: two BLAS reductions give #above - #below and
    # #above + #below, four passes over [B, N] instead of two bool -> int casts and sums
    diff = scores if inplace else scores.clone()
    diff.sub_(t)
    if not torch.isfinite(t).all():  # -inf - (-inf) is a tie, not NaN
        diff.nan_to_num_(nan=0.0)
    diff.sign_()
    net = (diff @ torch.ones(n, 1, device=diff.device)).squeeze(1)
    nonzero = (diff.unsqueeze(1) @ diff.unsqueeze(2)).reshape(-1)
    ranks = ((net + nonzero) / 2).round().long()
    tied = (nonzero < n - 1).nonzero().flatten()  # rare: another item ties with the target
    return _break_ties(ranks, tied, diff[tied] == 0, targets)


def _target_ranks_by_comparison(scores: torch.Tensor, t: torch.Tensor,
                                targets: torch.Tensor) -> torch.Tensor:
    """:func:`target_ranks` by direct comparisons (any dtype and catalogue size)."""
    tied = ((scores == t).sum(1) > 1).nonzero().flatten()
    return _break_ties((scores > t).sum(1), tied, scores[tied] == t[tied], targets)


def _break_ties(ranks: torch.Tensor, tied: torch.Tensor, equal: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    """Add to ``ranks`` of the rows ``tied`` the items that tie with the target (``equal``,
    [len(tied), N]) and have a lower index."""
    if len(tied):
        idx = torch.arange(equal.shape[1], device=equal.device)[None]
        ranks[tied] += (equal & (idx < targets[tied, None])).sum(1)
    return ranks


def metrics_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@K (hit rate) and NDCG@K = 1/log2(rank+2) for rank < K, averaged over users."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    n = max(1, len(ranks))
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.sum()) / n
        gains = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = float(gains.sum()) / n
    out["mrr"] = float((1.0 / (ranks + 1.0)).sum()) / n
    return out


def ndcg_single(rank: int, k: int) -> float:
    """NDCG@k of a single target at 0-based ``rank`` (for documentation and tests)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
