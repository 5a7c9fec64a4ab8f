"""Fused full-softmax cross-entropy over cosine logits (the fine-tuning hot path).

With autograd, a full-softmax step over a large catalogue materialises several fresh
[positions × items] arrays (logits, log-probabilities, the one-hot gradient, the
log-softmax gradient); on a CPU each costs a memory pass plus page faults on every
allocation. Here the forward pass keeps one such array, ``exp(logit - row max)``, and the
backward pass folds the softmax normalisation and the target one-hot into the two
matrix products, so the [P, N] array is only read there. A :class:`LogitsWorkspace`
recycles the array from one step to the next.
"""

from __future__ import annotations

import torch

from ..model.recommender import add_at


class LogitsWorkspace:
    """A reusable flat fp32 buffer for the [positions × items] array of
    :func:`cosine_softmax_cross_entropy`; one per training loop, freed with it.

    A loss takes the buffer in its forward pass and gives it back after its backward pass,
    so two losses alive at once never share it (the second allocates its own).
    """

    def __init__(self) -> None:
        self._free: torch.Tensor | None = None

    def take(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        buf, self._free = self._free, None
        if buf is None or buf.numel() < rows * cols or buf.device != device:
            buf = torch.empty(rows * cols, device=device)
        return buf[: rows * cols].view(rows, cols)

    def give(self, view: torch.Tensor) -> None:
        base = view._base if view._base is not None else view
        if self._free is None or base.numel() > self._free.numel():
            self._free = base


class _CosineSoftmaxCE(torch.autograd.Function):
    """Mean over rows of ``-log softmax(scale·(U Iᵀ + H·diag(β)))[row, target]`` for unit-norm
    U, I, a sparse 0/1 history H given as (row, item) pairs without duplicates, and β one
    value [1] or one per item [N]."""

    @staticmethod
    def forward(ctx, users: torch.Tensor, items: torch.Tensor, beta: torch.Tensor,  # type: ignore[override]
                rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor, scale: float,
                workspace: LogitsWorkspace | None,
                grad_items_out: torch.Tensor | None) -> torch.Tensor:
        workspace = workspace or LogitsWorkspace()
        exp = workspace.take(len(users), len(items), users.device)
        with torch.autocast(users.device.type, enabled=False):
            torch.mm(users * scale, items.T, out=exp)
        bonus = (beta * scale).expand(len(rows)) if beta.numel() == 1 else beta[cols] * scale
        add_at(exp, rows, cols, bonus)
        target_logit = exp.gather(1, targets[:, None]).squeeze(1)
        row_max = exp.amax(1)
        exp.sub_(row_max[:, None]).exp_()
        total = exp.sum(1)
        ctx.save_for_backward(users, items, rows, cols, targets, total)
        ctx.exp, ctx.scale, ctx.workspace = exp, scale, workspace
        ctx.grad_items_out = grad_items_out
        ctx.beta_items = beta.numel()
        return (total.log() + row_max - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        users, items, rows, cols, targets, total = ctx.saved_tensors
        exp, scale, workspace = ctx.exp, ctx.scale, ctx.workspace
        if exp is None:
            raise RuntimeError("cosine_softmax_cross_entropy: one backward pass per forward pass "
                               "(its buffer is recycled; retain_graph is not supported)")
        ctx.exp = ctx.workspace = None
        coef = grad * scale / len(users)
        inv_total = 1.0 / total
        need_users, need_items, need_beta = ctx.needs_input_grad[:3]
        grad_users = grad_items = grad_beta = None
        # d loss / d logits = softmax - onehot(target), softmax = exp / total (per row): the
        # normalisation and the one-hot are folded into the products, exp is only read
        with torch.autocast(users.device.type, enabled=False):
            if need_users:
                grad_users = ((exp @ items) * inv_total[:, None] - items[targets]) * coef
            if need_items:
                grad_items = torch.mm(exp.T, users * (inv_total * coef)[:, None],
                                      out=ctx.grad_items_out)
                grad_items.index_add_(0, targets, users * coef, alpha=-1.0)
        if need_beta:  # d loss / d β_i = Σ over history pairs of item i of (p - hit)
            per_pair = exp[rows, cols] * inv_total[rows] - (cols == targets[rows]).float()
            if ctx.beta_items == 1:
                grad_beta = (per_pair.sum() * coef).reshape(1)
            else:
                grad_beta = torch.zeros(ctx.beta_items, device=exp.device).index_add_(
                    0, cols, per_pair) * coef
        workspace.give(exp)
        return grad_users, grad_items, grad_beta, None, None, None, None, None, None


class _UnitNormalize(torch.autograd.Function):
    """``x / max(‖x‖, eps)`` per row, with a three-pass backward (autograd's takes about eight
    passes over the [N, D] item table)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(eps).reciprocal_()
        y = x * inv
        ctx.save_for_backward(y, inv)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        y, inv = ctx.saved_tensors
        dot = (grad.unsqueeze(-2) @ y.unsqueeze(-1)).squeeze(-1)  # row-wise <grad, y>
        return torch.addcmul(grad, y, dot, value=-1.0).mul_(inv), None


def unit_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (as ``F.normalize``; lean backward pass)."""
    return _UnitNormalize.apply(x, eps)


def cosine_softmax_cross_entropy(users: torch.Tensor, items: torch.Tensor, beta: torch.Tensor,
                                 history: tuple[torch.Tensor, torch.Tensor],
                                 targets: torch.Tensor, scale: float,
                                 workspace: LogitsWorkspace | None = None,
                                 grad_items_out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``scale · (cos(users, items) + β·history)`` against ``targets``.

    ``users`` [P, D] and ``items`` [N, D] are unit-normalised by the caller, ``beta`` has one
    element or one per item, ``history`` holds distinct (row, item) pairs. Computed in fp32; equal to
    ``F.cross_entropy`` over the dense logits up to rounding (tested), faster and leaner.
    A ``workspace`` recycles the [P, N] buffer from one step to the next; the items' gradient
    is written to ``grad_items_out`` [N, D] when given (the caller's buffer: it must outlive
    the backward pass and serve no other loss of it).
    """
    rows, cols = history
    return _CosineSoftmaxCE.apply(users.float(), items.float(), beta.float().reshape(-1),
                                  rows, cols, targets, float(scale), workspace, grad_items_out)
