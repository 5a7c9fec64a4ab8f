"""Learning merging weights on pseudo-users with teacher distillation (MergeRec step 4)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from ..merging.learned import LearnedMerge
from ..merging.methods import MergeInit, StateDict
from ..model.recommender import ItemInputs, TextSeqRec, history_multi_hot, pad_sequences
from ..runtime import compute_device, reproducible, show_progress
from ..settings import DistillConfig
from .losses import merge_loss
from .teacher import TeacherSignal


@dataclass
class DomainPseudoData:
    """One domain's pseudo-users, item text vectors and (optional) teacher answers."""

    name: str
    features: ItemInputs
    sequences: list[list[int]]
    teacher: TeacherSignal | None = None


@dataclass
class LearnResult:
    """Learned weights, the merged state dict and the loss log."""

    weights: dict[str, list[float]]
    state_dict: StateDict
    history: list[dict[str, float]]
    seconds: float


def _encode_table(model: TextSeqRec, params: StateDict, feats: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return functional_call(model, params, (feats,))


def sample_rows(offsets: torch.Tensor, n: int, sampling: str,
                gen: torch.Generator) -> torch.Tensor:
    """``n`` pseudo-user rows (indices into the pooled domains, ``offsets`` their starts)."""
    if sampling == "proportional":
        return torch.randint(int(offsets[-1]), (n,), generator=gen)
    if sampling != "equal":
        raise ValueError(f"unknown domain sampling '{sampling}' (proportional or equal)")
    sizes = offsets[1:] - offsets[:-1]
    dom = torch.randint(len(sizes), (n,), generator=gen)
    return offsets[dom] + (torch.rand(n, generator=gen) * sizes[dom]).long()


def learn_merge_weights(model: TextSeqRec, base: StateDict, init: MergeInit,
                        domains: list[DomainPseudoData], cfg: DistillConfig) -> LearnResult:
    """Optimise merging weights with Adam; ``model`` only supplies the architecture."""
    if not domains or any(len(d.sequences) == 0 for d in domains):
        raise ValueError("every domain needs at least one pseudo-user")
    for d in domains:
        if d.teacher is not None:
            d.teacher.validate(len(d.sequences))
    reproducible(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = compute_device()
    merge = LearnedMerge(base, init, cfg.granularity, model.layer_groups(), device,
                         residual=cfg.residual_lr > 0)
    groups = [{"params": [merge.weights], "lr": cfg.lr}]
    if merge.residual is not None:
        groups.append({"params": list(merge.residual), "lr": cfg.residual_lr})
    opt = torch.optim.Adam(groups)
    model.train(cfg.student_dropout)
    feats = [d.features.float().to(device) for d in domains]
    teachers = [None if d.teacher is None else d.teacher.to(device) for d in domains]
    offsets = torch.tensor([0] + [len(d.sequences) for d in domains]).cumsum(0)
    tables = [None] * len(domains)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"learn {cfg.granularity}-wise weights",
               disable=not show_progress(), leave=False)
    for step in bar:
        params = merge.merged_state()
        if cfg.item_table == "differentiable":
            tables = [functional_call(model, params, (f,)) for f in feats]
        elif step == 0 or (cfg.item_table == "refresh" and step % cfg.item_refresh_every == 0):
            detached = {k: v.detach() for k, v in params.items()}
            tables = [_encode_table(model, detached, f) for f in feats]
        picks = sample_rows(offsets, cfg.batch_size, cfg.domain_sampling, gen)
        dom_of = torch.bucketize(picks, offsets[1:], right=True)
        loss = torch.zeros((), device=device)
        logs: dict[str, float] = {}
        for k, d in enumerate(domains):
            rows = picks[dom_of == k] - offsets[k]
            if len(rows) == 0:
                continue
            seqs = [d.sequences[int(r)] for r in rows]
            uniq = sorted({i for s in seqs for i in s})
            remap = {i: j for j, i in enumerate(uniq)}
            padded, lengths = pad_sequences([[remap[i] for i in s] for s in seqs], model.cfg.max_len)
            padded, lengths, uniq_ids = padded.to(device), lengths.to(device), torch.tensor(uniq, device=device)
            users = functional_call(model, params, (feats[k][uniq_ids], padded, lengths))
            in_history = history_multi_hot(uniq_ids[padded], lengths, len(feats[k]))
            z = model.score(users, tables[k], in_history, model.history_bias(tables[k], params))
            teacher = teachers[k].rows(rows.to(device)) if teachers[k] is not None else None
            terms = merge_loss(z, teacher, cfg.loss)
            share = len(rows) / cfg.batch_size
            loss = loss + share * terms["total"]
            for name, v in terms.items():
                logs[name] = logs.get(name, 0.0) + share * v.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, **logs})
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    final = {k: v.detach().cpu() for k, v in merge.merged_state().items()}
    return LearnResult(merge.weight_table(), final, history, time.perf_counter() - start)
