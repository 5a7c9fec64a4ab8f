"""Training and evaluating the ID-based SASRec reference on one domain (inside its silo)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..config import to_dict

from ..data.domain import Domain
from ..evaluation.evaluate import EvalConfig, EvalResult, evaluate_scores
from ..model.recommender import pad_sequences
from ..model.sasrec import SASRec, SASRecConfig
from ..runtime import on_device, reproducible
from .batching import TrainBatch, training_sequences
from .checkpoints import keep_checkpoint, read_checkpoint
from .finetune import Schedule, TrainResult, train_epochs
from .softmax_loss import LogitsWorkspace, cosine_softmax_cross_entropy


def sasrec_cached(domain: Domain, cfg: SASRecConfig, checkpoint_dir: str | Path | None
                  ) -> tuple[SASRec, dict[str, float]]:
    """:func:`train_sasrec`, keeping the best weights under ``checkpoint_dir`` (keyed by the
    config and the domain's data) and reusing them on a rerun; returns the model and its
    training stats."""
    path = None
    if checkpoint_dir is not None:
        key = json.dumps([to_dict(cfg), domain.catalogue_hash(),
                          domain.num_users, sum(len(s) for s in domain.train)], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = Path(checkpoint_dir) / f"sasrec-{domain.name}-{digest}.safetensors"
    if path is not None and path.is_file():
        state, stats = read_checkpoint(path)
        model = SASRec(cfg, domain.num_items)
        model.load_state_dict(state)
        return model.eval(), stats
    model, result = train_sasrec(domain, cfg)
    return model, keep_checkpoint(path, result)[1]


def train_sasrec(domain: Domain, cfg: SASRecConfig) -> tuple[SASRec, TrainResult]:
    """A SASRec trained on ``domain``'s training split with full-softmax cross-entropy at every
    position, Adam(W), early stopping on validation NDCG@10 (best weights kept)."""
    reproducible(cfg.seed)
    model = SASRec(cfg, domain.num_items)
    per_domain = [training_sequences(domain.train, cfg.max_len)]
    no_history = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    val_cfg = EvalConfig(split="val", ks=(10,), max_users=cfg.val_max_users)
    with on_device(model) as device:
        workspace = LogitsWorkspace()
        zero = torch.zeros(1, device=device)
        empty = tuple(t.to(device) for t in no_history)

        def step_loss(batch: TrainBatch) -> torch.Tensor:
            states = model.sequence_states(batch.seqs, batch.mask.nonzero(as_tuple=True))
            # the fused loss computes scale · (U Iᵀ + β·H): here plain dot products, no history
            return cosine_softmax_cross_entropy(states, model.items.weight, zero, empty,  # type: ignore[arg-type]
                                                batch.targets[batch.mask], 1.0, workspace)

        def validate() -> float:
            return evaluate_sasrec(model, domain, val_cfg).metrics["ndcg@10"]

        schedule = Schedule(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, 0,
                            cfg.patience, cfg.seed)
        result = train_epochs(model, per_domain, cfg.max_len, step_loss, validate, schedule,
                              device, f"SASRec {domain.name}")
    return model.eval(), result


@torch.no_grad()
def evaluate_sasrec(model: SASRec, domain: Domain, cfg: EvalConfig) -> EvalResult:
    """Full-ranking evaluation with the project's protocol (:func:`evaluate_scores`)."""
    with on_device(model, eval_mode=True) as device:
        def score(hist: list[list[int]]) -> torch.Tensor:
            seqs, lengths = pad_sequences(hist, model.cfg.max_len)
            return model.score_sequences(seqs.to(device), lengths.to(device))

        return evaluate_scores(score, domain, cfg, {"model": "SASRec (item ids)",
                                                     "max_len": model.cfg.max_len})
