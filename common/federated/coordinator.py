"""The coordinator's side of MergeRec over any transport, as phases over a model pool.

1. collect and check the silos' updates (θ₀ → each training silo fine-tunes → weights +
   catalogue back; every reply decoded and checked under a per-silo guard);
2. training-free merges;
3. pseudo-users from the catalogues and the silos' teacher answers (verified);
4. learned merging weights;
5. evaluation in every silo (each is sent only what it may see);
6. the report, with the result files staged until the run is complete.

The Flower ServerApp and the in-process reference pipeline both run :func:`run_coordinator`;
they differ only in the :class:`Federation` that carries the messages. A silo that fails,
refuses, times out or sends something unusable is a recorded failure (by name, with the
reason); the run goes on while ``min_silos`` training silos are left.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

import torch

from ..backbone import item_inputs, resolve_base
from ..config import to_dict
from ..distill import DomainPseudoData, LearnResult, learn_merge_weights, teacher_scores
from ..io import RunOutputs, atomic_write_text
from ..merging import build_merge
from ..model import ModelConfig, TextSeqRec, model_from_state, state_hash
from ..data.domain import texts_hash
from ..data.item_table import item_table
from ..package import PackageInfo, add_new_domain_route, finish_package
from ..report import Stages, peak_rss_mb, write_report
from ..text import make_encoder
from .checks import (check_update, check_vectors, clip_task_vectors, non_finite, norm_outliers,
                     task_vector_norm)
from ..settings import CoordinatorConfig, LearnedMergeSpec, ServingConfig
from .ledger import Ledger
from .pool import (BASE_LABEL, IN_DOMAIN_LABEL, NEW_DOMAIN_LABEL, ModelEntry, ModelPool,
                   finetuned_label)
from .protocol import (EVALUATE, TRAIN, EvalRequest, Failure, Payload, RunSettings, TrainRequest,
                       decode_eval_reply, decode_train_reply, encode_eval_request,
                       encode_train_request, layout_of)
from .run import Federation, FederationError, Run, Session, StateDict, safe_name
from .selection import contribution_check, new_domain_path, tune_merges
from .teachers import AnswerCheck, ask_silos, build_pseudo_data

Extra = Callable[[StateDict, ModelConfig], dict[str, StateDict]]

__all__ = ["BASE_LABEL", "IN_DOMAIN_LABEL", "Federation", "FederationError", "build_pseudo_data",
           "run_coordinator", "safe_name"]


def run_coordinator(cfg: CoordinatorConfig, fed: Federation, extra_models: Extra | None = None,
                    log: Callable[[str], None] = print, ledger: Ledger | None = None,
                    outputs: RunOutputs | None = None) -> dict[str, object]:
    """Run MergeRec against ``fed``; returns the JSON-ready report.

    With ``cfg.output_dir`` the result files (report, merged models, received weights, learned
    weights, ledger) are staged as the run goes and moved into place when it completes
    (:class:`~common.io.RunOutputs`); a caller that passes its own ``outputs`` commits them
    itself. ``extra_models`` adds non-federated baselines (the reference pipeline's joint
    training); ``ledger`` continues a ledger the transport started.
    """
    own_outputs = outputs is None and cfg.output_dir is not None
    outputs = RunOutputs(cfg.output_dir) if own_outputs else outputs  # type: ignore[arg-type]
    ctx = _start(cfg, fed, log, ledger if ledger is not None else Ledger(), outputs)
    pool = collect_updates(ctx)
    if cfg.federation.contribution_tolerance is not None and len(ctx.merge_inputs) > 1:
        ctx.stages.run("contribution check on validation", contribution_check, ctx)
    add_baselines(ctx, pool, extra_models)
    training_free_merges(ctx, pool)
    learned_merges(ctx, pool)
    if cfg.new_domain is not None:
        choice = ctx.stages.run("choose the new-domain path on validation", new_domain_path, ctx,
                                pool, cfg.new_domain)
        ctx.choices[NEW_DOMAIN_LABEL] = to_dict(choice)
    per_silo, protocol = evaluate_in_silos(ctx, pool)
    report = build_report(ctx, pool, per_silo, protocol)
    if outputs is not None:
        write_report(report, outputs.stage)
        if own_outputs:
            outputs.commit()
    return report


def _start(cfg: CoordinatorConfig, fed: Federation, log: Callable[[str], None], ledger: Ledger,
           outputs: RunOutputs | None) -> Run:
    """θ₀ and the accepted silos: only the run's domains, in its order (any other name the
    transport reports is a recorded failure)."""
    session = Session(fed, log, ledger)
    for failure in getattr(fed, "rejected", []):
        session.fail(failure)
    order = {n: i for i, n in enumerate(cfg.domains)}
    roles = {}
    for name, role in sorted(fed.roles().items(), key=lambda nr: order.get(nr[0], len(order))):
        if name not in order:
            session.fail(Failure(name, "connect", "not a domain of this run; ignored"))
        elif role not in ("train", "eval"):
            session.fail(Failure(name, "connect", f"unknown role {role!r}; ignored"))
        else:
            roles[name] = role
    model_cfg, base = resolve_base(cfg.encoder, cfg.model, cfg.seed)
    if cfg.federation.catalogue == "vectors" and model_cfg.text_layers:
        raise ValueError("catalogue 'vectors' shares frozen item vectors; with trainable text "
                         "encoder layers (model.text_layers > 0) the silos must share item texts")
    ctx = Run(cfg, session, roles, model_cfg, base,
               RunSettings(cfg.encoder, cfg.center_features, model_cfg), outputs, Stages(log))
    ctx.require("start", ctx.trainers())
    return ctx


def collect_updates(ctx: Run) -> ModelPool:
    """Phase 1: send θ₀, check every update (decoding, θ₀ layout and hash, finite values,
    catalogue, task-vector norm against the others'); the pool holds θ₀ and the accepted
    fine-tuned models."""
    cfg, fcfg = ctx.cfg, ctx.cfg.federation
    trainers = ctx.trainers()
    ctx.session.log(f"θ₀ {ctx.base_hash[:12]} → fine-tuning in {len(trainers)} silo(s): "
                    f"{', '.join(trainers)}")
    request = encode_train_request(TrainRequest(ctx.base, ctx.run, replace(cfg.train, seed=cfg.seed),
                                                fcfg.catalogue))
    replies = ctx.stages.run("fine-tune in silos", ctx.session.exchange, "train", TRAIN,
                             {n: request for n in trainers}, fcfg.train_timeout_s)
    accepted = {}
    for name in trainers:
        if name in replies:
            update = ctx.session.guard(name, "train", lambda n=name: _checked_update(ctx, n, replies[n]))
            if update is not None:
                accepted[name] = update
    norms = {n: task_vector_norm(u.state, ctx.base) for n, u in accepted.items()}
    floor = 0.01 * float(torch.sqrt(sum((t.float() ** 2).sum() for t in ctx.base.values())))
    for name, reason in norm_outliers(norms, fcfg.update_norm_limit, floor).items():
        ctx.session.fail(Failure(name, "train", f"rejected update: {reason}"))
        del accepted[name]
    ctx.require("fine-tuning", list(accepted))
    ctx.merge_inputs, clipped = clip_task_vectors({n: u.state for n, u in accepted.items()},
                                                  ctx.base, norms, fcfg.task_vector_clip, floor)
    pool = ModelPool()
    ctx.keep(pool, ModelEntry(BASE_LABEL, "base", ctx.base), {"method": "the pretrained base θ₀"})
    for name, update in accepted.items():
        pool.add(ModelEntry(finetuned_label(name), "finetuned", update.state, name,
                            update.share_weights))
        ctx.training[name] = {**update.metrics, "task_vector_norm": norms[name],
                              **({"task_vector_clipped_to": clipped[name]} if name in clipped
                                 else {})}
        ctx.save(f"received/{safe_name(name)}.safetensors", update.state, silo=name)
        if ctx.outputs is not None and update.item_texts:  # what the silo shared, as a table
            atomic_write_text(ctx.outputs.path(f"catalogues/{safe_name(name)}.csv"),
                              item_table(update.item_texts))
    return pool


def _checked_update(ctx: Run, name: str, payload: Payload):  # type: ignore[no-untyped-def]
    """A decoded update that passed every check, with the silo's item inputs computed."""
    fcfg = ctx.cfg.federation
    rep = decode_train_reply(payload, layout_of(ctx.base), fcfg.max_catalogue_items)
    problems = check_update(rep.state, ctx.base, rep.base_hash)
    if fcfg.catalogue == "vectors":
        problems += check_vectors(rep.item_vectors, ctx.model_cfg.text_dim)
    elif not rep.item_texts:
        problems.append("no item texts")
    if problems:
        raise ValueError("rejected update: " + "; ".join(problems))
    ctx.features[name] = rep.item_vectors if rep.item_vectors is not None else item_inputs(
        rep.item_texts or [], ctx.cfg.encoder, ctx.model_cfg, ctx.cfg.center_features,
        ctx.cfg.cache() / "features", name)
    ctx.catalogues[name] = texts_hash(rep.item_texts) if rep.item_texts else \
        state_hash({"vectors": rep.item_vectors})[:16]  # type: ignore[dict-item]
    return rep


def add_baselines(ctx: Run, pool: ModelPool, extra_models: Extra | None) -> None:
    """Non-federated baselines (the reference pipeline's joint training)."""
    if extra_models is not None:
        made = ctx.stages.run("non-federated baselines (joint training)", extra_models, ctx.base,
                              ctx.model_cfg)
        for label, state in made.items():
            ctx.keep(pool, ModelEntry(label, "baseline", state),
                     {"method": "joint training on the pooled data of every silo (non-private)"})


def training_free_merges(ctx: Run, pool: ModelPool) -> None:
    """Phase 2: each configured merge of the accepted models (a non-finite one fails alone);
    a merge with a grid is first tuned on the training silos' validation splits."""
    states = list(ctx.merge_inputs.values())
    tuned = ctx.stages.run("tune training-free merges on validation", tune_merges, ctx, states,
                           ctx.cfg.merges) if any(m.grid for m in ctx.cfg.merges) else {}
    for label, (_, choice) in tuned.items():
        ctx.choices[label] = to_dict(choice)
    for mcfg in [tuned[m.label][0] if m.label in tuned else m for m in ctx.cfg.merges]:
        merged = ctx.stages.run(f"merge {mcfg.label}",
                                lambda m=mcfg: build_merge(m, ctx.base, states).merged(ctx.base))
        bad = non_finite(merged)
        if bad:
            ctx.session.fail(Failure("*", f"merge {mcfg.label}", f"non-finite tensors {bad[:3]}"))
            continue
        ctx.keep(pool, ModelEntry(mcfg.label, "merge", merged),
                 {"method": mcfg.method, "config": to_dict(mcfg), "silos": dict(ctx.catalogues)})


def learned_merges(ctx: Run, pool: ModelPool) -> None:
    """Phases 3 and 4: pseudo-users and verified teacher answers (shared by variants that
    use the same pseudo-users), then each learned variant; one that fails or ends with
    non-finite weights is a recorded failure, the others are kept. A silo whose answers fail
    their check (or never come) is left out of every later merge."""
    fcfg = ctx.cfg.federation
    sent = {e.silo: e.state for e in pool.of_kind("finetuned")}  # what the silos answer with
    teachers = {n: model_from_state(ctx.model_cfg, sent[n]) for n in ctx.merge_inputs}
    check = AnswerCheck(teachers, ctx.features, fcfg.teacher_check_rows, fcfg.teacher_tolerance)
    require_dp = ctx.cfg.train.dp is not None and ctx.cfg.train.dp.epsilon is not None
    sizes = {n: len(f) for n, f in ctx.features.items()}
    # a silo whose task vector was shortened is distilled from the weights as merged, which
    # the coordinator holds: its own answers would pull the merge back toward its long vector
    clipped = {n: model_from_state(ctx.model_cfg, ctx.merge_inputs[n]) for n in ctx.merge_inputs
               if "task_vector_clipped_to" in ctx.training.get(n, {})}

    def ask(seqs, topk):  # type: ignore[no-untyped-def]
        asked = {n: s for n, s in seqs.items() if n not in clipped}
        answers = ask_silos(ctx.session, asked, topk, fcfg.max_query_rows, fcfg.query_timeout_s,
                            require_dp, sizes, check)
        for name in set(asked) - set(answers):
            ctx.leave_out_of_merges(name, "query", "its teacher answers failed or never came")
        for name in set(seqs) & set(clipped):
            answers[name] = teacher_scores(clipped[name], ctx.features[name], seqs[name], topk)
        return {n: answers[n] for n in seqs if n in answers}  # the run's order

    def base_vectors(name: str) -> torch.Tensor:
        with torch.no_grad():
            return model_from_state(ctx.model_cfg, ctx.base).text_vectors(ctx.features[name])

    cache: dict[str, list[DomainPseudoData]] = {}
    for spec in ctx.cfg.learned:
        key = json.dumps([to_dict(spec.pseudo_users), spec.teacher_topk,
                          spec.distill.loss.needs_teacher])
        if key not in cache:  # variants with the same pseudo-users share the answers
            features = {n: ctx.features[n] for n in ctx.merge_inputs}
            cache[key] = ctx.stages.run(f"pseudo-users + silo answers ({spec.name})",
                                        build_pseudo_data, spec, features, ask, base_vectors)
        _learn_variant(ctx, pool, spec, [d for d in cache[key] if d.name in ctx.merge_inputs])


def _learn_variant(ctx: Run, pool: ModelPool, spec: LearnedMergeSpec,
                   pseudo: list[DomainPseudoData]) -> None:
    stage = f"learn ({spec.name})"
    if not pseudo:
        ctx.session.fail(Failure("*", stage, "no silo answered the queries"))
        return
    states = [ctx.merge_inputs[d.name] for d in pseudo]
    learned = ctx.session.guard("*", stage, lambda: ctx.stages.run(
        stage, run_learned_merge, spec, ctx.base, states, ctx.model_cfg, pseudo))
    if learned is None:
        return
    bad = non_finite(learned.state_dict)
    weights = [w for ws in learned.weights.values() for w in ws]
    if bad or not torch.isfinite(torch.tensor(weights)).all():
        ctx.session.fail(Failure("*", stage, f"non-finite merging weights or tensors {bad[:3]}; "
                                             "variant dropped"))
        return
    ctx.learned_weights[spec.name] = learned.weights
    ctx.keep(pool, ModelEntry(spec.name, "learned", learned.state_dict),
             {"method": f"MergeRec learned merging weights ({spec.distill.granularity}-wise)"
                        + (" + distilled residual on every weight" if spec.distill.residual_lr
                           else ""),
              "config": to_dict(spec), "weights": learned.weights, "silos": dict(ctx.catalogues)})
    if ctx.outputs is not None:
        atomic_write_text(ctx.outputs.path("learned_weights.json"),
                          json.dumps(ctx.learned_weights, indent=2))


def run_learned_merge(spec: LearnedMergeSpec, base: StateDict, finetuned: list[StateDict],
                      model_cfg: ModelConfig, pseudo: list[DomainPseudoData]) -> LearnResult:
    """Merge initialisation, then learned merging weights on the pseudo-users."""
    init = build_merge(spec.init, base, finetuned)
    return learn_merge_weights(TextSeqRec(model_cfg), base, init, pseudo, spec.distill)


def evaluate_in_silos(ctx: Run, pool: ModelPool
                      ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, object]]:
    """Phase 5: every silo evaluates what it may see (another silo's fine-tuned weights only
    when that silo shares them); replies are checked (labels, known metrics, rates in
    [0, 1]). Returns the metrics per silo and the protocol each silo reported."""
    asked = {n: pool.for_silo(n) for n in ctx.roles}
    requests = {n: encode_eval_request(EvalRequest(models, ctx.run, popularity=True,
                                                   serving=pool.serving_for(n)))
                for n, models in asked.items()}
    replies = ctx.stages.run("evaluate in silos", ctx.session.exchange, "evaluate", EVALUATE,
                             requests, ctx.cfg.federation.eval_timeout_s)
    per_silo, protocol = {}, {}
    for name, payload in replies.items():
        got = ctx.session.guard(name, "evaluate",
                                lambda n=name, p=payload: decode_eval_reply(p, list(asked[n])))
        if got is not None:
            per_silo[name], protocol[name] = got
    if ctx.outputs is not None:
        atomic_write_text(ctx.outputs.path("ledger.json"), json.dumps(
            {"summary": ctx.session.ledger.summary(), "messages": ctx.session.ledger.entries},
            indent=2))
    return per_silo, protocol


def assemble_results(per_silo: dict[str, dict[str, dict[str, float]]], seen: list[str],
                     unseen: list[str], labels: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Method → silo → metrics, with the in-domain row and averages over seen / unseen silos
    (an average only over the silos that evaluated that model)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    last_finetuned = finetuned_label(seen[-1]) if seen else None
    for label in ["popularity", *labels]:
        results[label] = {n: per_silo[n][label] for n in per_silo if label in per_silo[n]}
        if label == last_finetuned:  # the in-domain row follows the last fine-tuned one
            results[IN_DOMAIN_LABEL] = {n: per_silo[n][finetuned_label(n)]
                                        for n in seen if finetuned_label(n) in per_silo.get(n, {})}
    for row in results.values():
        for avg_name, group in (("average", seen), ("average unseen", unseen)):
            present = [n for n in group if n in row]
            if present:  # the metrics every one of them reports (cut-offs are a silo's own)
                shared = [k for k in row[present[0]] if all(k in row[n] for n in present)]
                row[avg_name] = {k: sum(row[n][k] for n in present) / len(present)
                                 for k in shared}
    return results


def write_packages(ctx: Run, pool: ModelPool, results: dict[str, dict[str, dict[str, float]]],
                   protocol: dict[str, object]) -> None:
    """A package per model the run made; every merge's also says which catalogues its silos
    trained on and carries the new-domain path for any other catalogue (when one was chosen)."""
    assert ctx.outputs is not None
    route = pool.entries.get(NEW_DOMAIN_LABEL)
    for label, made in ctx.made_by.items():
        entry, folder = pool.entries[label], ctx.outputs.path(f"models/{safe_name(label)}")
        merged = entry.kind in ("merge", "learned", "baseline")
        info = PackageInfo(
            label, entry.kind, replace(ctx.model_cfg, serving=entry.serving or ServingConfig()),
            ctx.cfg.encoder, make_encoder(ctx.cfg.encoder).encoder_id, ctx.cfg.center_features,
            ctx.base_hash, made, results.get(label, {}), protocol,
            trained_on=dict(ctx.catalogues) if merged else {})
        if merged and route is not None:
            info.new_domain = add_new_domain_route(folder, route.state,
                                                   route.serving or ServingConfig(),
                                                   ctx.made_by[NEW_DOMAIN_LABEL]["method"])
        finish_package(folder, info)


def build_report(ctx: Run, pool: ModelPool, per_silo: dict[str, dict[str, dict[str, float]]],
                 protocol: dict[str, dict[str, object]]) -> dict[str, object]:
    """Phase 6: the JSON-ready report."""
    seen = [e.silo for e in pool.of_kind("finetuned")]
    unseen = [n for n, r in ctx.roles.items() if r == "eval"]
    results = assemble_results(per_silo, seen, unseen, list(pool.entries))  # type: ignore[arg-type]
    first = next(iter(protocol.values()), {})
    if ctx.outputs is not None:
        write_packages(ctx, pool, results, first)
    return {
        "results": results,
        "silos": {n: {"role": r, "trained": n in seen, "evaluated": n in per_silo,
                      "withheld": pool.withheld_from(n)} for n, r in ctx.roles.items()},
        "failures": [to_dict(f) for f in ctx.session.failures],
        "base_hash": ctx.base_hash,
        "training": ctx.training,
        "learned_weights": ctx.learned_weights,
        "chosen_on_validation": ctx.choices,
        "contribution_check": {"harm": ctx.contributions,
                               "merged": list(ctx.merge_inputs)},
        "ledger": ctx.session.ledger.summary(),
        "stages": ctx.stages.records,
        "total_seconds": ctx.stages.total_seconds(),
        "coordinator_peak_rss_mb": round(peak_rss_mb(), 1),
        "protocol": {**first, "ranking": "full catalogue", "precision": "fp32",
                     "tie_break": "lower item index first", "history_cut": ctx.model_cfg.max_len,
                     "evaluated_in": "each silo, on its private split, with its own protocol; "
                                     "only metrics returned", "per_silo": protocol},
        "config": to_dict(ctx.cfg),
    }
