"""User-level DP-SGD fine-tuning of one silo's model (one user = one privacy unit).

Every user contributes one training row (its last ``max_len + 1`` items, next-item targets at
every position), so clipping each row's gradient bounds each user's influence. Users are
Poisson-sampled with rate ``batch_size / users``; per-user gradients (``torch.func.vmap`` over
the sampled users, loss averaged over each user's positions) are clipped to ``clip_norm``,
summed, and Gaussian noise with standard deviation ``noise_multiplier · clip_norm`` is added
before dividing by the expected batch size. AdamW then post-processes the noisy gradient. By
default only the sequence tower and β are trained; the item tower stays at θ₀ (see
:class:`common.privacy.DPConfig`), and trainable text encoder layers always do (their
per-user gradients would re-encode the catalogue once per user). There is no early stopping: choosing an epoch by
validation on private data would spend privacy outside the accountant; the final weights are
kept and ε is what the PLD accountant reports for the steps actually taken.
"""

from __future__ import annotations

import time

import torch
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from ..data.domain import Domain
from ..evaluation.evaluate import EvalConfig, evaluate_model
from ..model.recommender import ItemInputs, TextSeqRec
from .accountant import calibrate_noise, dp_epsilon
from ..runtime import on_device, reproducible, show_progress
from .batching import TrainBatch, make_batch, training_sequences
from .finetune import TrainConfig, TrainResult, cpu_state, user_losses

# Users whose per-user gradients are computed together: bounds the [users, L, N] logits.
_LOGIT_ELEMENTS_PER_CHUNK = {"cpu": 50_000_000, "cuda": 400_000_000}


class _UserLoss(torch.nn.Module):
    """``model``'s loss for one user (unbatched row) as a function of its parameters."""

    def __init__(self, model: TextSeqRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, seqs: torch.Tensor, lengths: torch.Tensor,
                targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        one = TrainBatch(0, seqs[None], lengths[None], targets[None], mask[None])
        return user_losses(self.model, self.model.encode_items(feats), one)[0]


def clipped_gradient_sum(model: TextSeqRec, feats: torch.Tensor, batch: TrainBatch,
                         clip_norm: float) -> tuple[dict[str, torch.Tensor], int]:
    """Σ_u clip(∇ loss_u, clip_norm) over the users of ``batch`` (per-user gradients with
    ``torch.func.vmap``, in chunks) and how many of them were clipped."""
    wrapper = _UserLoss(model)
    params = {k: v.detach() for k, v in wrapper.named_parameters() if v.requires_grad}
    per_user = vmap(grad(lambda p, *row: functional_call(wrapper, p, (feats, *row))),
                    in_dims=(None, 0, 0, 0, 0), randomness="different")
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    clipped = 0
    budget = _LOGIT_ELEMENTS_PER_CHUNK.get(feats.device.type, _LOGIT_ELEMENTS_PER_CHUNK["cpu"])
    chunk = max(1, budget // (batch.seqs.shape[1] * len(feats)))
    for start in range(0, len(batch.seqs), chunk):
        part = slice(start, start + chunk)
        with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no vmap rule
            grads = per_user(params, batch.seqs[part], batch.lengths[part],
                             batch.targets[part], batch.mask[part])
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        scale = (clip_norm / (norms + 1e-12)).clamp(max=1.0)
        clipped += int((scale < 1.0).sum())
        for k, g in grads.items():
            total[k] += torch.tensordot(scale, g, dims=([0], [0]))
    return {k.removeprefix("model."): v for k, v in total.items()}, clipped


def dp_fine_tune(model: TextSeqRec, domain: Domain, features: ItemInputs, cfg: TrainConfig
                 ) -> TrainResult:
    """Train ``model`` in place with user-level DP-SGD; ``cfg.dp.epsilon`` is the target."""
    dp = cfg.dp
    if dp is None or dp.epsilon is None:
        raise ValueError("dp_fine_tune needs cfg.dp.epsilon")
    if model.seq_tower is None:
        raise ValueError("DP-SGD clips per-user gradients of the sequence tower: it does not "
                         "run with model.user = history_text")
    rows = training_sequences(domain.train, model.cfg.max_len)
    n = len(rows)
    if n == 0:
        raise ValueError(f"{domain.name}: no user with two or more training items")
    q = min(1.0, cfg.batch_size / n)
    steps = cfg.epochs * max(1, round(1 / q))
    delta = dp.delta if dp.delta is not None else 1.0 / domain.num_users
    sigma = dp.noise_multiplier if dp.noise_multiplier is not None else \
        calibrate_noise(dp.epsilon, q, steps, delta)
    reproducible(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # sampling and noise: same on every device
    try:
        with on_device(model) as device:
            if not dp.train_item_tower:
                model.item_tower.requires_grad_(False)
            feats = features.float().to(device)
            if model.text_tower is not None:  # encoder layers stay at θ₀: encode items once
                model.text_tower.requires_grad_(False)
                with torch.no_grad():
                    feats = model.text_vectors(feats)
            params = {k: p for k, p in model.named_parameters() if p.requires_grad}
            opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
            start = time.perf_counter()
            model.train()
            clipped_share = []
            bar = tqdm(range(steps), desc=f"DP fine-tune {domain.name}",
                       disable=not show_progress(), leave=False)
            for _ in bar:
                picked = (torch.rand(n, generator=gen) < q).nonzero().flatten().tolist()
                if picked:
                    batch = make_batch(0, [rows[i] for i in picked], model.cfg.max_len).to(device)
                    total, clipped = clipped_gradient_sum(model, feats, batch, dp.clip_norm)
                    clipped_share.append(clipped / len(picked))
                else:
                    total = {k: torch.zeros_like(p) for k, p in params.items()}
                for k, p in params.items():
                    noise = torch.randn(p.shape, generator=gen).to(device) * sigma * dp.clip_norm
                    p.grad = (total[k] + noise) / (q * n)
                opt.step()
                sched.step()
            model.eval()
            val = evaluate_model(model, domain, feats, EvalConfig(split="val", ks=(10,),
                                                                  max_users=cfg.val_max_users))
            privacy = {"dp_epsilon": dp_epsilon(sigma, q, steps, delta), "dp_delta": delta,
                       "dp_noise_multiplier": sigma, "dp_sample_rate": q, "dp_steps": float(steps),
                       "dp_clipped_share": sum(clipped_share) / max(1, len(clipped_share))}
            state = cpu_state(model)
    finally:
        model.requires_grad_(True)  # the item tower may have been frozen
    return TrainResult(state, cfg.epochs, val.metrics["ndcg@10"],
                       [{"epoch": cfg.epochs, "val_ndcg@10": val.metrics["ndcg@10"]}],
                       time.perf_counter() - start, privacy)
