"""Text-based sequential recommender: items are represented only through their text vectors.

* Text vectors ``x_i``: the frozen text encoder's item vectors, or, with ``text_layers`` > 0,
  the output of the encoder's top layers, trained with the rest
  (:class:`~common.model.text_tower.TextTower` over cached lower-layer token states).
* Item tower: ``e_i = x_i + gate · Adapter(x_i)``.
* Sequence tower: a causal transformer over the last ``max_len`` item vectors of a history;
  the user vector at position ``t`` is ``normalize(e_{s_t} + Head(h_t))``. Or, with
  ``user="history_text"``, the user vector is the item tower over the trainable encoder
  layers applied to the history's text (its items' token states one after another).
* Score: cosine(user, item) + β·[item in the history], divided by the temperature, against
  every item of the domain. The learnable scalar β lets a model demote items the user just
  interacted with (no repeats in most shops) or promote them (repeat purchases in groceries).

Every residual branch is scaled by a learnable gate that starts at zero (ReZero), and β starts
at zero, so the untrained base model
θ₀ ranks items exactly by text similarity to the last history item: a meaningful zero-shot
recommender. Because nothing is item-id specific, one set of weights serves any domain
(including unseen ones) given that domain's text vectors.

``branch_init="zero_out"`` starts the branches the other way round: output projections at
zero, gates at ``1 / fan_in`` (θ₀ scores the same). With a zero gate over a random projection
the sign of a gate's first step depends on how that random map happens to correlate with the
domain's gradient, so silos fine-tuned from one θ₀ can settle into mirrored solutions (gates of
opposite sign) whose weights cancel when merged; zero projections grow along each domain's own
gradient instead. Which merges better depends on the data (README, "Branch initialisation").
"""

from __future__ import annotations

import weakref
from typing import Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..settings import ModelConfig
from ..text.token_states import TokenStates
from .text_tower import TextTower

ItemInputs = Union[torch.Tensor, TokenStates]


def add_at(matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
           values: torch.Tensor) -> torch.Tensor:
    """``matrix[rows, cols] += values`` in place, repeated pairs summed, deterministically
    (``index_put_(accumulate=True)`` sums in a thread-dependent order on CPU, so two runs of
    one seed could differ in the last bits)."""
    flat = matrix.view(-1)  # a contiguous [R, C] matrix: element (r, c) at r * C + c
    flat.index_add_(0, rows * matrix.shape[1] + cols, values)
    return matrix


class ItemTower(nn.Module):
    """Residual adapter over frozen text vectors, gated by a zero-initialised scalar.

    A gate (rather than a zero-initialised output matrix) keeps the first optimiser steps
    small: Adam moves every entry of a zero matrix by about ``lr`` at once, which perturbs
    the text-similarity prior far more than moving one scalar does.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.text_dim, cfg.item_hidden)
        self.out = nn.Linear(cfg.item_hidden, cfg.text_dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return text + self.gate * self.out(F.gelu(self.inp(text)))


class SequenceTower(nn.Module):
    """Causal pre-LN transformer over item vectors; its head and a linear skip map of the
    item vector are residual branches with zero-initialised gates."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.text_dim, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.text_dim)
        self.skip = nn.Linear(cfg.text_dim, cfg.text_dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(2))
        self.max_len = cfg.max_len

    def forward(self, seq_emb: torch.Tensor, lengths: torch.Tensor,
                at: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """``seq_emb`` [B, L, D] left-aligned, right-padded; returns [B, L, D] per position, or
        [P, D] at the positions ``at`` (an index into [B, L]) only: the output branches then
        run on those positions alone."""
        b, length, _ = seq_emb.shape
        pos = torch.arange(length, device=seq_emb.device)
        h = self.drop(self.inp(seq_emb) + self.pos(pos)[None])
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=h.device), 1)
        for block in self.blocks:
            h = block(h, src_mask=causal)
        if at is not None:
            seq_emb, h = seq_emb[at], h[at]
        return seq_emb + self.gate[0] * self.skip(seq_emb) + self.gate[1] * self.out(self.norm(h))


class TextSeqRec(nn.Module):
    """The recommender: ``encode_items``, ``encode_sequences`` and ``score``.

    A backbone that fine-tunes its own text encoder can implement the same three methods.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.text_layers < 0:
            raise ValueError(f"text_layers must be >= 0, got {cfg.text_layers}")
        self.text_tower = TextTower(cfg.text_dim, cfg.text_layers, cfg.text_heads, cfg.text_ffn,
                                    cfg.text_eps) if cfg.text_layers else None
        self.item_tower = ItemTower(cfg)
        self.seq_tower = SequenceTower(cfg) if cfg.user == "sequence" else None
        self.history_weight = nn.Parameter(torch.zeros(1))
        if cfg.repeat_head:
            self.repeat_head = nn.Linear(cfg.text_dim, 1)
            nn.init.zeros_(self.repeat_head.weight)
            nn.init.zeros_(self.repeat_head.bias)
        if cfg.branch_init == "zero_out":
            self._zero_branch_outputs()
        elif cfg.branch_init != "rezero":
            raise ValueError(f"branch_init must be 'rezero' or 'zero_out', got {cfg.branch_init!r}")

    @torch.no_grad()
    def _zero_branch_outputs(self) -> None:
        """Zero every residual branch's output projection; gates start at ``1 / fan_in``."""
        item, seq = self.item_tower, self.seq_tower
        for layer in (item.out, *(() if seq is None else (seq.out, seq.skip))):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        item.gate.fill_(1.0 / item.out.in_features)
        if seq is not None:
            seq.gate.copy_(torch.tensor([1.0 / seq.skip.in_features, 1.0 / seq.out.in_features]))

    def forward(self, item_text: ItemInputs, seqs: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors of ``item_text``, or user vectors when ``seqs`` index into it.

        This single entry point lets ``torch.func.functional_call`` run either tower with
        merged parameters.
        """
        if seqs is None:
            return self.encode_items(item_text)
        assert lengths is not None
        # history-text users read the items' inputs, not their vectors
        item_emb = self.encode_items(item_text) if self.seq_tower is not None else None
        return self.encode_sequences(item_emb, seqs, lengths, item_text)

    def text_vectors(self, inputs: ItemInputs) -> torch.Tensor:
        """Item text vectors [N, text_dim]: token states go through the text tower; a tensor
        is taken as text vectors already (frozen ones, or the text tower's, precomputed)."""
        if isinstance(inputs, TokenStates):
            if self.text_tower is None:
                raise ValueError("token states given to a model without text encoder layers "
                                 "(text_layers = 0): give the frozen item vectors")
            return self.text_tower(inputs)
        return inputs

    def encode_items(self, inputs: ItemInputs) -> torch.Tensor:
        """Unnormalised item vectors [N, D] from text vectors or token states."""
        return self.item_tower(self.text_vectors(inputs))

    def sequence_states(self, item_emb: torch.Tensor | None, seqs: torch.Tensor,
                        lengths: torch.Tensor, at: tuple[torch.Tensor, ...] | None = None,
                        inputs: ItemInputs | None = None) -> torch.Tensor:
        """User vectors at every position [B, L, D] (zero past each length with
        ``history_text``), or [P, D] at the positions ``at``; ``seqs`` padded with any valid
        id. ``inputs``: the items' inputs ``item_emb`` came from (``history_text`` reads the
        history's token states there and needs no ``item_emb``)."""
        if self.seq_tower is not None:
            assert item_emb is not None, "the sequence tower reads the item vectors"
            return self.seq_tower(item_emb[seqs], lengths, at)
        if not isinstance(inputs, TokenStates):
            raise ValueError("model.user = history_text needs the items' token states as inputs")
        if at is None:
            real = torch.arange(seqs.shape[1], device=seqs.device)[None] < lengths[:, None]
            out = inputs.states.new_zeros(*seqs.shape, self.cfg.text_dim)
            out[real] = self.sequence_states(item_emb, seqs, lengths, real.nonzero(as_tuple=True),
                                             inputs)
            return out
        rows, pos = at[0], at[1]
        history = inputs.histories(seqs[rows], pos + 1, self.cfg.history_tokens)
        return self.item_tower(self.text_vectors(history))

    def encode_sequences(self, item_emb: torch.Tensor | None, seqs: torch.Tensor,
                         lengths: torch.Tensor, inputs: ItemInputs | None = None) -> torch.Tensor:
        """User vectors [B, D] after the last real item of each sequence."""
        last = (torch.arange(len(seqs), device=seqs.device), lengths - 1)
        return self.sequence_states(item_emb, seqs, lengths, last, inputs)

    def history_bias(self, item_emb: torch.Tensor,
                     params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """β of each item [N] (or one β [1] without the repeat head): the bonus it gets when it
        is in the history. ``params`` replaces the model's own (merged weights)."""
        p = params if params is not None else dict(self.named_parameters())
        beta = p["history_weight"]
        if self.cfg.repeat_head:
            beta = beta + F.linear(item_emb, p["repeat_head.weight"], p["repeat_head.bias"]).squeeze(-1)
        return beta

    def score(self, users: torch.Tensor, item_emb: torch.Tensor,
              history: torch.Tensor | None = None,
              history_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarity [B, N] plus β times the multi-hot ``history`` [B, N].

        ``history_weight`` overrides β (per item or one; merged weights during merge learning).
        Divide by ``cfg.temperature`` for logits.
        """
        cos = F.normalize(users, dim=-1) @ F.normalize(item_emb, dim=-1).T
        if history is None:
            return cos
        beta = self.history_bias(item_emb) if history_weight is None else history_weight
        return cos + beta * history

    def logits(self, users: torch.Tensor, item_emb: torch.Tensor,
               history: tuple[torch.Tensor, torch.Tensor], scale: float,
               items: torch.Tensor | None = None) -> torch.Tensor:
        """``scale`` times :meth:`score` [B, N], with the history given as (row, item) index
        pairs (:func:`history_index`) instead of a dense multi-hot; ``items``: the vectors the
        users are compared with when not ``item_emb`` itself (the serving space,
        :meth:`serving_space`), β still coming from ``item_emb``.

        The scale is applied to the [B, D] user side and β is added in place at the history
        entries, so no extra [B, N] temporaries are made (full-ranking evaluation; training
        computes the same logits inside :mod:`common.training.softmax_loss`).
        """
        items = F.normalize(item_emb, dim=-1) if items is None else items
        # fp32 logits also under bf16 autocast (a no-op copy otherwise)
        out = ((F.normalize(users, dim=-1) * scale) @ items.T).float()
        rows, hist_items = history
        beta = self.history_bias(item_emb)
        bonus = (beta * scale).expand(len(rows)) if beta.numel() == 1 else beta[hist_items] * scale
        return add_at(out, rows, hist_items, bonus.to(out.dtype))

    def score_sequences(self, item_emb: torch.Tensor, seqs: torch.Tensor, lengths: torch.Tensor,
                        inputs: ItemInputs | None = None) -> torch.Tensor:
        """Scores [B, N] of padded histories against all items (towers + history term), with
        the model's :class:`~common.settings.ServingConfig`; ``inputs`` as in
        :meth:`sequence_states`."""
        serving = self.cfg.serving
        if serving.history_decay > 0:
            users = recency_pool(self.sequence_states(item_emb, seqs, lengths, None, inputs),
                                 lengths, serving.history_decay)
        else:
            users = self.encode_sequences(item_emb, seqs, lengths, inputs)
        index = sequence_history_index(seqs, lengths, len(item_emb))
        if serving.whiten <= 0:
            return self.logits(users, item_emb, index, 1.0)
        transform = catalogue_whitening(item_emb, serving.whiten)
        return self.logits(transform.apply(users), item_emb, index, 1.0, transform.items)

    def layer_groups(self) -> dict[str, str]:
        """Parameter name -> layer group, used by layer-wise merging."""
        groups = {}
        for name, _ in self.named_parameters():
            if name.startswith("text_tower.layers."):
                groups[name] = "text_tower.layer" + name.split(".")[2]
            elif name.startswith("seq_tower.blocks."):
                groups[name] = "seq_tower.block" + name.split(".")[2]
            elif name.startswith(("seq_tower.out", "seq_tower.norm", "seq_tower.gate")):
                groups[name] = "seq_tower.head"
            elif name.startswith("seq_tower.skip"):
                groups[name] = "seq_tower.skip"
            elif name.startswith("seq_tower."):
                groups[name] = "seq_tower.input"
            else:
                groups[name] = name.split(".")[0]
        return groups


def build_base_model(cfg: ModelConfig, seed: int = 0,
                     text_state: dict[str, torch.Tensor] | None = None) -> TextSeqRec:
    """The pretrained base θ₀: deterministic under ``seed`` (bit-identical across silos).

    With ``text_layers`` > 0, ``text_state`` holds the pretrained weights of the encoder's
    top layers (:meth:`common.text.HFEncoder.layer_state`)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = TextSeqRec(cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    if model.text_tower is not None:
        if text_state is None:
            raise ValueError("θ₀ with text encoder layers needs their pretrained weights")
        model.text_tower.load_state_dict(text_state)
    return model


def recency_pool(states: torch.Tensor, lengths: torch.Tensor, decay: float) -> torch.Tensor:
    """[B, D]: the unit user vectors of every real position [B, L, D] averaged with weight
    ``decay``^k for the one k positions before the last."""
    pos = torch.arange(states.shape[1], device=states.device)[None]
    back = (lengths[:, None] - 1 - pos).clamp(min=0).to(states.dtype)
    weight = torch.where(pos < lengths[:, None], decay ** back, torch.zeros_like(back))
    return (weight[..., None] * F.normalize(states, dim=-1)).sum(1)


class Whitening:
    """A catalogue's partial whitening (:class:`~common.settings.ServingConfig`): the map
    ``z ↦ (z − μ) W`` and the catalogue's items in that space, unit length."""

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, items: torch.Tensor) -> None:
        self.mean, self.matrix, self.items = mean, matrix, items

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.mean) @ self.matrix


_LAST_WHITENING: list[tuple] = []  # (weak reference to the item tensor, its version, strength, Whitening)


@torch.no_grad()
def catalogue_whitening(item_emb: torch.Tensor, strength: float) -> Whitening:
    """The partial whitening of ``item_emb``'s catalogue, computed from the covariance of its
    item vectors (eigenvalues floored at 1e-6 of the largest, so that directions the catalogue
    does not use are not blown up). The last one is kept for the next batch of the same
    tensor, unchanged, at the same strength."""
    last = _LAST_WHITENING[0] if _LAST_WHITENING else None
    if last is not None and last[0]() is item_emb and last[1:3] == (item_emb._version, strength):
        return last[3]
    e = item_emb.detach().float()
    mean = e.mean(0)
    centred = e - mean
    eigval, eigvec = torch.linalg.eigh(centred.T @ centred / max(1, len(e) - 1))
    eigval = eigval.clamp(min=float(eigval.max()) * 1e-6)
    matrix = (eigvec * (eigval / eigval.mean()) ** (-strength / 2)) @ eigvec.T
    out = Whitening(mean, matrix, F.normalize(centred @ matrix, dim=-1))
    _LAST_WHITENING[:] = [(weakref.ref(item_emb), item_emb._version, strength, out)]
    return out


def pad_sequences(seqs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the last ``max_len`` items of each sequence; left-align and pad with item 0."""
    cut = [s[-max_len:] for s in seqs]
    lengths = np.array([len(s) for s in cut], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError("empty history: every sequence needs at least one item")
    out = np.zeros((len(cut), int(lengths.max())), dtype=np.int64)
    out[np.arange(out.shape[1])[None] < lengths[:, None]] = np.concatenate(cut)
    return torch.from_numpy(out), torch.from_numpy(lengths)


def history_index(rows: torch.Tensor, items: torch.Tensor, num_items: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct (row, item) pairs: a sparse multi-hot (an item repeated in a history counts
    once)."""
    key = torch.unique(rows * num_items + items)
    return key // num_items, key % num_items


def sequence_history_index(seqs: torch.Tensor, lengths: torch.Tensor, num_items: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse multi-hot of each (padded) history: distinct (row, item) pairs."""
    real = torch.arange(seqs.shape[1], device=seqs.device)[None] < lengths[:, None]
    rows = torch.arange(len(seqs), device=seqs.device)[:, None].expand_as(seqs)
    return history_index(rows[real], seqs[real], num_items)


def history_multi_hot(seqs: torch.Tensor, lengths: torch.Tensor, num_items: int) -> torch.Tensor:
    """[B, N] with 1 at every item of each (padded) history."""
    out = torch.zeros(len(seqs), num_items, device=seqs.device)
    out[sequence_history_index(seqs, lengths, num_items)] = 1.0
    return out


def position_history_index(seqs: torch.Tensor, mask: torch.Tensor, num_items: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse multi-hot of the prefix ``seqs[b, :t+1]`` for every real position (b, t): pairs
    (row among the real positions in row-major order, item)."""
    b, length = seqs.shape
    dev = seqs.device
    row_of = torch.full((b, length), -1, dtype=torch.long, device=dev)
    row_of[mask] = torch.arange(int(mask.sum()), device=dev)
    tri = torch.tril(torch.ones(length, length, dtype=torch.bool, device=dev))
    bi, ti, si = (mask[:, :, None] & tri[None]).nonzero(as_tuple=True)
    return history_index(row_of[bi, ti], seqs[bi, si], num_items)


def prefix_histories(seqs: torch.Tensor, lengths: torch.Tensor, num_items: int) -> torch.Tensor:
    """Dense [B, L, N] multi-hot of the prefix ``seqs[b, :t+1]`` at every position, zero rows
    past each length (fixed shapes, so it also runs under ``torch.func.vmap``)."""
    b, length = seqs.shape
    pos = torch.arange(length, device=seqs.device)
    real = pos[None] < lengths[:, None]
    within = (pos[:, None] >= pos[None, :])[None] & real[:, :, None] & real[:, None, :]
    index = seqs[:, None, :].expand(b, length, length)
    zeros = torch.zeros(b, length, num_items, device=seqs.device)
    return zeros.scatter_reduce(2, index, within.float(), reduce="amax")


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (identifies θ₀)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> TextSeqRec:
    """A model in eval mode with the given weights (architecture from ``cfg``). Weights that
    do not fit ``cfg`` raise ``ValueError`` before the model's memory is allocated."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in TextSeqRec(cfg).state_dict().items()}
    if want != {k: tuple(v.shape) for k, v in state.items()}:
        raise ValueError("the weights do not fit the model configuration (names or shapes differ)")
    model = TextSeqRec(cfg)
    model.load_state_dict(state)
    return model.eval()
