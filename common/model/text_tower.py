"""The text encoder's top layers as a trainable part of the recommender.

A BERT-style (post-LN) transformer layer stack over the cached token states below the split
(:class:`~common.text.token_states.TokenStates`), then mean pooling over the real tokens and
L2 normalisation, as the frozen encoder pools; then, with a catalogue centre, the centred and
re-normalised vector. Loaded with the pretrained encoder's weights, the tower reproduces the
frozen item vectors, so θ₀ ranks exactly by text similarity; fine-tuned, its weights are part
of every task vector, as in the paper (which fine-tunes the whole encoder).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..text.token_states import TokenStates

# tokens per chunk when a whole catalogue is encoded (bounds the [chunk, T, H] activations)
CHUNK_TOKENS = 32_768


class EncoderLayer(nn.Module):
    """One post-LN transformer encoder layer (BERT / MiniLM layout, exact-erf GELU)."""

    def __init__(self, dim: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"text encoder width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn_in = nn.Linear(dim, ffn)
        self.ffn_out = nn.Linear(ffn, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, H], ``mask`` [B, T] (True = real token)."""
        b, t, h = x.shape

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.heads, h // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(split(self.query), split(self.key),
                                                 split(self.value), attn_mask=mask[:, None, None, :])
        x = self.attn_norm(self.attn_out(context.transpose(1, 2).reshape(b, t, h)) + x)
        return self.ffn_norm(self.ffn_out(F.gelu(self.ffn_in(x))) + x)


class TextTower(nn.Module):
    """Top ``layers`` encoder layers + mean pooling: token states → item text vectors."""

    def __init__(self, dim: int, layers: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn, eps) for _ in range(layers))

    def pool(self, tokens: TokenStates) -> torch.Tensor:
        """L2-normalised mean-pooled outputs [N, H] for a few items (one padded batch)."""
        x, mask = tokens.padded()
        for layer in self.layers:
            x = layer(x, mask)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return F.normalize((x * weights).sum(1) / weights.sum(1).clamp(min=1.0), dim=-1)

    def forward(self, tokens: TokenStates) -> torch.Tensor:
        """Item text vectors [N, H] (centred when the catalogue has a centre); large
        catalogues go through in length-sorted chunks."""
        if len(tokens) == 0:
            return tokens.states.new_zeros(0, tokens.dim)
        groups = tokens.chunks(CHUNK_TOKENS)
        order = torch.cat(groups)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        pooled = torch.cat([self.pool(tokens[g]) for g in groups])[inverse]
        if tokens.center is None:
            return pooled
        return F.normalize(pooled - tokens.center, dim=-1)


def hf_layer_names(index: int) -> dict[str, str]:
    """Our parameter names of one :class:`EncoderLayer` → the Hugging Face BERT names of
    encoder layer ``index`` (``encoder.layer.<i>.…``)."""
    prefix = f"encoder.layer.{index}."
    pairs = {"query": "attention.self.query", "key": "attention.self.key",
             "value": "attention.self.value", "attn_out": "attention.output.dense",
             "attn_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense",
             "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
    return {f"{ours}.{p}": f"{prefix}{theirs}.{p}" for ours, theirs in pairs.items()
            for p in ("weight", "bias")}
