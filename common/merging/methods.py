"""Training-free merge methods over state dicts.

Every method turns the task vectors ``τ_k = θ_k − θ₀`` into processed task vectors ``τ̃_k``
plus one initial weight per domain, so that the merged model is always

    θ(w) = θ₀ + Σ_k w_k · τ̃_k

This single form is what learned merging optimises (``w`` per domain, or per domain and
layer group). Masks that select "the top fraction" of entries (TIES, PCB, Localize-and-Stitch)
are computed per tensor (``scope="tensor"``, mergekit's convention) or over the whole
flattened model (``scope="model"``, the official MergeRec code's convention).

Tensors with fewer than ``SMALL_TENSOR`` entries (residual gates, scalars) are never sparsified:
dropping or trimming a gate switches a whole branch off, and quantiles of one entry are
meaningless. DARE keeps them, TIES gives them the sign-elected disjoint mean without trimming,
PCB and Localize-and-Stitch their plain mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

StateDict = dict[str, torch.Tensor]
SMALL_TENSOR = 16


@dataclass
class MergeConfig:
    """Which merge to build and its hyper-parameters; ``name`` tells two variants of one
    method apart in a run."""

    method: str = "task_arithmetic"
    lam: float | None = None
    density: float = 0.2
    drop_rate: float = 0.9
    rescale: bool = True
    dare_base: Literal["task_arithmetic", "ties"] = "task_arithmetic"
    scope: Literal["tensor", "model"] = "tensor"
    seed: int = 0
    name: str | None = None

    @property
    def label(self) -> str:
        """The merge's row in the results: its ``name``, or the method's name."""
        return self.name or self.method.replace("_", " ")


@dataclass
class MergeInit:
    """Processed task vectors and their initial per-domain weights."""

    method: str
    vectors: list[StateDict]
    weights: list[float]
    info: dict[str, object] = field(default_factory=dict)

    def merged(self, base: StateDict, weights: list[float] | None = None) -> StateDict:
        """θ₀ + Σ_k w_k τ̃_k with the given (or initial) weights."""
        w = self.weights if weights is None else weights
        out = {}
        for name, theta in base.items():
            delta = sum(wk * tv[name] for wk, tv in zip(w, self.vectors))
            out[name] = theta + delta
        return out


def task_vectors(base: StateDict, finetuned: list[StateDict]) -> list[StateDict]:
    """τ_k = θ_k − θ₀ for every fine-tuned model (keys and shapes must match θ₀)."""
    out = []
    for k, sd in enumerate(finetuned):
        if set(sd) != set(base):
            missing, extra = sorted(set(base) - set(sd)), sorted(set(sd) - set(base))
            raise ValueError(f"model {k}: keys differ from the base (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        tv = {}
        for name, theta in base.items():
            if sd[name].shape != theta.shape:
                raise ValueError(f"model {k}: {name} has shape {tuple(sd[name].shape)}, "
                                 f"base has {tuple(theta.shape)}")
            tv[name] = sd[name].float() - theta.float()
        out.append(tv)
    return out


def _split_small(tvs: list[StateDict]) -> tuple[list[StateDict], list[StateDict]]:
    """(large tensors, small tensors) of every task vector."""
    small = {n for n, t in tvs[0].items() if t.numel() < SMALL_TENSOR}
    return ([{n: t for n, t in tv.items() if n not in small} for tv in tvs],
            [{n: t for n, t in tv.items() if n in small} for tv in tvs])


def _mean_vectors(tvs: list[StateDict]) -> list[StateDict]:
    return [{n: t / len(tvs) for n, t in tv.items()} for tv in tvs]


def _map_scope(tv: StateDict, scope: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> StateDict:
    """Apply ``fn`` (1-D tensor -> same-size 1-D tensor) per tensor or over the whole model."""
    if scope == "tensor":
        return {n: fn(t.flatten()).view_as(t) for n, t in tv.items()}
    if scope != "model":
        raise ValueError(f"unknown scope '{scope}' (use 'tensor' or 'model')")
    names = list(tv)
    flat = fn(torch.cat([tv[n].flatten() for n in names]))
    out, offset = {}, 0
    for n in names:
        size = tv[n].numel()
        out[n] = flat[offset:offset + size].view_as(tv[n])
        offset += size
    return out


def topk_mask(x: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ``ceil(density * n)`` entries of largest magnitude."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    k = max(1, math.ceil(density * x.numel()))
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[torch.topk(x.abs().flatten(), k, sorted=False).indices] = True
    return mask.view_as(x)


def _combine(vectors: list[StateDict], fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]
             ) -> list[StateDict]:
    """Apply an element-wise cross-task function tensor by tensor."""
    out: list[StateDict] = [{} for _ in vectors]
    for name in vectors[0]:
        for k, t in enumerate(fn([tv[name] for tv in vectors])):
            out[k][name] = t
    return out


def _ties_vectors(tvs: list[StateDict], density: float, scope: str) -> list[StateDict]:
    trimmed = [_map_scope(tv, scope, lambda x: x * topk_mask(x, density)) for tv in tvs]

    def elect(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(ts)
        sign = torch.sign(stacked.sum(0))
        sign[sign == 0] = 1.0
        agree = (torch.sign(stacked) == sign) & (stacked != 0)
        count = agree.sum(0).clamp(min=1)
        return list(stacked * agree / count)

    return _combine(trimmed, elect)


def _dare_drop(tvs: list[StateDict], p: float, rescale: bool, seed: int) -> list[StateDict]:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    scale = 1.0 / (1.0 - p) if rescale else 1.0
    out = []
    for tv in tvs:
        out.append({n: t * (torch.rand(t.shape, generator=gen) >= p) * scale for n, t in tv.items()})
    return out


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    k = min(x.numel(), max(1, round(q * (x.numel() - 1)) + 1))
    return x.flatten().kthvalue(k).values


def _pcb_vectors(tvs: list[StateDict], density: float, scope: str) -> list[StateDict]:
    n_tasks = len(tvs)

    def clamp(x: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        return torch.sign(x) * a.clamp(_quantile(a, 0.01), _quantile(a, 0.99))

    def intra(x: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        lo, hi = a.min(), a.max()
        return torch.exp(n_tasks * ((a - lo) / (hi - lo).clamp(min=1e-12)) ** 2)

    def sparsify(x: torch.Tensor) -> torch.Tensor:
        floor = _quantile(x, 1.0 - density)
        x = torch.maximum(x, floor)
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo).clamp(min=1e-12)

    clamped = [_map_scope(tv, scope, clamp) for tv in tvs]
    intra_b = [_map_scope(c, scope, intra) for c in clamped]
    total = {n: sum(tv[n] for tv in tvs) for n in tvs[0]}
    scores = [{n: intra_b[k][n] * torch.tanh(tvs[k][n] * total[n]) for n in total}
              for k in range(n_tasks)]
    masks = [_map_scope(s, scope, sparsify) for s in scores]
    norm = {n: sum(m[n] for m in masks).clamp(min=1e-12) for n in total}
    return [{n: clamped[k][n] * masks[k][n] / norm[n] for n in total} for k in range(n_tasks)]


def _localize_stitch_vectors(tvs: list[StateDict], density: float, scope: str) -> list[StateDict]:
    masks = [_map_scope(tv, scope, lambda x: topk_mask(x, density).float()) for tv in tvs]
    count = {n: sum(m[n] for m in masks).clamp(min=1.0) for n in tvs[0]}
    return [{n: tv[n] * masks[k][n] / count[n] for n in tv} for k, tv in enumerate(tvs)]


METHODS = ("average", "task_arithmetic", "ties", "dare", "pcb", "localize_stitch")
DEFAULT_LAMBDA = {"average": None, "task_arithmetic": 0.3, "ties": 1.0, "dare": 0.3, "pcb": 1.0,
                  "localize_stitch": 1.0}


def build_merge(cfg: MergeConfig, base: StateDict, finetuned: list[StateDict]) -> MergeInit:
    """Processed task vectors and initial weights for ``cfg.method``."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown merge method '{cfg.method}'; choose from {list(METHODS)}")
    if not finetuned:
        raise ValueError("merging needs at least one fine-tuned model")
    tvs = task_vectors(base, finetuned)
    n = len(tvs)
    lam = cfg.lam if cfg.lam is not None else DEFAULT_LAMBDA[cfg.method]
    info: dict[str, object] = {"lambda": lam}
    if cfg.method == "average":
        return MergeInit("average", tvs, [1.0 / n] * n, {"lambda": 1.0 / n})
    if cfg.method == "task_arithmetic":
        return MergeInit(cfg.method, tvs, [float(lam)] * n, info)  # type: ignore[arg-type]
    large, small = _split_small(tvs)
    if cfg.method == "ties":
        vectors = _ties_vectors(large, cfg.density, cfg.scope)
        small_vectors = _ties_vectors(small, 1.0, "tensor")
    elif cfg.method == "dare":
        dropped = _dare_drop(large, cfg.drop_rate, cfg.rescale, cfg.seed)
        if cfg.dare_base == "ties":
            vectors = _ties_vectors(dropped, cfg.density, cfg.scope)
            small_vectors = _ties_vectors(small, 1.0, "tensor")
        else:
            vectors, small_vectors = dropped, small
        info.update(drop_rate=cfg.drop_rate, rescale=cfg.rescale, base=cfg.dare_base)
    elif cfg.method == "pcb":
        vectors, small_vectors = _pcb_vectors(large, cfg.density, cfg.scope), _mean_vectors(small)
    else:
        vectors = _localize_stitch_vectors(large, cfg.density, cfg.scope)
        small_vectors = _mean_vectors(small)
    if cfg.method != "dare" or cfg.dare_base == "ties":
        info.update(density=cfg.density, scope=cfg.scope)
    merged = [{**v, **s} for v, s in zip(vectors, small_vectors)]
    return MergeInit(cfg.method, merged, [float(lam)] * n, info)  # type: ignore[arg-type]
