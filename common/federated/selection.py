"""Choices made on the training silos' validation splits (``query.validate``): a training-free
merge's hyper-parameters, and the path that serves catalogues no silo trained on.

Only Recall/NDCG@10 of candidate models come back, under each silo's own validation protocol,
``min_users``, budget and metric noise; the silos' users never leave them. Evaluation-only
(unseen) silos are never asked: their users must not choose what they are measured with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..config import to_dict
from ..merging import MergeConfig, build_merge
from ..settings import NewDomainConfig, ServingConfig
from .pool import BASE_LABEL, NEW_DOMAIN_LABEL, ModelEntry, ModelPool
from .protocol import VALIDATE, EvalRequest, decode_eval_reply, encode_eval_request
from .run import Run, StateDict

CHUNK = 32  # candidates per message (a silo refuses more than its max_models_per_message)
METRICS = ("recall@10", "ndcg@10")

Candidates = dict[str, tuple[StateDict, ServingConfig | None]]  # label -> (weights, serving)


def validate(ctx: Run, stage: str, per_silo: dict[str, Candidates]
             ) -> dict[str, dict[str, dict[str, float]]]:
    """Each silo's validation metrics of its candidates (silo → label → metrics); a silo
    that fails or answers out of form is a recorded failure and drops out of the choice."""
    out: dict[str, dict[str, dict[str, float]]] = {n: {} for n in per_silo}
    longest = max((len(c) for c in per_silo.values()), default=0)
    for start in range(0, longest, CHUNK):
        requests, asked = {}, {}
        for name, cands in per_silo.items():
            part = dict(itertools.islice(cands.items(), start, start + CHUNK))
            if part and name in out:
                asked[name] = list(part)
                requests[name] = encode_eval_request(EvalRequest(
                    {k: s for k, (s, _) in part.items()}, ctx.run, popularity=False,
                    serving={k: v for k, (_, v) in part.items() if v is not None}))
        replies = ctx.session.exchange(stage, VALIDATE, requests,
                                       ctx.cfg.federation.eval_timeout_s)
        for name in asked:
            got = None if name not in replies else ctx.session.guard(
                name, stage, lambda n=name: decode_eval_reply(replies[n], asked[n])[0])
            if got is None:
                out.pop(name, None)
            else:
                out[name].update(got)
    return out


@dataclass
class Choice:
    """What a validation choice kept, and every candidate's mean metrics (for the report)."""

    chosen: str
    table: dict[str, dict[str, float]] = field(default_factory=dict)
    silos: list[str] = field(default_factory=list)


def mean_metrics(metrics: dict[str, dict[str, dict[str, float]]], labels: list[str]
                 ) -> dict[str, dict[str, float]]:
    """Per label, the mean over the silos that answered of Recall/NDCG@10."""
    return {label: {m: sum(metrics[s][label][m] for s in metrics) / len(metrics)
                    for m in METRICS} for label in labels if metrics}


def tune_merges(ctx: Run, finetuned: list[StateDict], merges: list[MergeConfig]
                ) -> dict[str, tuple[MergeConfig, Choice]]:
    """For every merge with a grid, the candidate with the best mean validation Recall@10
    over the training silos (ties: the first in grid order), and the table it was chosen by."""
    tuned = [m for m in merges if m.grid]
    if not tuned:
        return {}
    configs = {f"{m.label} (" + ", ".join(f"{k} {getattr(c, k):g}" for k in m.grid) + ")": (m, c)
               for m in tuned for c in m.candidates()}
    states = {label: build_merge(c, ctx.base, finetuned).merged(ctx.base)
              for label, (_, c) in configs.items()}
    per_silo = {n: {label: (s, None) for label, s in states.items()} for n in ctx.merge_inputs}
    metrics = validate(ctx, "tune training-free merges", per_silo)
    out = {}
    for m in tuned:
        labels = [label for label, (owner, _) in configs.items() if owner is m]
        table = mean_metrics(metrics, labels)
        best = max(labels, key=lambda x: table[x]["recall@10"]) if table else labels[0]
        out[m.label] = (configs[best][1], Choice(best, table, sorted(metrics)))
    return out


def new_domain_path(ctx: Run, pool: ModelPool, cfg: NewDomainConfig) -> Choice:
    """Choose and add the new-domain path (:class:`~common.settings.NewDomainConfig`): every
    training silo scores every candidate built without its own task vector, against θ₀ on the
    same users; the kept candidate joins the pool as :data:`NEW_DOMAIN_LABEL`."""
    finetuned = dict(ctx.merge_inputs)
    names = {c: candidate_label(*c) for c in cfg.candidates()}
    per_silo: dict[str, Candidates] = {}
    for silo in finetuned:
        others = [s for n, s in finetuned.items() if n != silo]
        bases = {lam: _task_arithmetic(ctx.base, others, lam) for lam, _, _ in names}
        per_silo[silo] = {label: (bases[lam], _serving(w, d)) for (lam, w, d), label in names.items()}
    metrics = validate(ctx, "choose the new-domain path", per_silo)
    ratios = {label: [{m: metrics[s][label][m] / max(1e-12, metrics[s][names[0.0, 0.0, 0.0]][m])
                       for m in METRICS} for s in metrics] for label in names.values()}
    safe = [label for label, rows in ratios.items()
            if rows and all(r[m] >= 1.0 for r in rows for m in METRICS)]
    table = {label: {f"{m} / θ₀": sum(r[m] for r in rows) / len(rows) for m in METRICS}
             for label, rows in ratios.items() if rows}
    best = max(safe, key=lambda x: table[x]["recall@10 / θ₀"]) if safe else names[0.0, 0.0, 0.0]
    lam, whiten, decay = next(c for c, label in names.items() if label == best)
    state = _task_arithmetic(ctx.base, list(finetuned.values()), lam)
    serving = _serving(whiten, decay)
    ctx.keep(pool, ModelEntry(NEW_DOMAIN_LABEL, "new-domain", state, serving=serving),
             {"method": "the new-domain path: " + (f"θ₀ + {lam:g} × the silos' task vectors"
                                                    if lam else "θ₀") +
                        f", {serving_text(serving)}; chosen on the training silos' validation "
                        "splits, each judging candidates built without its own model",
              "serving": to_dict(serving or ServingConfig()), "task_arithmetic": lam,
              "silos": dict(ctx.catalogues)})
    return Choice(best, table, sorted(metrics))


def contribution_check(ctx: Run) -> None:
    """Leave out of every merge a silo whose task vector harms the others: each training silo
    scores task arithmetic of every silo's vector (at ``contribution_lambda``) and the same
    without each other silo's; a silo's harm is the relative drop of Recall@10 its vector
    causes, the median over the silos judging it (at least three), else the smallest, so one
    lying judge can neither protect itself nor push an honest silo out."""
    fcfg = ctx.cfg.federation
    lam, names = fcfg.contribution_lambda, list(ctx.merge_inputs)
    everyone = _task_arithmetic(ctx.base, list(ctx.merge_inputs.values()), lam)
    without = {k: _task_arithmetic(ctx.base, [s for n, s in ctx.merge_inputs.items() if n != k],
                                   lam) for k in names}
    per_silo: dict[str, Candidates] = {
        j: {"all": (everyone, None), **{f"without {k}": (without[k], None) for k in names if k != j}}
        for j in names}
    metrics = validate(ctx, "contribution check", per_silo)
    for k in names:
        drops = sorted(1.0 - metrics[j]["all"]["recall@10"]
                       / max(1e-12, metrics[j][f"without {k}"]["recall@10"])
                       for j in metrics if j != k)
        if drops:
            ctx.contributions[k] = drops[len(drops) // 2] if len(drops) >= 3 else drops[0]
    tolerance = fcfg.contribution_tolerance or 1.0
    for k, harm in ctx.contributions.items():
        if harm > tolerance:
            ctx.leave_out_of_merges(k, "contribution check", f"adding its task vector lowers "
                                    f"the other silos' validation Recall@10 by {harm:.0%} "
                                    f"(tolerance {tolerance:.0%})")


def candidate_label(lam: float, whiten: float, decay: float) -> str:
    return "θ₀" if (lam, whiten, decay) == (0.0, 0.0, 0.0) else \
        f"λ {lam:g}, whiten {whiten:g}, history decay {decay:g}"


def serving_text(serving: ServingConfig | None) -> str:
    s = serving or ServingConfig()
    return f"whitening {s.whiten:g}, history decay {s.history_decay:g}"


def _serving(whiten: float, decay: float) -> ServingConfig | None:
    return ServingConfig(whiten, decay) if whiten or decay else None


def _task_arithmetic(base: StateDict, finetuned: list[StateDict], lam: float) -> StateDict:
    """θ₀ + λ · Σ_k τ_k (θ₀ itself, the same object, for λ = 0 or no models)."""
    if not lam or not finetuned:
        return base
    return build_merge(MergeConfig("task_arithmetic", lam=lam), base, finetuned).merged(base)


__all__ = ["BASE_LABEL", "Choice", "contribution_check", "new_domain_path", "tune_merges",
           "validate"]
