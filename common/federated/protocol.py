"""What the coordinator and a silo exchange, as transport-neutral payloads.

A :class:`Payload` is flat: named numpy arrays, scalar/str/list config values and float
metrics; it maps one to one onto a Flower ``RecordDict`` (``arrays`` → ArrayRecord,
``config`` → ConfigRecord, ``metrics`` → MetricRecord) and is what the in-process federation
passes around too, so both transports send exactly the same content. The ``encode_*`` /
``decode_*`` pairs below are the only place that knows the layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..distill import TeacherSignal
from ..evaluation import EvalConfig
from ..model import ModelConfig
from ..training import TrainConfig

ConfigValue = Union[int, float, str, bool, bytes, list[int], list[float], list[str]]
StateDict = dict[str, torch.Tensor]

INFO, TRAIN, QUERY, EVALUATE = "query.info", "train", "query.distill", "evaluate"
MESSAGE_KINDS = (INFO, TRAIN, QUERY, EVALUATE)
PAD = -1  # padding id of pseudo-user sequences in a query


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


@dataclass
class TrainRequest:
    base: StateDict
    run: RunSettings
    train: TrainConfig
    catalogue: Literal["text", "vectors"] = "text"


@dataclass
class TrainReply:
    """A silo's fine-tuned weights, the θ₀ hash it trained from, its catalogue (texts or
    frozen vectors) and aggregate training metrics."""

    state: StateDict
    base_hash: str
    metrics: dict[str, float]
    item_texts: list[str] | None = None
    item_vectors: torch.Tensor | None = None


@dataclass
class EvalRequest:
    models: dict[str, StateDict]
    run: RunSettings
    eval: EvalConfig
    popularity: bool = True


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


def _unpack(p: Payload, key: str) -> StateDict:
    """Inverse of :func:`_pack`; a layout that does not fit the array raises ``ValueError``."""
    if key not in p.arrays or f"{key}#layout" not in p.config:
        raise ValueError(f"'{key}' or its layout is missing")
    flat, layout = p.arrays[key], json.loads(str(p.config[f"{key}#layout"]))
    sizes = [int(np.prod(shape)) for _, shape in layout]
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != sum(sizes):
        raise ValueError(f"'{key}': {flat.dtype} array of shape {flat.shape} does not match its "
                         f"layout ({sum(sizes)} float32 values)")
    out, start = {}, 0
    tensor = torch.from_numpy(np.array(flat, copy=True))
    for (name, shape), size in zip(layout, sizes):
        out[str(name)] = tensor[start:start + size].reshape(shape).clone()
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


def decode_train_request(p: Payload) -> TrainRequest:
    return TrainRequest(_unpack(p, "base"), _run_from(p.config),
                        from_dict(TrainConfig, json.loads(str(p.config["train"])), "train"),
                        str(p.config.get("catalogue", "text")))  # type: ignore[arg-type]


def encode_train_reply(rep: TrainReply, silo: str) -> Payload:
    arrays, layout = _pack("weights", rep.state)
    config: dict[str, ConfigValue] = {**layout, "silo": silo, "base-hash": rep.base_hash}
    if rep.item_vectors is not None:
        arrays["item-vectors"] = rep.item_vectors.float().contiguous().numpy()
    if rep.item_texts is not None:
        config["item-texts"] = list(rep.item_texts)
    return Payload(arrays, config, dict(rep.metrics))


def decode_train_reply(p: Payload) -> TrainReply:
    vectors = p.arrays.get("item-vectors")
    texts = p.config.get("item-texts")
    return TrainReply(_unpack(p, "weights"), str(p.config.get("base-hash", "")),
                      dict(p.metrics), [str(t) for t in texts] if isinstance(texts, list) else None,
                      None if vectors is None else torch.from_numpy(np.array(vectors, copy=True)))


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


def decode_answer(p: Payload) -> TeacherSignal:
    idx = p.arrays.get("indices")
    return TeacherSignal(torch.from_numpy(np.array(p.arrays["scores"], copy=True)),
                         int(p.config["num-items"]),  # type: ignore[arg-type]
                         None if idx is None else torch.from_numpy(np.array(idx, copy=True)))


def encode_eval_request(req: EvalRequest) -> Payload:
    labels = list(req.models)
    arrays: dict[str, np.ndarray] = {}
    layouts: dict[str, ConfigValue] = {}
    for i, label in enumerate(labels):
        a, lay = _pack(f"model{i}", req.models[label])
        arrays.update(a)
        layouts.update(lay)
    return Payload(arrays, {**layouts, **_run_config(req.run), "labels": labels,
                            "eval": json.dumps(to_dict(req.eval)), "popularity": req.popularity})


def decode_eval_request(p: Payload) -> EvalRequest:
    labels = [str(x) for x in p.config["labels"]]  # type: ignore[union-attr]
    models = {label: _unpack(p, f"model{i}") for i, label in enumerate(labels)}
    return EvalRequest(models, _run_from(p.config),
                       from_dict(EvalConfig, json.loads(str(p.config["eval"])), "eval"),
                       bool(p.config.get("popularity", False)))


def encode_eval_reply(results: dict[str, dict[str, float]], silo: str) -> Payload:
    labels = list(results)
    metrics = {f"{i}/{m}": float(v) for i, label in enumerate(labels)
               for m, v in results[label].items()}
    return Payload({}, {"silo": silo, "labels": labels}, metrics)


def decode_eval_reply(p: Payload) -> dict[str, dict[str, float]]:
    labels = [str(x) for x in p.config["labels"]]  # type: ignore[union-attr]
    out: dict[str, dict[str, float]] = {label: {} for label in labels}
    for key, value in p.metrics.items():
        i, metric = key.split("/", 1)
        out[labels[int(i)]][metric] = float(value)
    return out
