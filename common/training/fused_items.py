"""The item side of a full-softmax training step over frozen text vectors, fused.

Every step runs the item adapter over the whole catalogue, normalises its output and reads
each item's history bonus from it (the repeat head). Through autograd that takes about ten
element-wise passes over [items × D] arrays per step (profiled on Sports), most of them into
freshly allocated memory, and on a CPU a fresh catalogue-sized array is paid again in page
faults. Here one
autograd function computes the unit-norm item vectors and the repeat head's projection into
buffers reused from step to step; its backward pass folds the normalisation, the repeat head
and the gate into one buffer updated in place, then runs the adapter's matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.recommender import TextSeqRec


class Buffers:
    """Named fp32 buffers reused from one training step to the next (one set per loop)."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """A [rows, cols] view of buffer ``name`` (grown when too small); its content is
        whatever the last user left there."""
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < rows * cols or buf.device != device:
            buf = self._bufs[name] = torch.empty(rows * cols, device=device)
        return buf[: rows * cols].view(rows, cols)


class _FusedItems(torch.autograd.Function):
    """``(n, p)``: ``e = x + g·(W2 gelu(W1 x + b1) + b2)`` per row of ``x``, ``n = e / ‖e‖``
    and ``p = e · r`` (the repeat head's projection, shape [0] without one)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,  # type: ignore[override]
                w2: torch.Tensor, b2: torch.Tensor, gate: torch.Tensor, r: torch.Tensor | None,
                buffers: Buffers, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        rows, dim = x.shape
        a = torch.addmm(b1, x, w1.T)
        h = F.gelu(a)
        o = torch.addmm(b2, h, w2.T, out=buffers.get("out", rows, dim, x.device))
        g = float(gate)
        n = torch.add(x, o, alpha=g, out=buffers.get("items", rows, dim, x.device))
        p = n @ r if r is not None else x.new_zeros(0)
        inv = torch.linalg.vector_norm(n, dim=1, keepdim=True).clamp_min_(eps).reciprocal_()
        n.mul_(inv)
        ctx.save_for_backward(x, w1, w2, r, a, h, inv, n, o)
        ctx.g, ctx.buffers = g, buffers
        return n, p

    @staticmethod
    def backward(ctx, grad_n: torch.Tensor, grad_p: torch.Tensor):  # type: ignore[override]
        x, w1, w2, r, a, h, inv, n, o = ctx.saved_tensors
        g = ctx.g
        # d/de of n = e/‖e‖: (grad − n <grad, n>) / ‖e‖; of p = e·r: grad_p rᵀ
        dot = torch.bmm(grad_n.unsqueeze(1), n.unsqueeze(2)).view(-1, 1)
        grad_e = torch.addcmul(grad_n, n, dot, value=-1.0,
                               out=ctx.buffers.get("grad", *n.shape, n.device)).mul_(inv)
        grad_r = None
        if r is not None:
            grad_e.addr_(grad_p, r)
            grad_r = n.T @ (grad_p / inv.view(-1))  # e = n ‖e‖
        grad_gate = torch.dot(grad_e.view(-1), o.view(-1)).reshape(1)
        grad_w2 = (grad_e.T @ h).mul_(g)
        grad_b2 = grad_e.sum(0).mul_(g)
        grad_a = torch.ops.aten.gelu_backward((grad_e @ w2).mul_(g), a)
        grad_w1 = grad_a.T @ x
        grad_b1 = grad_a.sum(0)
        return None, grad_w1, grad_b1, grad_w2, grad_b2, grad_gate, grad_r, None, None


def fused_item_side(model: TextSeqRec, text: torch.Tensor, buffers: Buffers,
                    eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm item vectors [N, D] and each item's history bonus β ([N] with the repeat
    head, else [1]) of ``model`` (frozen text vectors ``text``, fp32), equal to
    ``unit_normalize(model.encode_items(text))`` and ``model.history_bias(...)`` up to
    rounding (tested). The vectors live in ``buffers``: valid until the next call."""
    tower = model.item_tower
    head = model.repeat_head if model.cfg.repeat_head else None
    r = head.weight.view(-1) if head is not None else None
    items, proj = _FusedItems.apply(text, tower.inp.weight, tower.inp.bias, tower.out.weight,
                                    tower.out.bias, tower.gate, r, buffers, eps)
    beta = model.history_weight
    if head is not None:
        beta = beta + proj + head.bias
    return items, beta
