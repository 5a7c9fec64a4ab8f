"""A silo: private domain data, local fine-tuning, teacher answers, local evaluation.

Transport-neutral: :meth:`Silo.handle` takes a request :class:`Payload` and returns the reply
payload. The Flower ClientApp and the in-process federation both call it, so what leaves a silo
is the same in every mode: weights + catalogue + aggregate metrics after training, score rows
for coordinator-made pseudo-users, aggregate metrics after evaluation. Nothing else.

What leaves, and on what terms, is decided here from the silo's own settings
(:class:`SiloPolicy`, from its node config in deployment), never from the request: the
evaluation protocol and user set, the least number of users a metric is released over, the
lifetime answer budget, the size of what it accepts, whether other silos may evaluate its
weights, which encoder folders it reads. An unexpected error reaches the coordinator as a
generic message with an incident code; the detail (which may name users) stays in the silo's
log.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from ..config import from_dict, with_overrides
from ..data import Domain
from ..distill import teacher_scores
from ..evaluation import EvalConfig, evaluate_model, evaluate_popularity
from ..io import atomic_write_text
from ..model import TextSeqRec, model_from_state, state_hash
from ..model.recommender import ItemInputs
from ..backbone import item_inputs
from ..settings.bounds import AT_LEAST_1, Bound, check_bounds
from ..settings.training import check_interpolation, check_loss
from ..training import TrainConfig, checkpoint_path, fine_tune_cached
from .budget import Budget, BudgetExceeded, BudgetLedger
from .protocol import (CATALOGUE_FORMS, EVALUATE, INFO, QUERY, TRAIN, VALIDATE, Payload,
                       QueryRefused, RunSettings, TrainReply,
                       decode_eval_request, decode_sequences, decode_train_request, encode_answer,
                       encode_eval_reply, encode_train_reply)

OWN_TRAIN_METRIC = "train."  # prefix of the reply metrics naming a silo's own training settings
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class SiloPolicy:
    """What a silo answers, and on what terms (its own settings, never the coordinator's).

    ``eval``: its evaluation protocol (split, cut-offs, history masking, users: all of the
    split unless ``max_users``). ``min_users``: no metric is released over fewer users.
    ``budget``: lifetime limits (:class:`~common.federated.budget.Budget`); ``query_budget``:
    pseudo-user rows per run on top (``None``: only the lifetime limit). ``max_*``: the largest
    message it accepts (``max_query_length``: items in one pseudo-user's history; the model
    reads at most its ``max_len`` anyway). ``share_weights``: other silos may evaluate its fine-tuned weights (the
    cross-domain matrix); off by default. ``encoder_dirs``: local encoder folders it accepts
    besides the packaged MiniLM and the hashing encoder. ``metric_epsilon``: Laplace noise of
    scale 1 / (users · ε) on every released metric (``None``: none). ``catalogue_forms``: how
    it may share its catalogue (``text``, ``vectors``). ``max_answer_topk``: teacher answers
    only as top-k lists of at most this many items (``None``: full score rows allowed).
    ``answer_validation``: a training silo releases Recall/NDCG@10 of candidate models on its
    validation split (``query.validate``: how the coordinator chooses a merge's
    hyper-parameters and the new-domain path), over at most ``validation_max_users`` users
    (``None``: all of the split), under the same budget, ``min_users`` and noise as evaluation.
    """

    eval: EvalConfig = field(default_factory=EvalConfig)
    min_users: int = 20
    budget: Budget = field(default_factory=Budget)
    query_budget: int | None = None
    max_rows_per_message: int = 20_000
    max_query_length: int = 200
    max_models_per_message: int = 64
    max_model_values: int = 50_000_000
    share_weights: bool = False
    encoder_dirs: list[str] = field(default_factory=list)
    metric_epsilon: float | None = None
    catalogue_forms: list[str] = field(default_factory=lambda: list(CATALOGUE_FORMS))
    max_answer_topk: int | None = None
    answer_validation: bool = True
    validation_max_users: int | None = None

    def __post_init__(self) -> None:
        if not set(self.catalogue_forms) <= set(CATALOGUE_FORMS):
            raise ValueError(f"catalogue_forms must be among {list(CATALOGUE_FORMS)}, "
                             f"got {self.catalogue_forms}")
        check_bounds(self, min_users=Bound(1, why="no metric over fewer users"),
                     query_budget=AT_LEAST_1, max_rows_per_message=AT_LEAST_1,
                     max_query_length=AT_LEAST_1,
                     max_models_per_message=AT_LEAST_1, max_model_values=AT_LEAST_1,
                     metric_epsilon=Bound(0, strict=True, why="the noise of released metrics"),
                     max_answer_topk=AT_LEAST_1, validation_max_users=AT_LEAST_1)

    def validation(self) -> EvalConfig:
        """The protocol of ``query.validate``: the silo's own, on its validation split, at 10."""
        return replace(self.eval, split="val", ks=(10,), max_users=self.validation_max_users)


@dataclass
class SiloConfig:
    """A silo's identity and settings (from its node config in deployment).

    ``name`` is also a folder name, so it must be a plain name (letters, digits, ``._-``).
    ``eval_only``: an unseen domain; it never trains or answers queries, it only evaluates.
    ``feature_cache``: where item text vectors are cached (default ``<work_dir>/features``).
    ``train``: the silo's own fine-tuning settings (:class:`~common.training.TrainConfig` keys,
    e.g. a batch size chosen on its own validation split), applied over the coordinator's and
    reported with the update as ``train.<key>`` metrics. The architecture stays the run's: the
    models must have one shape to be merged.
    """

    name: str
    work_dir: str
    eval_only: bool = False
    feature_cache: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    policy: SiloPolicy = field(default_factory=SiloPolicy)

    def __post_init__(self) -> None:
        if not SAFE_NAME.fullmatch(self.name):
            raise ValueError(f"silo name {self.name!r}: use letters, digits, '.', '_', '-' "
                             "(at most 64, not starting with '.' or '-')")
        self.train_config(TrainConfig())  # a bad override fails when the silo is set up

    def train_config(self, coordinator: TrainConfig) -> TrainConfig:
        """The coordinator's fine-tuning settings with this silo's own over them. DP is the
        silo's: its own ``dp`` replaces the run's whole, and a noise multiplier never comes
        from the coordinator (the silo calibrates it to the ε asked for)."""
        asked = coordinator
        if "dp" in self.train:
            asked = replace(asked, dp=None)
        elif asked.dp is not None:
            asked = replace(asked, dp=replace(asked.dp, noise_multiplier=None))
        return with_overrides(asked, self.train, f"silo {self.name}: train")


class Silo:
    """Serves the message kinds for one domain; ``load_domain`` reads the private data."""

    def __init__(self, cfg: SiloConfig, load_domain: Callable[[], Domain]) -> None:
        self.cfg = cfg
        self.policy = cfg.policy
        self._load_domain = load_domain
        self.work = Path(cfg.work_dir)
        self.budget = BudgetLedger(self.work, cfg.policy.budget)
        self._features: dict[tuple[str, bool, int], ItemInputs] = {}
        self._teachers: dict[str, TextSeqRec] = {}  # checkpoint path -> loaded model
        self.log = logging.getLogger(f"mergerec.silo.{cfg.name}")

    @cached_property
    def domain(self) -> Domain:
        return self._load_domain()

    def features(self, run: RunSettings) -> ItemInputs:
        """The model's item inputs (frozen text vectors, or token states below the trainable
        encoder layers), cached on the silo's disk, and in memory while this process serves
        more messages."""
        self._check_encoder(run.encoder)
        key = (run.encoder, run.center_features, run.model.text_layers)
        if key not in self._features:
            self._features[key] = item_inputs(self.domain.item_texts, run.encoder, run.model,
                                              run.center_features,
                                              self.cfg.feature_cache or self.work / "features",
                                              self.cfg.name)
        return self._features[key]

    def _check_encoder(self, spec: str) -> None:
        """Only the packaged encoders and the folders this silo allows; the refusal does not
        say whether a folder exists."""
        if spec == "minilm" or re.fullmatch(r"hashing(-\d{1,4})?", spec):
            return
        allowed = {str(Path(d).resolve()) for d in self.policy.encoder_dirs}
        if str(Path(spec).resolve()) not in allowed:
            raise QueryRefused(f"silo {self.cfg.name}: text encoder {spec!r} is not one this "
                               "silo uses (its node config lists the folders it accepts)")

    def handle(self, kind: str, request: Payload, run_id: str) -> Payload:
        """Answer one message. Refusals raise :class:`QueryRefused` with a reason that holds
        no data; any other error is logged here and answered with an incident code only."""
        try:
            return self._handle(kind, request, run_id)
        except QueryRefused:
            raise
        except BudgetExceeded as exc:
            raise QueryRefused(f"silo {self.cfg.name}: {exc}") from None
        except Exception:  # noqa: BLE001 - the detail may name users: it stays in the silo
            incident = uuid.uuid4().hex[:8]
            self.log.error("incident %s during %s:\n%s", incident, kind, traceback.format_exc())
            raise QueryRefused(f"silo {self.cfg.name}: {kind} failed (incident {incident}; "
                               "the detail is in the silo's log)") from None

    def _handle(self, kind: str, request: Payload, run_id: str) -> Payload:
        if not SAFE_NAME.fullmatch(run_id):
            raise QueryRefused("the run id must be a plain name")
        if kind == INFO:
            return Payload(config={"silo": self.cfg.name,
                                   "role": "eval" if self.cfg.eval_only else "train"})
        if kind == TRAIN:
            return self.train(request, run_id)
        if kind == QUERY:
            return self.answer(request, run_id)
        if kind == EVALUATE:
            return self.evaluate(request, self.policy.eval)
        if kind == VALIDATE:
            if self.cfg.eval_only or not self.policy.answer_validation:
                raise QueryRefused(f"silo {self.cfg.name} releases no validation metrics")
            return self.evaluate(request, self.policy.validation(), popularity=False)
        raise QueryRefused(f"silo {self.cfg.name}: unknown message kind {kind!r}")

    # --- train -------------------------------------------------------------------------
    def train(self, request: Payload, run_id: str) -> Payload:
        """Fine-tune from the received θ₀ (reusing a kept checkpoint for the same θ₀ and config)."""
        if self.cfg.eval_only:
            raise QueryRefused(f"silo {self.cfg.name} is evaluation-only: it does not train")
        try:
            req = decode_train_request(request, self.policy.max_model_values)
        except QueryRefused:
            raise
        except (KeyError, ValueError, TypeError) as exc:  # the coordinator's own values only
            raise QueryRefused(f"malformed training request ({type(exc).__name__}: {exc})") \
                from None
        if req.catalogue not in self.policy.catalogue_forms:
            raise QueryRefused(f"silo {self.cfg.name} shares its catalogue only as "
                               f"{' or '.join(self.policy.catalogue_forms) or 'nothing'}")
        if req.catalogue == "vectors" and req.run.model.text_layers:
            raise QueryRefused("catalogue 'vectors' needs frozen item vectors "
                               "(the run trains text encoder layers)")
        train_cfg = self.cfg.train_config(req.train)
        try:
            check_interpolation(train_cfg, f"silo {self.cfg.name}: train")
            check_loss(train_cfg, req.run.model, f"silo {self.cfg.name}: train")
        except ValueError as exc:
            raise QueryRefused(str(exc)) from None
        feats = self.features(req.run)
        ckpt_dir = self.work / "checkpoints"
        state, stats = fine_tune_cached(req.base, req.run.model, [self.domain], [feats], train_cfg,
                                        ckpt_dir)
        path = checkpoint_path(ckpt_dir, req.base, req.run.model, train_cfg, [self.domain])
        earlier = self._read_run(run_id)  # training again in a run keeps its query count
        self._write_run(run_id, {"checkpoint": str(path), "run": json.loads(str(request.config["run"])),
                                 "queries": int(earlier["queries"]) if earlier else 0,
                                 "dp_epsilon": stats.get("dp_epsilon")})
        own = {OWN_TRAIN_METRIC + k: float(v) for k, v in self.cfg.train.items()
               if isinstance(v, (int, float))}
        reply = TrainReply(state, state_hash(req.base), {**stats, **own, "num-examples": float(
            sum(len(s) for s in self.domain.train))}, share_weights=self.policy.share_weights)
        if req.catalogue == "text":
            reply.item_texts = list(self.domain.item_texts)
        else:
            reply.item_vectors = feats  # type: ignore[assignment]
        return encode_train_reply(reply, self.cfg.name)

    # --- query -------------------------------------------------------------------------
    def answer(self, request: Payload, run_id: str) -> Payload:
        """The fine-tuned model's scores for coordinator-made pseudo-users (full rows or top-k)."""
        if self.cfg.eval_only:
            raise QueryRefused(f"silo {self.cfg.name} is evaluation-only: it answers no queries")
        record = self._read_run(run_id)
        if record is None:
            raise QueryRefused(f"silo {self.cfg.name} has not trained in this run")
        if "sequences" not in request.arrays:
            raise QueryRefused("the query has no 'sequences' array")
        rows, width = (tuple(getattr(request.arrays["sequences"], "shape", ())) + (0, 0))[:2]
        if rows > self.policy.max_rows_per_message:
            raise QueryRefused(f"{rows} pseudo-users in one message; this silo answers at most "
                               f"{self.policy.max_rows_per_message}")
        if width > self.policy.max_query_length:
            raise QueryRefused(f"pseudo-users of {width} items; this silo reads at most "
                               f"{self.policy.max_query_length} per pseudo-user")
        seqs = decode_sequences(request.arrays["sequences"], self.domain.num_items)
        topk = request.config.get("topk", 0)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 0:
            raise QueryRefused("topk must be a non-negative integer")
        cap = self.policy.max_answer_topk
        if cap is not None and not 1 <= topk <= cap:
            raise QueryRefused(f"silo {self.cfg.name} answers only top-k lists of at most {cap} "
                               "items")
        if request.config.get("require-dp") and record.get("dp_epsilon") is None:
            raise QueryRefused(f"silo {self.cfg.name}: the run asks for DP but this silo's model "
                               "was not trained with DP; it answers no queries")
        used, per_run = int(record["queries"]), self.policy.query_budget
        if per_run is not None and used + len(seqs) > per_run:
            raise QueryRefused(f"silo {self.cfg.name}: query budget exceeded ({used} of {per_run} "
                               f"pseudo-users used in this run, {len(seqs)} more asked)")
        path = str(record["checkpoint"])
        self.budget.spend_rows(Path(path).stem, len(seqs))
        record["queries"] = used + len(seqs)
        self._write_run(run_id, record)
        run = from_dict(RunSettings, record["run"], f"{self._run_file(run_id)}: run")
        if path not in self._teachers:  # walks ask several times per run
            self._teachers[path] = model_from_state(run.model, load_file(path))
        signal = teacher_scores(self._teachers[path], self.features(run), seqs, topk or None)
        return encode_answer(signal, self.cfg.name)

    # --- evaluate ----------------------------------------------------------------------
    def evaluate(self, request: Payload, protocol: EvalConfig, popularity: bool = True) -> Payload:
        """Aggregate metrics of the received models under ``protocol`` (the silo's own: its
        evaluation or its validation protocol) on its users (and popularity, unless
        ``popularity`` is off), released only over at least ``min_users`` users."""
        try:
            req = decode_eval_request(request, self.policy.max_models_per_message,
                                      self.policy.max_model_values)
        except QueryRefused:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise QueryRefused(f"malformed evaluation request ({type(exc).__name__})") from None
        users = len(self.domain.eval_examples(protocol.split)[0])
        if protocol.max_users is not None:
            users = min(users, protocol.max_users)
        if users < self.policy.min_users:
            raise QueryRefused(f"silo {self.cfg.name} releases metrics over at least "
                               f"{self.policy.min_users} users")
        self.budget.spend_eval(len(req.models))
        feats = self.features(req.run)
        results = {}
        for label, state in req.models.items():
            try:
                model = model_from_state(req.model_config(label), state)
            except (RuntimeError, ValueError):
                raise QueryRefused(f"model {label!r} does not fit the run's architecture") from None
            results[label] = self._release(evaluate_model(model, self.domain, feats, protocol).metrics,
                                           users)
        if req.popularity and popularity:
            results["popularity"] = self._release(
                evaluate_popularity(self.domain, protocol).metrics, users)
        return encode_eval_reply(results, self.cfg.name, {
            "split": protocol.split, "ks": list(protocol.ks), "mask_history": protocol.mask_history,
            "users": users, "metric_epsilon": self.policy.metric_epsilon})

    def _release(self, metrics: dict[str, float], users: int) -> dict[str, float]:
        """Metrics as released: with Laplace noise when the policy asks for it, in [0, 1]."""
        eps = self.policy.metric_epsilon
        if eps is None:
            return metrics
        noise = torch.distributions.Laplace(0.0, 1.0 / (users * eps))
        return {k: float(min(1.0, max(0.0, v + float(noise.sample())))) for k, v in metrics.items()}

    # --- per-run record on the silo's disk (survives one-process-per-message deployment) --
    def _run_file(self, run_id: str) -> Path:
        return self.work / "runs" / f"{run_id}.json"

    def _read_run(self, run_id: str) -> dict | None:
        path = self._run_file(run_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_run(self, run_id: str, record: dict) -> None:
        atomic_write_text(self._run_file(run_id), json.dumps(record))


def policy_from(values: dict[str, Any], where: str) -> SiloPolicy:
    """A :class:`SiloPolicy` from a mapping of its keys (YAML or parsed node config); errors
    name ``where`` and the key."""
    return from_dict(SiloPolicy, values, where)
