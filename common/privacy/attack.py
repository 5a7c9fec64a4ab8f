"""Membership inference from the coordinator's point of view.

The coordinator holds what the silos sent: θ₀ and each silo's fine-tuned weights. Given a
candidate user's interaction sequence, the attack scores how much fine-tuning lowered the
model's next-item loss on it (loss under θ₀ minus loss under the silo's weights, a calibrated
loss attack): training users tend to gain more than users the silo never saw. Reported as
ROC AUC (0.5 = chance) and advantage (max TPR − FPR) over members vs held-out users.
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from ..data import Domain
from ..model import ModelConfig, model_from_state
from ..model.recommender import ItemInputs
from ..runtime import on_device
from ..training.batching import make_batch, training_sequences
from ..training.finetune import user_losses

StateDict = dict[str, torch.Tensor]


def hold_out_users(domain: Domain, fraction: float, seed: int) -> tuple[Domain, Domain]:
    """Split users into (members the silo trains on, held-out users it never sees)."""
    if not 0 < fraction < 1:
        raise ValueError(f"hold-out fraction must lie in (0, 1), got {fraction}")
    users = list(range(domain.num_users))
    random.Random(seed).shuffle(users)
    cut = int(round(len(users) * (1 - fraction)))
    return _subset(domain, sorted(users[:cut])), _subset(domain, sorted(users[cut:]))


def _subset(domain: Domain, users: list[int]) -> Domain:
    return replace(domain, user_ids=[domain.user_ids[u] for u in users],
                   train=[domain.train[u] for u in users], val=[domain.val[u] for u in users],
                   test=[domain.test[u] for u in users])


@torch.no_grad()
def _user_losses(state: StateDict, cfg: ModelConfig, domain: Domain, features: ItemInputs,
                 batch_size: int = 64) -> torch.Tensor:
    model = model_from_state(cfg, state)
    rows = training_sequences(domain.train, cfg.max_len)
    out = []
    with on_device(model, eval_mode=True) as device:
        inputs = features.float().to(device)
        item_emb = model.encode_items(inputs)
        for start in range(0, len(rows), batch_size):
            batch = make_batch(0, rows[start:start + batch_size], cfg.max_len).to(device)
            out.append(user_losses(model, item_emb, batch, inputs).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def membership_scores(state: StateDict, base: StateDict, cfg: ModelConfig, domain: Domain,
                      features: ItemInputs) -> torch.Tensor:
    """Per user of ``domain``: loss under θ₀ minus loss under ``state`` (higher = member)."""
    return _user_losses(base, cfg, domain, features) - _user_losses(state, cfg, domain, features)


def attack_metrics(member: torch.Tensor, nonmember: torch.Tensor) -> dict[str, float]:
    """ROC AUC (ties count half) and advantage max(TPR − FPR) of scores members vs others."""
    if len(member) == 0 or len(nonmember) == 0:
        raise ValueError("the attack needs members and non-members")
    diff = member[:, None] - nonmember[None, :]
    auc = float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())
    thresholds = torch.cat([member, nonmember]).unique()
    tpr = (member[None, :] >= thresholds[:, None]).float().mean(1)
    fpr = (nonmember[None, :] >= thresholds[:, None]).float().mean(1)
    return {"auc": auc, "advantage": float((tpr - fpr).max().clamp(min=0)),
            "members": float(len(member)), "non_members": float(len(nonmember))}
