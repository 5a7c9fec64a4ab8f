"""What the coordinator and a silo exchange, as transport-neutral payloads.

A :class:`Payload` is flat: named numpy arrays, scalar/str/list config values and float
metrics; it maps one to one onto a Flower ``RecordDict`` (``arrays`` → ArrayRecord,
``config`` → ConfigRecord, ``metrics`` → MetricRecord) and is what the in-process federation
passes around too, so both transports send exactly the same content. The ``encode_*`` /
``decode_*`` pairs below are the only place that knows the layout.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Literal, Union

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..distill import TeacherSignal
from ..model import ModelConfig
from ..settings import ServingConfig
from ..training import TrainConfig

ConfigValue = Union[int, float, str, bool, bytes, list[int], list[float], list[str]]
StateDict = dict[str, torch.Tensor]

INFO, TRAIN, QUERY, EVALUATE = "query.info", "train", "query.distill", "evaluate"
VALIDATE = "query.validate"  # metrics on the silo's validation split, to choose among candidates
MESSAGE_KINDS = (INFO, TRAIN, QUERY, EVALUATE, VALIDATE)
PAD = -1  # padding id of pseudo-user sequences in a query
MAX_TEXT_CHARS = 20_000  # longest item text a coordinator accepts in a catalogue


class QueryRefused(ValueError):
    """A silo refuses a request (malformed, out of range, over budget, wrong role)."""


@dataclass
class Failure:
    """A silo that raised, refused, timed out or disappeared during one stage."""

    silo: str
    stage: str
    reason: str


@dataclass
class Payload:
    """One message's content."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, ConfigValue] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of arrays, strings and numbers (what a ledger counts)."""
        size = sum(int(a.nbytes) for a in self.arrays.values())
        for v in self.config.values():
            items = v if isinstance(v, list) else [v]
            size += sum(len(x.encode()) if isinstance(x, str) else
                        len(x) if isinstance(x, bytes) else 8 for x in items)
        return size + 8 * len(self.metrics)


@dataclass
class RunSettings:
    """What every request carries so a silo can rebuild the model and its item vectors."""

    encoder: str
    center_features: bool
    model: ModelConfig


CATALOGUE_FORMS = ("text", "vectors")  # how a silo may share its catalogue


@dataclass
class TrainRequest:
    base: StateDict
    run: RunSettings
    train: TrainConfig
    catalogue: Literal["text", "vectors"] = "text"


@dataclass
class TrainReply:
    """A silo's fine-tuned weights, the θ₀ hash it trained from, its catalogue (texts or
    frozen vectors), aggregate training metrics, and whether it lets other silos evaluate its
    weights (its own node config decides)."""

    state: StateDict
    base_hash: str
    metrics: dict[str, float]
    item_texts: list[str] | None = None
    item_vectors: torch.Tensor | None = None
    share_weights: bool = False


@dataclass
class EvalRequest:
    """The models a silo is asked to evaluate, with how each scores a catalogue where that is
    not the run's (``serving``, by label); the protocol (split, cut-offs, users) is the silo's
    own, never the coordinator's."""

    models: dict[str, StateDict]
    run: RunSettings
    popularity: bool = True
    serving: dict[str, ServingConfig] = field(default_factory=dict)

    def model_config(self, label: str) -> ModelConfig:
        """The architecture and serving settings ``label`` is evaluated with."""
        own = self.serving.get(label)
        return self.run.model if own is None else replace(self.run.model, serving=own)


def _pack(key: str, state: StateDict) -> tuple[dict[str, np.ndarray], dict[str, ConfigValue]]:
    """A float32 state dict as ONE flat array plus its layout (names and shapes).

    One array per model instead of one per tensor: Flower moves every array as its own
    object, and a model of ~30 tensors per message cost seconds of round trips each.
    """
    names = list(state)
    for n in names:
        if state[n].dtype != torch.float32:
            raise ValueError(f"only float32 weights are exchanged; {n} is {state[n].dtype}")
    flat = (torch.cat([state[n].detach().reshape(-1).cpu() for n in names]) if names
            else torch.zeros(0)).contiguous().numpy()
    layout = json.dumps([[n, list(state[n].shape)] for n in names])
    return {key: flat}, {f"{key}#layout": layout}


Layout = list[tuple[str, list[int]]]


def layout_of(state: StateDict) -> Layout:
    """Names and shapes of a state dict, in order (what a packed model must match)."""
    return [(n, list(t.shape)) for n, t in state.items()]


def _layout(p: Payload, key: str, max_values: int) -> Layout:
    """A packed model's declared layout, checked against its array's dtype and size before
    anything is copied; at most ``max_values`` floats."""
    if key not in p.arrays or f"{key}#layout" not in p.config:
        raise ValueError(f"'{key}' or its layout is missing")
    try:
        raw = json.loads(str(p.config[f"{key}#layout"]))
        layout = [(str(n), [int(d) for d in shape]) for n, shape in raw]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"'{key}': unreadable layout ({type(exc).__name__})") from None
    sizes = [math.prod(shape) if all(d >= 0 for d in shape) else -1 for _, shape in layout]
    flat = p.arrays[key]
    if min(sizes, default=0) < 0 or sum(sizes) > max_values:
        raise ValueError(f"'{key}': the layout declares negative or more than {max_values} values")
    if not isinstance(flat, np.ndarray) or flat.dtype != np.float32 or flat.ndim != 1 \
            or flat.size != sum(sizes):
        raise ValueError(f"'{key}': {getattr(flat, 'dtype', '?')} array of shape "
                         f"{getattr(flat, 'shape', '?')} does not match its layout "
                         f"({sum(sizes)} float32 values)")
    return layout


def _unpack(p: Payload, key: str, expected: Layout | None = None,
            max_values: int = 1 << 28) -> StateDict:
    """Inverse of :func:`_pack`. With ``expected`` the layout must hold exactly those names and
    shapes (in any order); anything that does not fit raises ``ValueError`` before arrays are
    copied."""
    layout = _layout(p, key, max_values)
    got = dict(layout)
    if len(got) != len(layout):
        raise ValueError(f"'{key}': a tensor name appears twice in the layout")
    if expected is not None and got != dict(expected):
        diff = [n for n, s in expected if got.get(n) != s] + \
               [n for n in got if n not in dict(expected)]
        raise ValueError(f"'{key}': layout differs from θ₀'s ({len(diff)} tensors, "
                         f"first: {diff[0]})")
    out, start = {}, 0
    tensor = torch.from_numpy(np.array(p.arrays[key], copy=True))
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = tensor[start:start + size].reshape(shape).clone()
        start += size
    return out


def _run_config(run: RunSettings) -> dict[str, ConfigValue]:
    return {"run": json.dumps(to_dict(run))}


def _run_from(config: dict[str, ConfigValue]) -> RunSettings:
    return from_dict(RunSettings, json.loads(str(config["run"])), "run")


def encode_train_request(req: TrainRequest) -> Payload:
    arrays, layout = _pack("base", req.base)
    return Payload(arrays, {**layout, **_run_config(req.run), "train": json.dumps(to_dict(req.train)),
                            "catalogue": req.catalogue})


def decode_train_request(p: Payload, max_values: int) -> TrainRequest:
    """θ₀ (at most ``max_values`` floats), the run's settings and the training config."""
    return TrainRequest(_unpack(p, "base", max_values=max_values), _run_from(p.config),
                        from_dict(TrainConfig, json.loads(str(p.config["train"])), "train"),
                        str(p.config.get("catalogue", "text")))  # type: ignore[arg-type]


def encode_train_reply(rep: TrainReply, silo: str) -> Payload:
    arrays, layout = _pack("weights", rep.state)
    config: dict[str, ConfigValue] = {**layout, "silo": silo, "base-hash": rep.base_hash}
    if rep.item_vectors is not None:
        arrays["item-vectors"] = rep.item_vectors.float().contiguous().numpy()
    if rep.item_texts is not None:
        config["item-texts"] = list(rep.item_texts)
    config["share-weights"] = rep.share_weights
    return Payload(arrays, config, dict(rep.metrics))


def decode_train_reply(p: Payload, base: Layout, max_items: int) -> TrainReply:
    """A silo's update, checked before anything is copied: weights exactly in θ₀'s layout, a
    catalogue of at most ``max_items`` items (texts of at most ``MAX_TEXT_CHARS`` characters,
    or float32 vectors, never both), finite metrics. Anything else raises ``ValueError``."""
    weights = _unpack(p, "weights", expected=base)
    texts, vectors = p.config.get("item-texts"), p.arrays.get("item-vectors")
    if texts is not None and vectors is not None:
        raise ValueError("a catalogue is sent as texts or as vectors, not both")
    if texts is not None:
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("item texts must be a list of strings")
        if len(texts) > max_items or any(len(t) > MAX_TEXT_CHARS for t in texts):
            raise ValueError(f"catalogue of {len(texts)} texts: more than {max_items} items or "
                             f"a text over {MAX_TEXT_CHARS} characters")
        if texts and not any(t.strip() for t in texts):
            raise ValueError(f"catalogue of {len(texts)} texts, every one empty (nothing to "
                             "encode: every item would look alike)")
    if vectors is not None and (not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32
                                or vectors.ndim != 2 or len(vectors) > max_items):
        raise ValueError(f"item vectors must be float32 [items <= {max_items}, dim]")
    metrics = {str(k): float(v) for k, v in p.metrics.items()}
    if not all(np.isfinite(v) for v in metrics.values()):
        raise ValueError("non-finite training metrics")
    return TrainReply(weights, str(p.config.get("base-hash", "")), metrics,
                      None if texts is None else list(texts),  # type: ignore[arg-type]
                      None if vectors is None else torch.from_numpy(np.array(vectors, copy=True)),
                      p.config.get("share-weights") is True)


def encode_sequences(seqs: list[list[int]]) -> np.ndarray:
    """Pseudo-user histories as an int64 ``[P, L]`` array right-padded with ``PAD``."""
    width = max((len(s) for s in seqs), default=1)
    out = np.full((len(seqs), width), PAD, dtype=np.int64)
    for r, s in enumerate(seqs):
        out[r, :len(s)] = s
    return out


def decode_sequences(arr: np.ndarray, num_items: int) -> list[list[int]]:
    """Inverse of :func:`encode_sequences`; refuses anything malformed."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.int64 or arr.ndim != 2:
        raise QueryRefused(f"sequences must be a 2-D int64 array, got "
                           f"{getattr(arr, 'dtype', type(arr))} with shape {getattr(arr, 'shape', '?')}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise QueryRefused("the query holds no pseudo-users")
    real = arr != PAD
    if (arr[real] < 0).any() or (arr[real] >= num_items).any():
        raise QueryRefused(f"item ids must lie in [0, {num_items}) (this silo's catalogue)")
    lengths = real.sum(1)
    if (lengths == 0).any() or (real != (np.arange(arr.shape[1]) < lengths[:, None])).any():
        raise QueryRefused("every pseudo-user needs at least one item, padding only at the end")
    return [row[:n].tolist() for row, n in zip(arr, lengths)]


def encode_query(seqs: list[list[int]], topk: int | None, require_dp: bool = False) -> Payload:
    """``require_dp``: the run asks for DP; a silo whose model is not DP-trained refuses."""
    return Payload({"sequences": encode_sequences(seqs)},
                   {"topk": int(topk or 0), "require-dp": require_dp})


def encode_answer(signal: TeacherSignal, silo: str) -> Payload:
    arrays = {"scores": signal.scores.float().contiguous().numpy()}
    if signal.indices is not None:
        arrays["indices"] = signal.indices.to(torch.int64).contiguous().numpy()
    return Payload(arrays, {"silo": silo, "num-items": signal.num_items},
                   {"rows": float(signal.scores.shape[0])})


def decode_answer(p: Payload, rows: int, num_items: int, topk: int | None) -> TeacherSignal:
    """A silo's answer for ``rows`` pseudo-users over its ``num_items`` items, shapes and
    dtypes checked before anything is copied (``ValueError`` otherwise)."""
    scores, idx = p.arrays.get("scores"), p.arrays.get("indices")
    width = min(topk, num_items) if topk else num_items
    if not isinstance(scores, np.ndarray) or scores.dtype != np.float32 or \
            scores.shape != (rows, width):
        raise ValueError(f"scores must be float32 [{rows}, {width}], got "
                         f"{getattr(scores, 'dtype', '?')} {getattr(scores, 'shape', '?')}")
    if (idx is None) != (not topk) or (idx is not None and (
            not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.shape != scores.shape)):
        raise ValueError("top-k answers need int64 indices shaped like the scores; full rows none")
    if p.config.get("num-items") != num_items:
        raise ValueError(f"answer for {p.config.get('num-items')!r} items, the catalogue has {num_items}")
    return TeacherSignal(torch.from_numpy(np.array(scores, copy=True)), num_items,
                         None if idx is None else torch.from_numpy(np.array(idx, copy=True)))


def encode_eval_request(req: EvalRequest) -> Payload:
    """The models, each distinct set of weights packed once (labels that share one state
    dict, e.g. one model under several serving settings, point at the same ``model<i>``)."""
    labels = list(req.models)
    arrays: dict[str, np.ndarray] = {}
    layouts: dict[str, ConfigValue] = {}
    packed: dict[int, int] = {}  # id of a state dict -> its model index
    for label in labels:
        state = req.models[label]
        if id(state) not in packed:
            packed[id(state)] = len(packed)
            a, lay = _pack(f"model{packed[id(state)]}", state)
            arrays.update(a)
            layouts.update(lay)
    config: dict[str, ConfigValue] = {**layouts, **_run_config(req.run), "labels": labels,
                                      "models": [packed[id(req.models[x])] for x in labels],
                                      "popularity": req.popularity}
    for i, label in enumerate(labels):
        if label in req.serving:
            config[f"label{i}#serving"] = json.dumps(to_dict(req.serving[label]))
    return Payload(arrays, config)


def decode_eval_request(p: Payload, max_models: int, max_values: int) -> EvalRequest:
    """The models to evaluate: at most ``max_models`` labels, all in one layout of at most
    ``max_values`` floats (checked before anything is copied)."""
    labels = p.config.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) \
            or len(set(labels)) != len(labels):
        raise QueryRefused("'labels' must be a list of distinct strings")
    if len(labels) > max_models:
        raise QueryRefused(f"{len(labels)} models in one message; this silo evaluates at most "
                           f"{max_models}")
    index = p.config.get("models", list(range(len(labels))))
    if not isinstance(index, list) or len(index) != len(labels) \
            or any(isinstance(i, bool) or not isinstance(i, int) for i in index) \
            or sorted(set(index)) != list(range(len(set(index)))):
        raise QueryRefused("'models' must give each label the index of one packed model, "
                           "using every index from 0 up")
    distinct = len(set(index))
    first = _layout(p, "model0", max_values) if labels else []
    for i in range(1, distinct):
        if dict(_layout(p, f"model{i}", max_values)) != dict(first):
            raise QueryRefused("the models to evaluate do not share one layout")
    states = [_unpack(p, f"model{i}", first, max_values) for i in range(distinct)]
    models = {label: states[i] for label, i in zip(labels, index)}
    serving = {label: _serving(p, f"label{i}#serving") for i, label in enumerate(labels)
               if f"label{i}#serving" in p.config}
    return EvalRequest(models, _run_from(p.config), bool(p.config.get("popularity", False)),
                       serving)


def _serving(p: Payload, key: str) -> ServingConfig:
    """A model's serving settings: a JSON object of :class:`ServingConfig` fields in range."""
    raw = p.config[key]
    if not isinstance(raw, str):
        raise QueryRefused(f"{key}: expected a JSON object as text")
    try:
        return from_dict(ServingConfig, json.loads(raw), key)
    except (ValueError, TypeError) as exc:  # ConfigError and range errors are ValueErrors
        raise QueryRefused(f"{key}: {exc}") from None


METRIC = re.compile(r"(recall|ndcg)@\d+|mrr")


def encode_eval_reply(results: dict[str, dict[str, float]], silo: str,
                      protocol: dict[str, object]) -> Payload:
    labels = list(results)
    metrics = {f"{i}/{m}": float(v) for i, label in enumerate(labels)
               for m, v in results[label].items()}
    return Payload({}, {"silo": silo, "labels": labels, "protocol": json.dumps(protocol)}, metrics)


def decode_eval_reply(p: Payload, asked: list[str]
                      ) -> tuple[dict[str, dict[str, float]], dict[str, object]]:
    """Metrics per model label and the protocol the silo used. The labels must be the ones
    asked for (plus ``popularity``), each with the same metrics, every metric a known one with
    a finite value in [0, 1]."""
    labels = p.config.get("labels")
    if not isinstance(labels, list) or not set(labels) <= {*asked, "popularity"} \
            or not set(asked) <= set(labels):
        raise ValueError(f"answered labels {labels!r} are not the ones asked for")
    out: dict[str, dict[str, float]] = {str(label): {} for label in labels}
    for key, value in p.metrics.items():
        i, _, metric = str(key).partition("/")
        if not i.isdigit() or int(i) >= len(labels) or not METRIC.fullmatch(metric):
            raise ValueError(f"unexpected metric key {key!r}")
        if isinstance(value, bool) or not (isinstance(value, (int, float))
                                           and 0.0 <= float(value) <= 1.0):
            raise ValueError(f"{labels[int(i)]} {metric} = {value!r} is not a rate in [0, 1]")
        out[str(labels[int(i)])][metric] = float(value)
    metric_sets = {tuple(sorted(m)) for m in out.values()}
    if len(metric_sets) != 1 or not next(iter(metric_sets)):
        raise ValueError("every model answered must carry the same, non-empty set of metrics")
    try:
        protocol = json.loads(str(p.config.get("protocol", "{}")))
    except json.JSONDecodeError:
        raise ValueError("unreadable evaluation protocol") from None
    return out, protocol if isinstance(protocol, dict) else {}
