"""User-level DP-SGD fine-tuning of one silo's model (one user = one privacy unit).

Every user contributes one training row (its last ``max_len + 1`` items, next-item targets at
every position), so clipping each row's gradient bounds each user's influence. Users are
Poisson-sampled with rate ``batch_size / users``; per-user gradients (one backward per sampled
user, loss averaged over the user's positions) are clipped to ``clip_norm``, summed, and Gaussian noise with standard
deviation ``noise_multiplier · clip_norm`` is added before dividing by the expected batch size.
AdamW then post-processes the noisy gradient. There is no early stopping: choosing an epoch by
validation on private data would spend privacy outside the accountant; the final weights are
kept and ε is what the PLD accountant reports for the steps actually taken.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.domain import Domain
from ..evaluation.evaluate import EvalConfig, evaluate_model
from ..model.recommender import TextSeqRec, position_histories
from ..privacy.accountant import calibrate_noise, dp_epsilon
from .batching import make_batch, training_sequences
from .finetune import TrainConfig, TrainResult


def _user_loss(model: TextSeqRec, item_emb: torch.Tensor, row: list[int]) -> torch.Tensor:
    """Mean next-item loss over the positions of one user's row."""
    batch = make_batch(0, [row], model.cfg.max_len)
    states = model.sequence_states(item_emb, batch.seqs, batch.lengths)
    history = position_histories(batch.seqs, batch.mask, len(item_emb))
    logits = model.score(states[batch.mask], item_emb, history) / model.cfg.temperature
    return F.cross_entropy(logits.float(), batch.targets[batch.mask])


def dp_fine_tune(model: TextSeqRec, domain: Domain, features: torch.Tensor, cfg: TrainConfig
                 ) -> TrainResult:
    """Train ``model`` in place with user-level DP-SGD; ``cfg.dp.epsilon`` is the target."""
    dp = cfg.dp
    if dp is None or dp.epsilon is None:
        raise ValueError("dp_fine_tune needs cfg.dp.epsilon")
    rows = training_sequences(domain.train, model.cfg.max_len)
    n = len(rows)
    if n == 0:
        raise ValueError(f"{domain.name}: no user with two or more training items")
    q = min(1.0, cfg.batch_size / n)
    steps = cfg.epochs * max(1, round(1 / q))
    delta = dp.delta if dp.delta is not None else 1.0 / domain.num_users
    sigma = dp.noise_multiplier if dp.noise_multiplier is not None else \
        calibrate_noise(dp.epsilon, q, steps, delta)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
    feats = features.float()
    start = time.perf_counter()
    model.train()
    clipped_share = []
    for _ in tqdm(range(steps), desc=f"DP fine-tune {domain.name}", disable=not cfg.progress,
                  leave=False):
        picked = (torch.rand(n, generator=gen) < q).nonzero().flatten().tolist()
        total = [torch.zeros_like(p) for p in params]
        if picked:
            # the item table is encoded once per step; each user's backward then runs through
            # its own small sequence graph plus the shared item tower (O(users), not O(users²))
            item_emb = model.encode_items(feats)
            clipped = 0
            for u, i in enumerate(picked):
                loss = _user_loss(model, item_emb, rows[i])
                grads = torch.autograd.grad(loss, params, retain_graph=u < len(picked) - 1,
                                            allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
                norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
                scale = min(1.0, dp.clip_norm / (float(norm) + 1e-12))
                clipped += scale < 1.0
                for acc, g in zip(total, grads):
                    acc.add_(g, alpha=scale)
            clipped_share.append(clipped / len(picked))
        for acc, p in zip(total, params):
            noise = torch.randn(p.shape, generator=gen) * sigma * dp.clip_norm
            p.grad = (acc + noise) / (q * n)
        opt.step()
        sched.step()
    model.eval()
    val = evaluate_model(model, domain, feats, EvalConfig(split="val", ks=(10,),
                                                          max_users=cfg.val_max_users))
    privacy = {"dp_epsilon": dp_epsilon(sigma, q, steps, delta), "dp_delta": delta,
               "dp_noise_multiplier": sigma, "dp_sample_rate": q, "dp_steps": float(steps),
               "dp_clipped_share": sum(clipped_share) / max(1, len(clipped_share))}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainResult(state, cfg.epochs, val.metrics["ndcg@10"],
                       [{"epoch": cfg.epochs, "val_ndcg@10": val.metrics["ndcg@10"]}],
                       time.perf_counter() - start, privacy)
