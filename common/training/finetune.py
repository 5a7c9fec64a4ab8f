"""Local fine-tuning: full-softmax next-item cross-entropy with early stopping on val NDCG@10."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.domain import Domain
from ..evaluation.evaluate import EvalConfig, evaluate_model
from ..model.recommender import TextSeqRec, position_history_index, prefix_histories
from ..privacy.accountant import DPConfig
from ..runtime import autocast_bf16, on_device
from .batching import TrainBatch, bucketed_batches, training_sequences
from .softmax_loss import LogitsWorkspace, cosine_softmax_cross_entropy, unit_normalize


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters; ``dp`` with an ``epsilon`` switches to user-level DP-SGD
    (:func:`common.training.dp_sgd.dp_fine_tune`)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    patience: int = 3
    val_max_users: int | None = None
    bf16: bool = True
    seed: int = 0
    progress: bool = True
    dp: DPConfig | None = None


@dataclass
class TrainResult:
    """Best weights (by validation NDCG@10) and the training log."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_ndcg10: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    privacy: dict[str, float] = field(default_factory=dict)


def next_item_loss(model: TextSeqRec, item_emb: torch.Tensor, batch: TrainBatch,
                   workspace: LogitsWorkspace | None = None) -> torch.Tensor:
    """Full-softmax cross-entropy at every real position of the batch (fp32 logits, fused:
    :func:`~common.training.softmax_loss.cosine_softmax_cross_entropy`)."""
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths,
                                   batch.mask.nonzero(as_tuple=True))
    history = position_history_index(batch.seqs, batch.mask, len(item_emb))
    return cosine_softmax_cross_entropy(
        unit_normalize(states), unit_normalize(item_emb), model.history_weight,
        history, batch.targets[batch.mask], 1.0 / model.cfg.temperature, workspace)


def user_losses(model: TextSeqRec, item_emb: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
    """Per user of the batch [B]: mean next-item cross-entropy over its real positions.

    Fixed shapes (dense prefix histories, masked mean), so it runs under ``torch.func.vmap``
    for per-user gradients (DP-SGD) as well as batched (membership attack).
    """
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths)
    history = prefix_histories(batch.seqs, batch.lengths, len(item_emb))
    logits = model.score(states, item_emb, history) / model.cfg.temperature
    losses = F.cross_entropy(logits.float().transpose(1, 2), batch.targets, reduction="none")
    mask = batch.mask.float()
    return (losses * mask).sum(1) / mask.sum(1)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fine_tune(model: TextSeqRec, domains: list[Domain], features: list[torch.Tensor],
              cfg: TrainConfig) -> TrainResult:
    """Train ``model`` in place on one domain (a silo) or several pooled (joint training).

    Every epoch ends with a validation pass (mean NDCG@10 over ``domains``); training stops
    after ``cfg.patience`` epochs without improvement and the best weights are restored.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    max_len = model.cfg.max_len
    per_domain = [training_sequences(d.train, max_len) for d in domains]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
    with on_device(model) as device:
        val_cfg = EvalConfig(split="val", ks=(10,), max_users=cfg.val_max_users)
        feats = [f.float().to(device) for f in features]

        def validate() -> float:
            scores = [evaluate_model(model, d, f, val_cfg).metrics["ndcg@10"]
                      for d, f in zip(domains, feats)]
            return sum(scores) / len(scores)

        start = time.perf_counter()
        best_val, best_epoch = validate(), 0
        best_state = cpu_state(model)
        history = [{"epoch": 0, "loss": float("nan"), "val_ndcg@10": best_val}]
        workspace = LogitsWorkspace()
        bar = tqdm(range(1, cfg.epochs + 1), desc=f"fine-tune {'+'.join(d.name for d in domains)}",
                   disable=not cfg.progress, leave=False)
        for epoch in bar:
            model.train()
            total, count = 0.0, 0
            for batch in bucketed_batches(per_domain, cfg.batch_size, max_len, gen):
                batch = batch.to(device)
                with autocast_bf16(device, cfg.bf16):
                    item_emb = model.encode_items(feats[batch.domain])
                    loss = next_item_loss(model, item_emb, batch, workspace)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                n = int(batch.mask.sum())
                total, count = total + loss.item() * n, count + n
            val = validate()
            history.append({"epoch": epoch, "loss": total / max(1, count), "val_ndcg@10": val})
            bar.set_postfix(loss=f"{total / max(1, count):.3f}", val=f"{val:.4f}")
            if val > best_val:
                best_val, best_epoch = val, epoch
                best_state = cpu_state(model)
            elif epoch - best_epoch >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return TrainResult(best_state, best_epoch, best_val, history, time.perf_counter() - start)
