"""Losses for learning merging weights from teacher signals.

``z`` are the student's cosine scores [B, N] against the domain's items; the teacher is a
:class:`TeacherSignal` (cosine scores, full rows or top-k).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..settings import LossConfig
from .teacher import TeacherSignal


def rec_loss(z: torch.Tensor, teacher: TeacherSignal, temperature: float) -> torch.Tensor:
    """Cross-entropy on the teacher's top item (pseudo label)."""
    return F.cross_entropy(z / temperature, teacher.top1())


def kd_loss(z: torch.Tensor, teacher: TeacherSignal, temperature: float) -> torch.Tensor:
    """τ² · KL(teacher ‖ student) at temperature τ, averaged over rows.

    With a top-k teacher the teacher distribution lives on its k items (softmax over them)
    and the student's full-catalogue log-probabilities are read at those items.
    """
    log_q = F.log_softmax(z / temperature, dim=1)
    if teacher.indices is not None:
        log_q = log_q.gather(1, teacher.indices)
    log_p = F.log_softmax(teacher.scores / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    return temperature ** 2 * kl.mean()


def entropy_loss(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of the student's own prediction (AdaMerging; needs no teacher)."""
    log_q = F.log_softmax(z / temperature, dim=1)
    return -(log_q.exp() * log_q).sum(1).mean()


def mse_loss(z: torch.Tensor, teacher: TeacherSignal) -> torch.Tensor:
    """Mean squared error between student and teacher cosine scores."""
    zz = z.gather(1, teacher.indices) if teacher.indices is not None else z
    return F.mse_loss(zz, teacher.scores)


def merge_loss(z: torch.Tensor, teacher: TeacherSignal | None, cfg: LossConfig
               ) -> dict[str, torch.Tensor]:
    """Every active term and their weighted sum under key ``total``."""
    terms: dict[str, torch.Tensor] = {}
    if cfg.needs_teacher and teacher is None:
        raise ValueError("rec/kd/mse loss terms need a teacher signal")
    if cfg.rec_weight:
        terms["rec"] = rec_loss(z, teacher, cfg.rec_temperature)  # type: ignore[arg-type]
    if cfg.kd_weight:
        terms["kd"] = kd_loss(z, teacher, cfg.temperature)  # type: ignore[arg-type]
    if cfg.entropy_weight:
        terms["entropy"] = entropy_loss(z, cfg.temperature)
    if cfg.mse_weight:
        terms["mse"] = mse_loss(z, teacher)  # type: ignore[arg-type]
    if not terms:
        raise ValueError("all loss weights are zero")
    weights = {"rec": cfg.rec_weight, "kd": cfg.kd_weight, "entropy": cfg.entropy_weight,
               "mse": cfg.mse_weight}
    terms["total"] = sum(weights[k] * v for k, v in terms.items())  # type: ignore[assignment]
    return terms
