"""Learnable merging weights: task-wise (one per domain), layer-wise (per domain and layer
group) or tensor-wise (per domain and parameter tensor).

The merged parameters ``θ₀ + Σ_k w[g(name), k] · τ̃_k[name]`` are rebuilt by
:meth:`LearnedMerge.merged_state` once per optimisation step and then used for every forward
call of that step through ``torch.func.functional_call``. With ``residual=True`` a free
residual ``δ[name]`` (zero at the start) is added to every parameter: the merged model's weights
are then all trained, no longer confined to the span of the task vectors.
"""

from __future__ import annotations


import torch
import torch.nn as nn

from ..settings import Granularity
from .methods import MergeInit, StateDict


class LearnedMerge(nn.Module):
    """Trainable merging weights over frozen θ₀ and processed task vectors."""

    def __init__(self, base: StateDict, init: MergeInit, granularity: Granularity = "task",
                 groups: dict[str, str] | None = None,
                 device: torch.device | str = "cpu", residual: bool = False) -> None:
        super().__init__()
        if granularity == "layer" and groups is None:
            raise ValueError("layer-wise merging needs a parameter -> group mapping")
        self.names = list(base)
        self.granularity = granularity
        if granularity == "task":
            self.group_names = ["all"]
            self.group_of = {n: 0 for n in self.names}
        elif granularity == "tensor":
            self.group_names = list(self.names)
            self.group_of = {n: i for i, n in enumerate(self.names)}
        elif granularity != "layer":
            raise ValueError(f"unknown granularity '{granularity}' (task, layer or tensor)")
        else:
            assert groups is not None
            missing = [n for n in self.names if n not in groups]
            if missing:
                raise ValueError(f"no layer group for parameters {missing[:3]}")
            self.group_names = sorted(set(groups[n] for n in self.names))
            self.group_of = {n: self.group_names.index(groups[n]) for n in self.names}
        self._base = {n: base[n].detach().float().to(device) for n in self.names}
        self._stacked = {n: torch.stack([v[n].detach().float() for v in init.vectors]).to(device)
                         for n in self.names}
        w0 = torch.tensor(init.weights, dtype=torch.float32, device=device)
        self.weights = nn.Parameter(w0.repeat(len(self.group_names), 1))
        self.domains = len(init.vectors)
        self.residual = nn.ParameterList(
            nn.Parameter(torch.zeros_like(self._base[n])) for n in self.names) if residual else None

    def merged_state(self) -> StateDict:
        """Merged parameters as a function of the current weights (differentiable)."""
        out = {}
        for i, n in enumerate(self.names):
            w = self.weights[self.group_of[n]]
            out[n] = self._base[n] + torch.tensordot(w, self._stacked[n], dims=([0], [0]))
            if self.residual is not None:
                out[n] = out[n] + self.residual[i]
        return out

    def weight_table(self) -> dict[str, list[float]]:
        """Current weights as {group: [w_1..w_K]} (for reports)."""
        w = self.weights.detach()
        return {g: [float(x) for x in w[i]] for i, g in enumerate(self.group_names)}
