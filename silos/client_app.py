"""The silo ClientApp: one private domain behind five message handlers.

``query.info`` (name and role), ``train`` (fine-tune from the received θ₀), ``query.distill``
(answer coordinator-made pseudo-users), ``evaluate`` (metrics of received models on the private
split) and ``query.validate`` (the same on the validation split, to choose among candidates). Each handler is a thin wrapper over :class:`common.federated.Silo`.

Who the silo is and what it answers: in deployment only from the SuperNode's node config
(``silo``, ``data-dir``, optional ``format``, ``work-dir``, ``eval-only``, ``audit-dir``,
``encoder-dir``, its policy keys (:data:`POLICY_KEYS`, :data:`BUDGET_KEYS`, :data:`EVAL_KEYS`,
``eval-ks``) and its own fine-tuning settings as ``train-*`` keys, e.g. ``train-batch-size``);
nothing the run config says reaches a deployed silo's disk or policy. In simulation, where a
node only knows its ``partition-id`` and one operator runs every silo, partition ``i`` is the
``i``-th domain of the run's experiment config and the silo settings come from the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.numpy import save_file

from common.config import to_dict
from common.experiment import config_from_run, load_domain, load_source
from common.federated import (EVALUATE, INFO, QUERY, TRAIN, VALIDATE, Payload, QueryRefused, Silo,
                              SiloConfig, SiloPolicy)
from common.federated.silo import policy_from
from common.pipeline import simulated_silo_config
from common.settings import DomainSource

from .records import from_record, to_record

app = ClientApp()
_SILOS: dict[tuple[str, str], Silo] = {}  # reused across messages handled by one process
TRAIN_PREFIX = "train-"
TRAIN_DP_PREFIX = "train-dp-"  # the silo's own DP settings (TrainConfig.dp)


def root_dir(ctx: Context) -> Path:
    """Base for relative paths: the run config's ``root-dir`` (default: working directory)."""
    return Path(str(ctx.run_config.get("root-dir", "") or ".")).resolve()


def own_train_settings(node_config: Mapping[str, object]) -> dict[str, object]:
    """The silo's own fine-tuning settings from its node config: ``train-batch-size=32`` →
    ``{"batch_size": 32}`` (any :class:`~common.training.TrainConfig` key), and its DP settings
    ``train-dp-epsilon=8.0`` → ``{"dp": {"epsilon": 8.0}}``."""
    out: dict[str, object] = {}
    for key, value in node_config.items():
        if key.startswith(TRAIN_DP_PREFIX):
            dp = out.setdefault("dp", {})
            dp[key[len(TRAIN_DP_PREFIX):].replace("-", "_")] = value  # type: ignore[index]
        elif key.startswith(TRAIN_PREFIX):
            out[key[len(TRAIN_PREFIX):].replace("-", "_")] = value
    return out


POLICY_KEYS = {  # node config key -> SiloPolicy field (flat keys, as Flower's node config holds)
    "query-budget": "query_budget", "min-users": "min_users", "share-weights": "share_weights",
    "max-rows-per-message": "max_rows_per_message", "max-query-length": "max_query_length",
    "metric-epsilon": "metric_epsilon",
    "max-models-per-message": "max_models_per_message", "max-model-values": "max_model_values",
    "max-answer-topk": "max_answer_topk", "answer-validation": "answer_validation",
    "validation-max-users": "validation_max_users",
}
BUDGET_KEYS = {"budget-eval-calls": "eval_calls", "budget-models": "models_evaluated",
               "budget-rows": "distill_rows"}
EVAL_KEYS = {"eval-split": "split", "eval-max-users": "max_users", "eval-mask-history": "mask_history"}


def node_config_entries(cfg: SiloConfig) -> dict[str, bool | int | float | str]:
    """A silo's own settings as the flat node-config keys this app reads (the inverse of
    :func:`node_policy` and :func:`own_train_settings`), for a launcher that starts silos
    with the settings an experiment gives them. Only numbers, true/false and strings fit."""
    pol = cfg.policy
    out: dict[str, Any] = {"eval-only": True} if cfg.eval_only else {}
    out.update({key: getattr(pol, name) for key, name in POLICY_KEYS.items()})
    out.update({key: getattr(pol.budget, name) for key, name in BUDGET_KEYS.items()})
    out.update({key: getattr(pol.eval, name) for key, name in EVAL_KEYS.items()})
    out["eval-ks"] = ",".join(str(k) for k in pol.eval.ks)
    out["catalogue-forms"] = ",".join(pol.catalogue_forms)
    if len(pol.encoder_dirs) > 1:
        raise ValueError(f"silo {cfg.name}: a node config names one encoder folder, "
                         f"not {pol.encoder_dirs}")
    if pol.encoder_dirs:
        out["encoder-dir"] = pol.encoder_dirs[0]
    own = {f"{TRAIN_PREFIX}{k}": v for k, v in cfg.train.items() if k != "dp"}
    own.update({f"{TRAIN_DP_PREFIX}{k}": v for k, v in (cfg.train.get("dp") or {}).items()})
    out.update({key.replace("_", "-"): value for key, value in own.items()})
    out = {k: v for k, v in out.items() if v is not None}
    for key, value in out.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"silo {cfg.name}: {key} = {value!r} cannot be a node config value "
                             "(numbers, true/false and strings only)")
    return out


def node_policy(nc: Mapping[str, object]) -> SiloPolicy:
    """The silo's :class:`SiloPolicy` from its node config (errors name the key)."""
    values: dict[str, object] = {POLICY_KEYS[k]: v for k, v in nc.items() if k in POLICY_KEYS}
    values["budget"] = {BUDGET_KEYS[k]: v for k, v in nc.items() if k in BUDGET_KEYS}
    values["eval"] = {EVAL_KEYS[k]: v for k, v in nc.items() if k in EVAL_KEYS}
    if "eval-ks" in nc:
        values["eval"]["ks"] = [int(k) for k in str(nc["eval-ks"]).split(",") if k.strip()]  # type: ignore[index]
    if "catalogue-forms" in nc:
        values["catalogue_forms"] = [f.strip() for f in str(nc["catalogue-forms"]).split(",")
                                     if f.strip()]
    if nc.get("encoder-dir"):
        values["encoder_dirs"] = [str(Path(str(nc["encoder-dir"])).resolve())]
    if values.get("query_budget") == 0:
        values["query_budget"] = None
    return policy_from(values, "node config")


def silo_for(ctx: Context) -> Silo:
    """This node's silo, from its node config (deployment) or its partition id (simulation:
    one operator runs every silo, so they take their settings from the run's experiment)."""
    nc, rc = ctx.node_config, ctx.run_config
    if "silo" in nc:
        name = str(nc["silo"])
        work = Path(str(nc.get("work-dir") or f".mergerec-silo/{name}")).resolve()
        source = DomainSource(name, str(nc.get("format", "mergerec_json")),  # type: ignore[arg-type]
                              str(Path(str(nc["data-dir"])).resolve()))
        cfg = SiloConfig(name, str(work), bool(nc.get("eval-only", False)),
                         train=own_train_settings(nc), policy=node_policy(nc))
        load = lambda: load_source(source, work / "data-cache")  # noqa: E731
    else:
        exp = config_from_run(rc, root_dir(ctx))
        names = exp.data.domain_names()
        pid = int(nc["partition-id"])  # type: ignore[call-overload]
        if pid >= len(names):
            raise QueryRefused(f"partition {pid}: the run config has only {len(names)} domains "
                               f"({', '.join(names)}); start as many SuperNodes as domains")
        name = names[pid]
        cfg = simulated_silo_config(exp, name, root_dir(ctx) / str(rc.get("work-dir", ".cache/silos"))
                                    / name)
        load = lambda: load_domain(exp.data, name)  # noqa: E731
    key = (cfg.name, json.dumps(to_dict(cfg), sort_keys=True))
    if key not in _SILOS:
        _SILOS[key] = Silo(cfg, load)
    return _SILOS[key]


def _inject_fault(ctx: Context, silo: str, kind: str) -> None:
    """Chaos testing: run config ``fault = "<silo>:<message kind>"`` makes that silo raise when
    it gets a message of that kind."""
    target, _, fault_kind = str(ctx.run_config.get("fault", "") or "").partition(":")
    if target == silo and fault_kind == kind:
        raise RuntimeError(f"injected fault in silo {silo} during {kind}")


def _audit(ctx: Context, silo: str, kind: str, reply: Payload | None, error: str = "") -> None:
    """With ``audit-dir`` set, archive every outgoing reply verbatim. A deployed silo takes the
    folder from its own node config only; in simulation (one operator) from the run config."""
    deployed = "silo" in ctx.node_config
    where = str((ctx.node_config if deployed else ctx.run_config).get("audit-dir", "") or "")
    if not where:
        return
    folder = (Path(where) if deployed else root_dir(ctx) / where).resolve() / silo
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{ctx.run_id}-{len(list(folder.glob('*.json'))):04d}-{kind}"
    if reply is not None and reply.arrays:
        save_file(reply.arrays, f"{stem}.safetensors")
    record = {"kind": kind, "error": error} if reply is None else \
        {"kind": kind, "config": reply.config, "metrics": reply.metrics, "arrays": sorted(reply.arrays)}
    Path(f"{stem}.json").write_text(json.dumps(record, default=str))


def _serve(kind: str, msg: Message, ctx: Context) -> Message:
    silo = silo_for(ctx)
    _inject_fault(ctx, silo.cfg.name, kind)
    try:
        reply = silo.handle(kind, from_record(msg.content), str(ctx.run_id))
    except Exception as exc:
        _audit(ctx, silo.cfg.name, kind, None, f"{type(exc).__name__}: {exc}")
        raise
    _audit(ctx, silo.cfg.name, kind, reply)
    return Message(to_record(reply), reply_to=msg)


@app.query("info")
def info(msg: Message, ctx: Context) -> Message:
    """Name and role (``train`` or ``eval``) of this silo."""
    return _serve(INFO, msg, ctx)


@app.train()
def train(msg: Message, ctx: Context) -> Message:
    """Fine-tune from θ₀; reply with weights, catalogue and aggregate training metrics."""
    return _serve(TRAIN, msg, ctx)


@app.query("distill")
def distill(msg: Message, ctx: Context) -> Message:
    """Scores of the silo's fine-tuned model for the coordinator's pseudo-users."""
    return _serve(QUERY, msg, ctx)


@app.evaluate()
def evaluate(msg: Message, ctx: Context) -> Message:
    """Aggregate metrics of the received models on the silo's private split."""
    return _serve(EVALUATE, msg, ctx)


@app.query("validate")
def validate(msg: Message, ctx: Context) -> Message:
    """Recall/NDCG@10 of candidate models on the silo's validation split (choosing among them)."""
    return _serve(VALIDATE, msg, ctx)
