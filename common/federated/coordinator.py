"""The coordinator's side of MergeRec over any transport.

θ₀ → every training silo fine-tunes and sends weights + catalogue → updates are checked →
training-free merges → pseudo-users from the catalogues, answered by the silos' own models →
learned merging weights → every silo (seen and evaluation-only) evaluates every model.
The Flower ServerApp and the in-process reference pipeline both run :func:`run_coordinator`;
they differ only in the :class:`Federation` that carries the messages.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol

import torch

from ..config import to_dict
from ..distill import (DomainPseudoData, LearnResult, TeacherSignal, extend_walks,
                       learn_merge_weights, select_items)
from ..experiment import LearnedMergeSpec, PipelineConfig
from ..merging import build_merge
from ..backbone import item_inputs, resolve_base
from ..model import ModelConfig, TextSeqRec, model_from_state, state_hash
from ..model.recommender import ItemInputs
from ..report import Stages, atomic_write_text, peak_rss_mb, write_report
from ..text import make_encoder
from ..text.cache import atomic_save_safetensors
from .checks import check_update, check_vectors
from .ledger import Ledger
from .protocol import (EVALUATE, QUERY, TRAIN, EvalRequest, Failure, Payload, RunSettings,
                       TrainRequest, decode_answer, decode_eval_reply, decode_train_reply,
                       encode_eval_request, encode_query, encode_train_request)

StateDict = dict[str, torch.Tensor]
BASE_LABEL = "zero-shot base θ₀"
IN_DOMAIN_LABEL = "in-domain fine-tuned"
Ask = Callable[[dict[str, list[list[int]]], "int | None"], dict[str, TeacherSignal]]


class FederationError(RuntimeError):
    """The run cannot go on (too few silos left); the message says which failed and why."""


class Federation(Protocol):
    """A transport to the silos."""

    def roles(self) -> dict[str, str]:
        """Silo name → ``"train"`` or ``"eval"`` (evaluation-only), for every connected silo."""
        ...

    def send(self, kind: str, requests: dict[str, Payload], timeout: float
             ) -> dict[str, Payload | Failure]:
        """Send one request per named silo at once; replies or failures by silo name
        (a silo missing from the result did not answer within ``timeout``)."""
        ...


def build_pseudo_data(spec: LearnedMergeSpec, features: dict[str, ItemInputs], ask: Ask,
                      vectors: Callable[[str], torch.Tensor]) -> list[DomainPseudoData]:
    """Pseudo-users per domain from its catalogue only; walks and teacher answers are asked
    of the silos (``ask``: domain → sequences in, domain → answers out, failed silos left out).
    ``vectors(name)``: θ₀'s item text vectors of a catalogue (centroid sampling clusters them)."""
    cfg = spec.pseudo_users
    if cfg.kind not in ("one_item", "walk"):
        raise ValueError(f"unknown pseudo-user kind '{cfg.kind}'")
    seqs = {n: [[i] for i in select_items(vectors(n) if cfg.sample == "centroid" else f, cfg)]
            for n, f in features.items()}
    if cfg.kind == "walk":
        for _ in range(cfg.walk_length - 1):
            answers = ask(seqs, None)
            seqs = {n: extend_walks(seqs[n], answers[n].scores) for n in answers}
    if not spec.distill.loss.needs_teacher:
        return [DomainPseudoData(n, features[n], s) for n, s in seqs.items()]
    answers = ask(seqs, spec.teacher_topk)
    return [DomainPseudoData(n, features[n], seqs[n], a) for n, a in answers.items()]


def run_learned_merge(spec: LearnedMergeSpec, base: StateDict, finetuned: list[StateDict],
                      model_cfg: ModelConfig, pseudo: list[DomainPseudoData]) -> LearnResult:
    """Merge initialisation, then learned merging weights on the pseudo-users."""
    init = build_merge(spec.init, base, finetuned)
    return learn_merge_weights(TextSeqRec(model_cfg), base, init, pseudo, spec.distill)


def safe_name(label: str) -> str:
    """A file-name-safe version of a method label."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")


class _Session:
    """Message exchange with failure bookkeeping and the ledger."""

    def __init__(self, fed: Federation, log: Callable[[str], None], ledger: Ledger) -> None:
        self.fed = fed
        self.log = log
        self.ledger = ledger
        self.failures: list[Failure] = []

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.log(f"silo {failure.silo} failed during {failure.stage}: {failure.reason}")

    def exchange(self, stage: str, kind: str, requests: dict[str, Payload], timeout: float
                 ) -> dict[str, Payload]:
        replies = self.fed.send(kind, requests, timeout) if requests else {}
        ok: dict[str, Payload] = {}
        for name in requests:
            reply = replies.get(name) or Failure(name, stage, f"no reply within {timeout:.0f} s "
                                                 "(timed out or disconnected)")
            if isinstance(reply, Failure):
                self.ledger.record(name, kind, None, reply.reason)
                self.fail(replace(reply, stage=stage))
            else:
                self.ledger.record(name, kind, reply)
                ok[name] = reply
        return ok


def run_coordinator(cfg: PipelineConfig, fed: Federation,
                    extra_models: Callable[[StateDict, ModelConfig], dict[str, StateDict]] | None = None,
                    log: Callable[[str], None] = print, ledger: Ledger | None = None
                    ) -> dict[str, object]:
    """Run MergeRec against ``fed``; returns the JSON-ready report (and writes it, with the
    merged models, learned weights and ledger, to ``cfg.output_dir`` when set).

    ``extra_models`` adds non-federated baselines (the reference pipeline's joint training);
    ``ledger`` continues a ledger the transport started (e.g. with the silos' identification).
    """
    fcfg = cfg.federation
    stages = Stages()
    session = _Session(fed, log, ledger if ledger is not None else Ledger())
    order = {n: i for i, n in enumerate(cfg.data.domain_names())}  # configured order, then name
    roles = dict(sorted(fed.roles().items(), key=lambda nr: (order.get(nr[0], len(order)), nr[0])))
    trainers = [n for n, r in roles.items() if r == "train"]
    need = fcfg.min_silos if fcfg.min_silos is not None else len(trainers)

    def require(stage: str, have: list[str]) -> None:
        if len(have) < max(1, need):
            reasons = "; ".join(f"{f.silo} ({f.stage}): {f.reason}" for f in session.failures)
            raise FederationError(f"{stage}: only {len(have)} training silo(s) left {have}, "
                                  f"at least {max(1, need)} needed. Failures: {reasons or 'none'}")

    require("start", trainers)
    encoder = make_encoder(cfg.encoder)
    model_cfg, base = resolve_base(cfg.encoder, cfg.model, cfg.seed)
    if fcfg.catalogue == "vectors" and model_cfg.text_layers:
        raise ValueError("catalogue 'vectors' shares frozen item vectors; with trainable text "
                         "encoder layers (model.text_layers > 0) the silos must share item texts")
    base_hash = state_hash(base)
    run = RunSettings(cfg.encoder, cfg.center_features, model_cfg)
    log(f"θ₀ {base_hash[:12]} → fine-tuning in {len(trainers)} silo(s): {', '.join(trainers)}")

    train_req = encode_train_request(TrainRequest(base, run, replace(cfg.train, seed=cfg.seed),
                                                  fcfg.catalogue))
    replies = stages.run("fine-tune in silos", session.exchange, "train", TRAIN,
                         {n: train_req for n in trainers}, fcfg.train_timeout_s)
    finetuned: dict[str, StateDict] = {}
    features: dict[str, ItemInputs] = {}
    training: dict[str, dict[str, float]] = {}
    for name in trainers:
        if name not in replies:
            continue
        try:
            rep = decode_train_reply(replies[name])
        except (KeyError, ValueError) as exc:
            session.fail(Failure(name, "train", f"malformed update: {exc}"))
            continue
        problems = check_update(rep.state, base, rep.base_hash)
        if fcfg.catalogue == "vectors":
            problems += check_vectors(rep.item_vectors, encoder.dim)
        elif not rep.item_texts:
            problems.append("no item texts")
        if problems:
            session.fail(Failure(name, "train", "rejected update: " + "; ".join(problems)))
            continue
        if rep.item_vectors is not None:
            features[name] = rep.item_vectors
        else:
            features[name] = item_inputs(rep.item_texts or [], cfg.encoder, model_cfg,
                                         cfg.center_features, Path(cfg.data.cache_dir) / "features",
                                         name)
        finetuned[name] = rep.state
        training[name] = rep.metrics
    names = list(finetuned)
    require("fine-tuning", names)
    states = [finetuned[n] for n in names]

    models: dict[str, StateDict] = {BASE_LABEL: base}
    models.update({f"fine-tuned on {n}": finetuned[n] for n in names})
    if extra_models is not None:
        models.update(stages.run("non-federated baselines (joint training)", extra_models, base,
                                 model_cfg))
    for mcfg in cfg.merges:
        label = mcfg.method.replace("_", " ")
        models[label] = stages.run(f"merge {label}",
                                   lambda m=mcfg: build_merge(m, base, states).merged(base))

    require_dp = cfg.train.dp is not None and cfg.train.dp.epsilon is not None

    def ask(seqs: dict[str, list[list[int]]], topk: int | None) -> dict[str, TeacherSignal]:
        return _ask_silos(session, seqs, topk, fcfg.max_query_rows, fcfg.query_timeout_s,
                          require_dp)

    def base_vectors(name: str) -> torch.Tensor:
        with torch.no_grad():
            return model_from_state(model_cfg, base).text_vectors(features[name])

    learned_weights: dict[str, dict[str, list[float]]] = {}
    pseudo_cache: dict[str, list[DomainPseudoData]] = {}
    for spec in cfg.learned:
        key = json.dumps([to_dict(spec.pseudo_users), spec.teacher_topk,
                          spec.distill.loss.needs_teacher])
        if key not in pseudo_cache:  # variants with the same pseudo-users share the answers
            pseudo_cache[key] = stages.run(f"pseudo-users + silo answers ({spec.name})",
                                           build_pseudo_data, spec, features, ask, base_vectors)
        pseudo = pseudo_cache[key]
        if not pseudo:
            session.fail(Failure("*", f"learn ({spec.name})", "no silo answered the queries"))
            continue
        learned = stages.run(f"learn ({spec.name})", run_learned_merge, spec, base, states,
                             model_cfg, pseudo)
        learned_weights[spec.name] = learned.weights
        models[spec.name] = learned.state_dict

    eval_req = encode_eval_request(EvalRequest(models, run, cfg.eval, popularity=True))
    evals = stages.run("evaluate in silos", session.exchange, "evaluate", EVALUATE,
                       {n: eval_req for n in roles}, fcfg.eval_timeout_s)
    per_silo = {n: decode_eval_reply(p) for n, p in evals.items()}
    results = assemble_results(per_silo, names, [n for n in roles if roles[n] == "eval"], models)

    report: dict[str, object] = {
        "results": results,
        "silos": {n: {"role": roles[n], "trained": n in finetuned, "evaluated": n in per_silo}
                  for n in roles},
        "failures": [to_dict(f) for f in session.failures],
        "base_hash": base_hash,
        "training": training,
        "learned_weights": learned_weights,
        "ledger": session.ledger.summary(),
        "stages": stages.records,
        "total_seconds": stages.total_seconds(),
        "coordinator_peak_rss_mb": round(peak_rss_mb(), 1),
        "protocol": {**to_dict(cfg.eval), "ranking": "full catalogue", "precision": "fp32",
                     "tie_break": "lower item index first", "history_cut": model_cfg.max_len,
                     "evaluated_in": "each silo, on its private split; only metrics returned"},
        "config": to_dict(cfg),
    }
    if cfg.output_dir:
        write_outputs(report, session.ledger, models, [s.name for s in cfg.learned if s.name in models],
                      Path(cfg.output_dir), base_hash)
    return report


def _ask_silos(session: _Session, seqs: dict[str, list[list[int]]], topk: int | None,
               max_rows: int, timeout: float, require_dp: bool) -> dict[str, TeacherSignal]:
    """Teacher answers for every domain's pseudo-users, in as few batched rounds as possible."""
    got: dict[str, list[TeacherSignal]] = {n: [] for n in seqs}
    rounds = max((len(s) + max_rows - 1) // max_rows for s in seqs.values()) if seqs else 0
    for r in range(rounds):
        chunk = {n: s[r * max_rows:(r + 1) * max_rows] for n, s in seqs.items() if n in got}
        chunk = {n: c for n, c in chunk.items() if c}
        requests = {n: encode_query(c, topk, require_dp) for n, c in chunk.items()}
        replies = session.exchange("query", QUERY, requests, timeout)
        for n in chunk:
            if n not in replies:
                got.pop(n, None)
                continue
            try:
                signal = decode_answer(replies[n])
                signal.validate(len(chunk[n]))
                if topk and signal.indices is None:
                    raise ValueError("top-k asked, full rows answered")
            except (KeyError, ValueError) as exc:
                session.fail(Failure(n, "query", f"malformed answer: {exc}"))
                got.pop(n, None)
                continue
            got[n].append(signal)
    out = {}
    for n, parts in got.items():
        idx = [p.indices for p in parts]
        out[n] = TeacherSignal(torch.cat([p.scores for p in parts]), parts[0].num_items,
                               None if idx[0] is None else torch.cat(idx))  # type: ignore[arg-type]
    return out


def assemble_results(per_silo: dict[str, dict[str, dict[str, float]]], seen: list[str],
                     unseen: list[str], models: dict[str, StateDict]
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """Method → silo → metrics, with the in-domain row and averages over seen / unseen silos."""
    labels = ["popularity", *models]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label in labels:
        results[label] = {n: per_silo[n][label] for n in per_silo if label in per_silo[n]}
        if label == f"fine-tuned on {seen[-1]}":  # the in-domain row follows the last one
            results[IN_DOMAIN_LABEL] = {n: per_silo[n][f"fine-tuned on {n}"]
                                               for n in seen if n in per_silo}
    for row in results.values():
        for avg_name, group in (("average", seen), ("average unseen", unseen)):
            present = [n for n in group if n in row]
            if present:
                row[avg_name] = {k: sum(row[n][k] for n in present) / len(present)
                                 for k in row[present[0]]}
    return results


def write_outputs(report: dict[str, object], ledger: Ledger, models: dict[str, StateDict],
                  learned: list[str], out_dir: Path, base_hash: str) -> None:
    """Merged models and the silos' received weights (safetensors), learned weights, ledger and
    report, each written atomically; ``report.json`` last, so its presence means the run
    completed."""
    for label in learned:
        atomic_save_safetensors(models[label], out_dir / "merged" / f"{safe_name(label)}.safetensors",
                                metadata={"base_hash": base_hash, "method": label})
    for label, state in models.items():  # what the coordinator received from each silo
        if label.startswith("fine-tuned on "):
            silo = label[len("fine-tuned on "):]
            atomic_save_safetensors(state, out_dir / "received" / f"{safe_name(silo)}.safetensors",
                                    metadata={"base_hash": base_hash, "silo": silo})
    atomic_write_text(out_dir / "learned_weights.json",
                      json.dumps(report["learned_weights"], indent=2))
    atomic_write_text(out_dir / "ledger.json",
                      json.dumps({"summary": report["ledger"], "messages": ledger.entries}, indent=2))
    write_report(report, out_dir)
