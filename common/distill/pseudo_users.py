"""Pseudo-users built from an item catalogue only (never from interactions)."""

from __future__ import annotations

from typing import Callable

import torch

from ..settings import PseudoUserConfig

ScoreFn = Callable[[list[list[int]]], torch.Tensor]


def kmeans_nearest(features: torch.Tensor, k: int, seed: int, iters: int = 25) -> list[int]:
    """Indices of the items nearest to ``k`` k-means centroids (cosine, k-means++ start)."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    gen = torch.Generator().manual_seed(seed)
    centroids = [int(torch.randint(len(x), (1,), generator=gen))]
    dist = 1 - x @ x[centroids[0]]
    for _ in range(1, k):
        probs = dist.clamp(min=0) ** 2
        nxt = int(torch.multinomial(probs / probs.sum(), 1, generator=gen)) if probs.sum() > 0 \
            else int(torch.randint(len(x), (1,), generator=gen))
        centroids.append(nxt)
        dist = torch.minimum(dist, 1 - x @ x[nxt])
    c = x[centroids].clone()
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = torch.nn.functional.normalize(members.mean(0), dim=0)
    sims = x @ c.T
    chosen: list[int] = []
    taken: set[int] = set()
    for j in range(k):
        for idx in sims[:, j].argsort(descending=True).tolist():
            if idx not in taken:
                chosen.append(idx)
                taken.add(idx)
                break
    return chosen


def select_items(features: torch.Tensor, cfg: PseudoUserConfig) -> list[int]:
    """Starting items per ``cfg.sample``."""
    n = len(features)
    if cfg.sample == "all" or cfg.num is None or cfg.num >= n:
        return list(range(n))
    if cfg.num <= 0:
        raise ValueError(f"number of pseudo-users must be positive, got {cfg.num}")
    if cfg.sample == "random":
        gen = torch.Generator().manual_seed(cfg.seed)
        return sorted(torch.randperm(n, generator=gen)[: cfg.num].tolist())
    if cfg.sample == "centroid":
        return kmeans_nearest(features, cfg.num, cfg.seed)
    raise ValueError(f"unknown pseudo-user sampling '{cfg.sample}'")


def extend_walks(seqs: list[list[int]], scores: torch.Tensor) -> list[list[int]]:
    """Append to each sequence its top-scored item (``scores``: a teacher's full rows
    ``[len(seqs), num_items]``) that is not already in it."""
    scores = scores.float().clone()
    out = []
    for r, s in enumerate(seqs):
        scores[r, torch.tensor(s, dtype=torch.long)] = float("-inf")
        out.append(s + [int(scores[r].argmax())])
    return out


def build_pseudo_users(features: torch.Tensor, cfg: PseudoUserConfig,
                       score: ScoreFn | None = None) -> list[list[int]]:
    """Pseudo-user histories (item indices) for one domain."""
    seqs = [[i] for i in select_items(features, cfg)]
    if cfg.kind == "one_item":
        return seqs
    if cfg.kind != "walk":
        raise ValueError(f"unknown pseudo-user kind '{cfg.kind}'")
    if score is None:
        raise ValueError("walk pseudo-users need a scorer (the silo's teacher)")
    for _ in range(cfg.walk_length - 1):
        seqs = extend_walks(seqs, score(seqs))
    return seqs
