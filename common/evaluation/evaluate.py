"""Full-ranking evaluation over a domain's whole catalogue (fp32, batched)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..data.domain import Domain
from ..model.recommender import ItemInputs, TextSeqRec, pad_sequences
from ..runtime import on_device
from ..settings import EvalConfig
from .metrics import metrics_from_ranks, target_ranks


@dataclass
class EvalResult:
    """Metrics plus the protocol that produced them."""

    metrics: dict[str, float]
    protocol: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"metrics": self.metrics, "protocol": self.protocol}


ScoreFn = Callable[[list[list[int]]], torch.Tensor]


def evaluate_scores(score_fn: ScoreFn, domain: Domain, cfg: EvalConfig,
                    protocol_extra: dict[str, object] | None = None) -> EvalResult:
    """Rank every item of ``domain`` for each user with ``score_fn(histories) -> [B, N]``
    (a fresh tensor per call: it is overwritten while ranking)."""
    histories, targets = domain.eval_examples(cfg.split)
    if cfg.max_users is not None:
        histories, targets = histories[: cfg.max_users], targets[: cfg.max_users]
    # Batches of similar history length pad less; metrics do not depend on the order.
    order = sorted(range(len(histories)), key=lambda i: len(histories[i]))
    histories, targets = [histories[i] for i in order], [targets[i] for i in order]
    ranks = []
    for start in range(0, len(histories), cfg.batch_size):
        hist = histories[start:start + cfg.batch_size]
        scores = score_fn(hist).float()
        tgt = torch.tensor(targets[start:start + cfg.batch_size], device=scores.device)
        if scores.shape != (len(hist), domain.num_items):
            raise ValueError(f"score function returned {tuple(scores.shape)}, expected "
                             f"({len(hist)}, {domain.num_items})")
        if cfg.mask_history:
            for r, h in enumerate(hist):
                scores[r, torch.tensor(h, device=scores.device)] = float("-inf")
        ranks.append(target_ranks(scores, tgt, inplace=True).cpu())
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    protocol = {
        "domain": domain.name,
        "split": cfg.split,
        "ranking": "full",
        "candidates": domain.num_items,
        "users": len(histories),
        "mask_history": cfg.mask_history,
        "precision": "fp32",
        "tie_break": "lower item index first",
        **(protocol_extra or {}),
    }
    return EvalResult(metrics_from_ranks(all_ranks, cfg.ks), protocol)


@torch.no_grad()
def evaluate_model(model: TextSeqRec, domain: Domain, text_features: ItemInputs,
                   cfg: EvalConfig | None = None) -> EvalResult:
    """Evaluate ``model`` on ``domain`` with full ranking in fp32."""
    cfg = cfg or EvalConfig()
    with on_device(model, eval_mode=True) as device:
        inputs = text_features.float().to(device)
        item_emb = model.encode_items(inputs)

        def score(hist: list[list[int]]) -> torch.Tensor:
            seqs, lengths = pad_sequences(hist, model.cfg.max_len)
            return model.score_sequences(item_emb, seqs.to(device), lengths.to(device), inputs)

        return evaluate_scores(score, domain, cfg, {"max_len": model.cfg.max_len})


def evaluate_popularity(domain: Domain, cfg: EvalConfig | None = None) -> EvalResult:
    """Most-popular baseline: rank by training-split interaction counts."""
    cfg = cfg or EvalConfig()
    pop = torch.tensor(domain.item_popularity(), dtype=torch.float32)
    return evaluate_scores(lambda h: pop.expand(len(h), -1).clone(), domain, cfg,
                           {"model": "popularity"})

