"""A silo: private domain data, local fine-tuning, teacher answers, local evaluation.

Transport-neutral: :meth:`Silo.handle` takes a request :class:`Payload` and returns the reply
payload. The Flower ClientApp and the in-process federation both call it, so what leaves a silo
is the same in every mode: weights + catalogue + aggregate metrics after training, score rows
for coordinator-made pseudo-users, aggregate metrics after evaluation. Nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file

from ..config import from_dict, with_overrides
from ..data import Domain
from ..io import atomic_write_text
from ..distill import teacher_scores
from ..evaluation import evaluate_model, evaluate_popularity
from ..model import TextSeqRec, model_from_state, state_hash
from ..model.recommender import ItemInputs
from ..backbone import item_inputs
from ..training import TrainConfig, checkpoint_path, fine_tune_cached
from .protocol import (EVALUATE, INFO, QUERY, TRAIN, Payload, QueryRefused, RunSettings, TrainReply,
                       decode_eval_request, decode_sequences, decode_train_request, encode_answer,
                       encode_eval_reply, encode_train_reply)


OWN_TRAIN_METRIC = "train."  # prefix of the reply metrics naming a silo's own training settings


@dataclass
class SiloConfig:
    """A silo's own settings (from its node config in deployment).

    ``query_budget``: most pseudo-user rows it answers per run (``None``: unlimited).
    ``eval_only``: an unseen domain; it never trains or answers queries, it only evaluates.
    ``feature_cache``: where item text vectors are cached (default ``<work_dir>/features``).
    ``train``: the silo's own fine-tuning settings (:class:`~common.training.TrainConfig` keys,
    e.g. a batch size chosen on its own validation split), applied over the coordinator's and
    reported with the update as ``train.<key>`` metrics. The architecture stays the run's: the
    models must have one shape to be merged.
    """

    name: str
    work_dir: str
    query_budget: int | None = None
    eval_only: bool = False
    feature_cache: str | None = None
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train_config(TrainConfig())  # a bad override fails when the silo is set up

    def train_config(self, coordinator: TrainConfig) -> TrainConfig:
        """The coordinator's fine-tuning settings with this silo's own over them."""
        return with_overrides(coordinator, self.train, f"silo {self.name}: train")


class Silo:
    """Serves the three message kinds for one domain; ``load_domain`` reads the private data."""

    def __init__(self, cfg: SiloConfig, load_domain: Callable[[], Domain]) -> None:
        self.cfg = cfg
        self._load_domain = load_domain
        self.work = Path(cfg.work_dir)
        self._features: dict[tuple[str, bool, int], ItemInputs] = {}
        self._teachers: dict[str, TextSeqRec] = {}  # checkpoint path -> loaded model

    @cached_property
    def domain(self) -> Domain:
        return self._load_domain()

    def features(self, run: RunSettings) -> ItemInputs:
        """The model's item inputs (frozen text vectors, or token states below the trainable
        encoder layers), cached on the silo's disk, and in memory while this process serves
        more messages."""
        key = (run.encoder, run.center_features, run.model.text_layers)
        if key not in self._features:
            self._features[key] = item_inputs(self.domain.item_texts, run.encoder, run.model,
                                              run.center_features,
                                              self.cfg.feature_cache or self.work / "features",
                                              self.cfg.name)
        return self._features[key]

    def handle(self, kind: str, request: Payload, run_id: str) -> Payload:
        """Answer one message; refusals raise :class:`QueryRefused` with the reason."""
        if kind == INFO:
            return Payload(config={"silo": self.cfg.name,
                                   "role": "eval" if self.cfg.eval_only else "train"})
        if kind == TRAIN:
            return self.train(request, run_id)
        if kind == QUERY:
            return self.answer(request, run_id)
        if kind == EVALUATE:
            return self.evaluate(request)
        raise QueryRefused(f"silo {self.cfg.name}: unknown message kind '{kind}'")

    # --- train -------------------------------------------------------------------------
    def train(self, request: Payload, run_id: str) -> Payload:
        """Fine-tune from the received θ₀ (reusing a kept checkpoint for the same θ₀ and config)."""
        if self.cfg.eval_only:
            raise QueryRefused(f"silo {self.cfg.name} is evaluation-only: it does not train")
        req = decode_train_request(request)
        if req.catalogue == "vectors" and req.run.model.text_layers:
            raise QueryRefused("catalogue 'vectors' needs frozen item vectors "
                               "(the run trains text encoder layers)")
        feats = self.features(req.run)
        ckpt_dir = self.work / "checkpoints"
        train_cfg = self.cfg.train_config(req.train)
        state, stats = fine_tune_cached(req.base, req.run.model, [self.domain], [feats], train_cfg,
                                        ckpt_dir)
        path = checkpoint_path(ckpt_dir, req.base, req.run.model, train_cfg, [self.domain])
        self._write_run(run_id, {"checkpoint": str(path), "run": json.loads(str(request.config["run"])),
                                 "queries": 0, "dp_epsilon": stats.get("dp_epsilon")})
        own = {OWN_TRAIN_METRIC + k: float(v) for k, v in self.cfg.train.items()
               if isinstance(v, (int, float))}
        reply = TrainReply(state, state_hash(req.base), {**stats, **own, "num-examples": float(
            sum(len(s) for s in self.domain.train))})
        if req.catalogue == "text":
            reply.item_texts = list(self.domain.item_texts)
        else:
            reply.item_vectors = feats
        return encode_train_reply(reply, self.cfg.name)

    # --- query -------------------------------------------------------------------------
    def answer(self, request: Payload, run_id: str) -> Payload:
        """The fine-tuned model's scores for coordinator-made pseudo-users (full rows or top-k)."""
        if self.cfg.eval_only:
            raise QueryRefused(f"silo {self.cfg.name} is evaluation-only: it answers no queries")
        record = self._read_run(run_id)
        if record is None:
            raise QueryRefused(f"silo {self.cfg.name} has not trained in run {run_id}")
        if "sequences" not in request.arrays:
            raise QueryRefused("the query has no 'sequences' array")
        seqs = decode_sequences(request.arrays["sequences"], self.domain.num_items)
        topk = request.config.get("topk", 0)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 0:
            raise QueryRefused(f"topk must be a non-negative integer, got {topk!r}")
        if request.config.get("require-dp") and record.get("dp_epsilon") is None:
            raise QueryRefused(f"silo {self.cfg.name}: the run asks for DP but this silo's model "
                               "was not trained with DP; it answers no queries")
        used = int(record["queries"])
        budget = self.cfg.query_budget
        if budget is not None and used + len(seqs) > budget:
            raise QueryRefused(f"silo {self.cfg.name}: query budget exceeded ({used} of {budget} "
                               f"pseudo-users used, {len(seqs)} more asked)")
        record["queries"] = used + len(seqs)
        self._write_run(run_id, record)
        run = from_dict(RunSettings, record["run"], f"{self._run_file(run_id)}: run")
        path = str(record["checkpoint"])
        if path not in self._teachers:  # walks ask several times per run
            self._teachers[path] = model_from_state(run.model, load_file(path))
        model = self._teachers[path]
        signal = teacher_scores(model, self.features(run), seqs, topk or None)
        return encode_answer(signal, self.cfg.name)

    # --- evaluate ----------------------------------------------------------------------
    def evaluate(self, request: Payload) -> Payload:
        """Aggregate metrics of every received model on the private split (and popularity)."""
        req = decode_eval_request(request)
        feats = self.features(req.run)
        results = {label: evaluate_model(model_from_state(req.run.model, state), self.domain, feats,
                                         req.eval).metrics
                   for label, state in req.models.items()}
        if req.popularity:
            results["popularity"] = evaluate_popularity(self.domain, req.eval).metrics
        return encode_eval_reply(results, self.cfg.name)

    # --- per-run record on the silo's disk (survives one-process-per-message deployment) --
    def _run_file(self, run_id: str) -> Path:
        return self.work / "runs" / f"{run_id}.json"

    def _read_run(self, run_id: str) -> dict | None:
        path = self._run_file(run_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_run(self, run_id: str, record: dict) -> None:
        atomic_write_text(self._run_file(run_id), json.dumps(record))
