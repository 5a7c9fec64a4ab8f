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
from typing import Callable

import torch

from ..settings import REGISTRY, MergeConfig

StateDict = dict[str, torch.Tensor]
SMALL_TENSOR = 16


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


def _task_arithmetic(tvs: list[StateDict], cfg: MergeConfig) -> tuple[list[StateDict], dict]:
    return tvs, {}


def _ties(tvs: list[StateDict], cfg: MergeConfig) -> tuple[list[StateDict], dict]:
    large, small = _split_small(tvs)
    return _joined(_ties_vectors(large, cfg.density, cfg.scope), _ties_vectors(small, 1.0, "tensor")), \
        {"density": cfg.density, "scope": cfg.scope}


def _dare(tvs: list[StateDict], cfg: MergeConfig) -> tuple[list[StateDict], dict]:
    large, small = _split_small(tvs)
    dropped = _dare_drop(large, cfg.drop_rate, cfg.rescale, cfg.seed)
    info: dict = {"drop_rate": cfg.drop_rate, "rescale": cfg.rescale, "base": cfg.dare_base}
    if cfg.dare_base == "ties":
        info.update(density=cfg.density, scope=cfg.scope)
        return _joined(_ties_vectors(dropped, cfg.density, cfg.scope),
                       _ties_vectors(small, 1.0, "tensor")), info
    return _joined(dropped, small), info


def _pcb(tvs: list[StateDict], cfg: MergeConfig) -> tuple[list[StateDict], dict]:
    large, small = _split_small(tvs)
    return _joined(_pcb_vectors(large, cfg.density, cfg.scope), _mean_vectors(small)), \
        {"density": cfg.density, "scope": cfg.scope}


def _localize_stitch(tvs: list[StateDict], cfg: MergeConfig) -> tuple[list[StateDict], dict]:
    large, small = _split_small(tvs)
    return _joined(_localize_stitch_vectors(large, cfg.density, cfg.scope), _mean_vectors(small)), \
        {"density": cfg.density, "scope": cfg.scope}


def _joined(vectors: list[StateDict], small: list[StateDict]) -> list[StateDict]:
    return [{**v, **s} for v, s in zip(vectors, small)]


# how each registered method (:data:`common.settings.merging.REGISTRY`) turns task vectors into
# processed ones
PROCESS: dict[str, Callable[[list[StateDict], MergeConfig], tuple[list[StateDict], dict]]] = {
    "average": _task_arithmetic, "task_arithmetic": _task_arithmetic, "ties": _ties,
    "dare": _dare, "pcb": _pcb, "localize_stitch": _localize_stitch}
if set(PROCESS) != set(REGISTRY):
    raise ImportError(f"merge methods registered without an implementation: "
                      f"{sorted(set(REGISTRY) ^ set(PROCESS))}")


def build_merge(cfg: MergeConfig, base: StateDict, finetuned: list[StateDict]) -> MergeInit:
    """Processed task vectors and initial weights for ``cfg.method`` (:data:`REGISTRY`)."""
    if cfg.method not in REGISTRY:
        raise ValueError(f"unknown merge method '{cfg.method}'; choose from {list(REGISTRY)}")
    if not finetuned:
        raise ValueError("merging needs at least one fine-tuned model")
    method = REGISTRY[cfg.method]
    tvs = task_vectors(base, finetuned)
    n = len(tvs)
    if method.default_lam is None:
        return MergeInit(cfg.method, tvs, [1.0 / n] * n, {"lambda": 1.0 / n})
    lam = float(cfg.lam if cfg.lam is not None else method.default_lam)
    vectors, info = PROCESS[cfg.method](tvs, cfg)
    return MergeInit(cfg.method, vectors, [lam] * n, {"lambda": lam, **info})
