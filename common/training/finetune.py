"""Local fine-tuning: full- or sampled-softmax next-item cross-entropy, early stopping on
validation NDCG@10."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.domain import Domain
from ..evaluation.evaluate import EvalConfig, evaluate_model
from ..model.recommender import ItemInputs, TextSeqRec, position_history_index, prefix_histories
from ..runtime import autocast_bf16, bf16_enabled, on_device, reproducible, show_progress
from ..settings import TrainConfig
from ..settings.training import check_loss
from .batching import TrainBatch, bucketed_batches, training_sequences
from .fused_items import Buffers, fused_item_side
from .item_table import ItemTable
from .softmax_loss import LogitsWorkspace, cosine_softmax_cross_entropy, unit_normalize

log = logging.getLogger("mergerec.train")  # one line per epoch: long trainings say where they are


@dataclass
class TrainResult:
    """Best weights (by validation NDCG@10) and the training log."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_ndcg10: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    privacy: dict[str, float] = field(default_factory=dict)
    alpha: float = 1.0  # the kept weights: θ₀ + alpha·(trained − θ₀)


def next_item_loss(model: TextSeqRec, item_emb: torch.Tensor, batch: TrainBatch,
                   workspace: LogitsWorkspace | None = None,
                   inputs: ItemInputs | None = None) -> torch.Tensor:
    """Full-softmax cross-entropy at every real position of the batch (fp32 logits, fused:
    :func:`~common.training.softmax_loss.cosine_softmax_cross_entropy`); ``inputs``: the
    items' inputs (:meth:`~common.model.TextSeqRec.sequence_states`)."""
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths,
                                   batch.mask.nonzero(as_tuple=True), inputs)
    return _softmax_over_items(model, states, unit_normalize(item_emb),
                               model.history_bias(item_emb), batch, workspace)


def fused_next_item_loss(model: TextSeqRec, text: torch.Tensor, batch: TrainBatch,
                         workspace: LogitsWorkspace, buffers: Buffers,
                         negatives: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`next_item_loss` for frozen text vectors ``text`` and the sequence tower, with the
    catalogue side fused (:func:`~common.training.fused_items.fused_item_side`): the history's
    item vectors come from the adapter over the history's own rows, so no gradient flows back
    through a catalogue-sized array but the softmax's. Equal up to rounding (tested).

    ``negatives`` (item indices drawn for this step): a sampled softmax instead, over those
    items, the batch's targets and its history items only (the history bonus then applies
    as in the full softmax); the catalogue side runs over those rows only."""
    assert model.seq_tower is not None and model.text_tower is None
    states = model.seq_tower(model.item_tower(text[batch.seqs]), batch.lengths,
                             batch.mask.nonzero(as_tuple=True))
    slot = None
    if negatives is not None:
        candidates = torch.unique(torch.cat([negatives, batch.seqs[batch.mask],
                                             batch.targets[batch.mask]]))
        slot = torch.full((len(text),), -1, dtype=torch.long, device=text.device)
        slot[candidates] = torch.arange(len(candidates), device=text.device)
        text = text[candidates]
    items, beta = fused_item_side(model, text, buffers)
    return _softmax_over_items(model, states, items, beta, batch, workspace,
                               buffers.get("items_grad", *items.shape, items.device), slot)


def _softmax_over_items(model: TextSeqRec, states: torch.Tensor, items: torch.Tensor,
                        beta: torch.Tensor, batch: TrainBatch, workspace: LogitsWorkspace | None,
                        grad_items_out: torch.Tensor | None = None,
                        slot: torch.Tensor | None = None) -> torch.Tensor:
    """The fused softmax cross-entropy of the batch's real positions, given the user states
    and the unit-norm item vectors with their history bonus β; ``slot`` maps each catalogue
    item to its row of ``items`` when those are a subset (-1: absent), else the rows are the
    catalogue."""
    rows, cols = position_history_index(batch.seqs, batch.mask,
                                        len(items) if slot is None else len(slot))
    targets = batch.targets[batch.mask]
    if slot is not None:
        cols, targets = slot[cols], slot[targets]
    return cosine_softmax_cross_entropy(unit_normalize(states), items, beta, (rows, cols),
                                        targets, 1.0 / model.cfg.temperature,
                                        workspace, grad_items_out)


def in_batch_loss(model: TextSeqRec, item_emb: torch.Tensor, batch: TrainBatch,
                  positions: torch.Tensor | None = None,
                  encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  inputs: ItemInputs | None = None) -> torch.Tensor:
    """Cross-entropy over the batch's distinct target items only (temperature-scaled cosine
    + β at the candidates in the position's history), at the ``positions`` mask (default:
    every real position). ``encode(ids)`` gives the candidates' item vectors (default: rows
    of ``item_emb``, which also feeds the user side)."""
    positions = batch.mask if positions is None else positions
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths,
                                   positions.nonzero(as_tuple=True), inputs)
    candidates, labels = torch.unique(batch.targets[positions], return_inverse=True)
    slot = torch.full((len(item_emb),), -1, dtype=torch.long, device=item_emb.device)
    slot[candidates] = torch.arange(len(candidates), device=item_emb.device)
    rows, items = position_history_index(batch.seqs, positions, len(item_emb))
    hit = slot[items] >= 0
    history = states.new_zeros(len(states), len(candidates))
    history[rows[hit], slot[items[hit]]] = 1.0
    cand = item_emb[candidates] if encode is None else encode(candidates)
    logits = model.score(states, cand, history) / model.cfg.temperature
    return F.cross_entropy(logits.float(), labels)


def user_losses(model: TextSeqRec, item_emb: torch.Tensor, batch: TrainBatch,
                inputs: ItemInputs | None = None) -> torch.Tensor:
    """Per user of the batch [B]: mean next-item cross-entropy over its real positions.

    Fixed shapes (dense prefix histories, masked mean), so it runs under ``torch.func.vmap``
    for per-user gradients (DP-SGD, sequence tower only) as well as batched (membership
    attack); ``inputs`` as in :meth:`~common.model.TextSeqRec.sequence_states`.
    """
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths, None, inputs)
    history = prefix_histories(batch.seqs, batch.lengths, len(item_emb))
    logits = model.score(states, item_emb, history) / model.cfg.temperature
    losses = F.cross_entropy(logits.float().transpose(1, 2), batch.targets, reduction="none")
    mask = batch.mask.float()
    return (losses * mask).sum(1) / mask.sum(1)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class Schedule:
    """The optimiser, schedule and early stopping of a training loop."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    patience: int
    seed: int


def train_epochs(model: torch.nn.Module, per_domain: list[list[list[int]]], max_len: int,
                 step_loss: Callable[[TrainBatch], torch.Tensor], validate: Callable[[], float],
                 sched_cfg: Schedule, device: torch.device, desc: str,
                 lr_of: dict[str, float] | None = None) -> TrainResult:
    """AdamW with linear warm-up over length-bucketed batches; every epoch ends with
    ``validate()`` (higher is better); training stops after ``patience`` epochs without
    improvement and the best weights are restored. ``model`` is already on ``device``;
    ``lr_of`` gives the parameters under a name prefix their own learning rate."""
    cfg = sched_cfg
    reproducible(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, lr_of or {}), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
    start = time.perf_counter()
    best_val, best_epoch = validate(), 0
    best_state = cpu_state(model)
    history = [{"epoch": 0, "loss": float("nan"), "val_ndcg@10": best_val}]
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, disable=not show_progress(), leave=False)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for batch in bucketed_batches(per_domain, cfg.batch_size, max_len, gen):
            batch = batch.to(device)
            loss = step_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n = int(batch.mask.sum())
            total, count = total + loss.item() * n, count + n
        val = validate()
        history.append({"epoch": epoch, "loss": total / max(1, count), "val_ndcg@10": val})
        bar.set_postfix(loss=f"{total / max(1, count):.3f}", val=f"{val:.4f}")
        spent = time.perf_counter() - start
        log.info("%s: epoch %d/%d, loss %.4f, val NDCG@10 %.4f, %.0f s so far, at most %.0f s "
                 "to go", desc, epoch, cfg.epochs, total / max(1, count), val, spent,
                 spent / epoch * (cfg.epochs - epoch))
        if val > best_val:
            best_val, best_epoch = val, epoch
            best_state = cpu_state(model)
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return TrainResult(best_state, best_epoch, best_val, history, time.perf_counter() - start)


def fine_tune(model: TextSeqRec, domains: list[Domain], features: list[ItemInputs],
              cfg: TrainConfig) -> TrainResult:
    """Train ``model`` in place on one domain (a silo) or several pooled (joint training).

    Every epoch ends with a validation pass (mean NDCG@10 over ``domains``); training stops
    after ``cfg.patience`` epochs without improvement and the best weights are restored.
    """
    max_len = model.cfg.max_len
    per_domain = [training_sequences(d.train, max_len) for d in domains]
    if cfg.loss not in ("full_softmax", "sampled_softmax", "in_batch"):
        raise ValueError("train.loss must be 'full_softmax', 'sampled_softmax' or 'in_batch', "
                         f"got {cfg.loss!r}")
    check_loss(cfg, model.cfg, "train")
    with on_device(model) as device:
        val_cfg = EvalConfig(split="val", ks=(10,), max_users=cfg.val_max_users)
        feats = [f.float().to(device) for f in features]
        workspace, buffers = LogitsWorkspace(), Buffers()
        table = ItemTable(model, feats, cfg.text_rows, cfg.text_refresh_steps, in_batch_loss)
        fused = model.text_tower is None and model.seq_tower is not None and (
            cfg.loss == "sampled_softmax"
            or (cfg.loss == "full_softmax" and not bf16_enabled(device, cfg.bf16)))
        draws = torch.Generator().manual_seed(cfg.seed + 1)  # the sampled softmax's negatives

        def negatives(num_items: int) -> torch.Tensor | None:
            if cfg.loss != "sampled_softmax" or cfg.negatives >= num_items:
                return None
            return torch.randint(num_items, (cfg.negatives,), generator=draws).to(device)

        def validate() -> float:
            scores = [evaluate_model(model, d, f, val_cfg).metrics["ndcg@10"]
                      for d, f in zip(domains, feats)]
            return sum(scores) / len(scores)

        def step_loss(batch: TrainBatch) -> torch.Tensor:
            if fused:
                text = feats[batch.domain]
                return fused_next_item_loss(model, text, batch, workspace, buffers,
                                            negatives(len(text)))
            with autocast_bf16(device, cfg.bf16):
                item_emb, inputs = table.item_emb(batch), feats[batch.domain]
                if cfg.loss == "in_batch":
                    loss = in_batch_loss(model, item_emb, batch, inputs=inputs)
                else:
                    loss = next_item_loss(model, item_emb, batch, workspace, inputs)
                return loss + table.encoder_loss(batch, item_emb)

        base = cpu_state(model) if cfg.interpolation_grid > 1 else {}  # θ₀, only when used
        result = train_epochs(model, per_domain, max_len, step_loss, validate, schedule_of(cfg),
                              device, f"fine-tune {'+'.join(d.name for d in domains)}",
                              {"text_tower.": cfg.text_lr})
        return interpolate_toward_base(model, base, result, cfg.interpolation_grid, validate)


def interpolate_toward_base(model: torch.nn.Module, base: dict[str, torch.Tensor],
                            result: TrainResult, grid: int,
                            validate: Callable[[], float]) -> TrainResult:
    """WiSE-FT: validate ``base + α·(trained − base)`` for α = 1/grid, …, (grid−1)/grid and
    keep the best of those and the trained weights (α = 1); ``grid`` ≤ 1: the result as is.
    The model ends with the kept weights; the time spent is added to the result's."""
    if grid <= 1:
        return result
    start = time.perf_counter()
    trained, best = result.state_dict, result
    for step in range(1, grid):
        alpha = step / grid
        state = {k: base[k] + alpha * (v - base[k]) if v.is_floating_point() else v
                 for k, v in trained.items()}
        model.load_state_dict(state)
        val = validate()
        if val > best.best_val_ndcg10:
            best = replace(result, state_dict=state, best_val_ndcg10=val, alpha=alpha)
    model.load_state_dict(best.state_dict)
    return replace(best, seconds=result.seconds + time.perf_counter() - start)


def param_groups(model: torch.nn.Module, lr: float, lr_of: dict[str, float]) -> list[dict]:
    """Optimiser parameter groups: parameters named under a prefix of ``lr_of`` at its
    learning rate, the rest at ``lr`` (empty groups left out)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        rate = next((r for prefix, r in lr_of.items() if name.startswith(prefix)), lr)
        groups.setdefault(rate, []).append(p)
    return [{"params": ps, "lr": rate} for rate, ps in groups.items()]


def schedule_of(cfg: TrainConfig) -> Schedule:
    """The loop settings of a fine-tuning config."""
    return Schedule(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                    cfg.patience, cfg.seed)
