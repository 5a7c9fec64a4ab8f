"""Checks on everything a silo sends before the coordinator uses it."""

from __future__ import annotations

import torch

from ..model import state_hash

StateDict = dict[str, torch.Tensor]


def check_update(state: StateDict, base: StateDict, claimed_base_hash: str) -> list[str]:
    """Problems of a fine-tuned state dict against θ₀ (empty list: the update is usable).

    Same keys, shapes and dtypes as θ₀, finite values, and trained from this θ₀ (the silo
    reports the hash of the θ₀ it received).
    """
    problems = []
    if claimed_base_hash != state_hash(base):
        problems.append(f"trained from θ₀ {claimed_base_hash[:12] or '<none>'}, "
                        f"not from this run's θ₀ {state_hash(base)[:12]}")
    missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
    if missing:
        problems.append(f"missing tensors {missing[:5]}")
    if extra:
        problems.append(f"unexpected tensors {extra[:5]}")
    for name in sorted(set(base) & set(state)):
        got, want = state[name], base[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(f"{name}: {got.dtype} {tuple(got.shape)} instead of "
                            f"{want.dtype} {tuple(want.shape)}")
        elif got.is_floating_point() and not torch.isfinite(got).all():
            problems.append(f"{name}: non-finite values")
    return problems


def check_vectors(vectors: torch.Tensor | None, dim: int) -> list[str]:
    """Problems of a silo's frozen item vectors."""
    if vectors is None:
        return ["no item vectors"]
    if vectors.dtype != torch.float32 or vectors.ndim != 2 or vectors.shape[1] != dim \
            or len(vectors) == 0:
        return [f"item vectors must be float32 [items, {dim}], got {vectors.dtype} "
                f"{tuple(vectors.shape)}"]
    if not torch.isfinite(vectors).all():
        return ["item vectors contain non-finite values"]
    return []


def task_vector_norm(state: StateDict, base: StateDict) -> float:
    """L2 norm of θ_k − θ₀ over every tensor."""
    return float(torch.sqrt(sum(((state[k].float() - base[k].float()) ** 2).sum()
                                for k in base)))


def median_of_others(norms: dict[str, float], name: str, floor: float) -> float | None:
    """The median of the other silos' norms, at least ``floor`` (``None``: no other silo).
    A robust scale: one silo cannot move the median it is compared with."""
    others = sorted(v for n, v in norms.items() if n != name)
    if not others:
        return None
    mid = len(others) // 2
    return max(floor, others[mid] if len(others) % 2 else (others[mid - 1] + others[mid]) / 2)


def norm_outliers(norms: dict[str, float], limit: float, floor: float) -> dict[str, str]:
    """Silos whose task-vector norm exceeds ``limit`` times the median of the other silos',
    with the reason. Medians below ``floor`` count as ``floor`` (silos that barely moved make
    no scale)."""
    out = {}
    for name, norm in norms.items():
        median = median_of_others(norms, name, floor)
        if median is None:
            continue
        if norm > limit * median:
            out[name] = (f"task-vector norm {norm:.3g} is {norm / median:.1f}x the median of "
                         f"the other silos' ({median:.3g}; limit {limit:g}x)")
    return out


def clip_task_vectors(states: dict[str, StateDict], base: StateDict, norms: dict[str, float],
                      factor: float | None, floor: float) -> tuple[dict[str, StateDict],
                                                                  dict[str, float]]:
    """The states with every task vector scaled down to at most ``factor`` times the median of
    the other silos' norms (robust norm bounding), and the scale applied to each shortened one."""
    if factor is None:
        return dict(states), {}
    out, scales = {}, {}
    for name, state in states.items():
        median = median_of_others(norms, name, floor)
        scale = 1.0 if median is None or norms[name] <= factor * median else \
            factor * median / norms[name]
        if scale < 1.0:
            scales[name] = scale
            state = {k: base[k] + scale * (v - base[k]) for k, v in state.items()}
        out[name] = state
    return out, scales


def non_finite(state: StateDict) -> list[str]:
    """Names of the tensors holding NaN or infinite values."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
