"""Wire format: a transport-neutral :class:`Payload` as a Flower ``RecordDict`` and back."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.federated import Payload


def to_record(payload: Payload) -> RecordDict:
    """``arrays`` → ArrayRecord, ``config`` → ConfigRecord, ``metrics`` → MetricRecord."""
    rd = RecordDict()
    rd["arrays"] = ArrayRecord({k: Array(v) for k, v in payload.arrays.items()})
    rd["config"] = ConfigRecord(dict(payload.config))
    rd["metrics"] = MetricRecord(dict(payload.metrics))
    return rd


def from_record(rd: RecordDict) -> Payload:
    """Inverse of :func:`to_record` (missing parts are empty)."""
    arrays = {k: a.numpy() for k, a in rd["arrays"].items()} if "arrays" in rd else {}
    config = dict(rd["config"]) if "config" in rd else {}
    metrics = dict(rd["metrics"]) if "metrics" in rd else {}
    return Payload(arrays, config, metrics)  # type: ignore[arg-type]
