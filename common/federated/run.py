"""What the coordinator's phases share: the transport protocol, the message session with its
failure bookkeeping and ledger, and the run's state (settings, θ₀, timings, staged outputs)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, TypeVar

import torch

from ..io import RunOutputs, atomic_save_safetensors
from ..model import ModelConfig, state_hash
from ..model.recommender import ItemInputs
from ..package import save_weights
from ..report import Stages
from ..settings import CoordinatorConfig
from .ledger import Ledger
from .pool import ModelEntry, ModelPool
from .protocol import Failure, Payload, RunSettings

StateDict = dict[str, torch.Tensor]
T = TypeVar("T")


class FederationError(RuntimeError):
    """The run cannot go on (too few silos left); the message says which failed and why."""


class Federation(Protocol):
    """A transport to the silos."""

    rejected: list[Failure]  # nodes refused when connecting (unknown or duplicate names)

    def roles(self) -> dict[str, str]:
        """Silo name → ``"train"`` or ``"eval"`` (evaluation-only), for every connected silo."""
        ...

    def send(self, kind: str, requests: dict[str, Payload], timeout: float
             ) -> dict[str, Payload | Failure]:
        """Send one request per named silo at once; replies or failures by silo name
        (a silo missing from the result did not answer within ``timeout``)."""
        ...


def safe_name(label: str) -> str:
    """A file-name-safe version of a method label."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")


class Session:
    """Message exchange with failure bookkeeping and the ledger."""

    def __init__(self, fed: Federation, log: Callable[[str], None], ledger: Ledger) -> None:
        self.fed = fed
        self.log = log
        self.ledger = ledger
        self.failures: list[Failure] = []

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.log(f"silo {failure.silo} failed during {failure.stage}: {failure.reason}")

    def guard(self, silo: str, stage: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or ``None`` with the silo's failure recorded whatever ``fn`` raised."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one bad reply must never stop the run
            self.fail(Failure(silo, stage, f"{type(exc).__name__}: {exc}"))
            return None

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


@dataclass
class Run:
    """What every phase shares: settings, θ₀, the session, timings, staged outputs."""

    cfg: CoordinatorConfig
    session: Session
    roles: dict[str, str]
    model_cfg: ModelConfig
    base: StateDict
    run: RunSettings
    outputs: RunOutputs | None
    stages: Stages = field(default_factory=Stages)
    features: dict[str, ItemInputs] = field(default_factory=dict)
    training: dict[str, dict[str, float]] = field(default_factory=dict)
    learned_weights: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    catalogues: dict[str, str] = field(default_factory=dict)
    made_by: dict[str, dict] = field(default_factory=dict)
    choices: dict[str, dict] = field(default_factory=dict)  # chosen on the silos' validation
    # each training silo's weights as every merge takes them (robust merging: clipped task
    # vectors; silos caught at a check or by the contribution check are left out)
    merge_inputs: dict[str, StateDict] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)

    def leave_out_of_merges(self, silo: str, stage: str, reason: str) -> None:
        """``silo`` takes no part in any later merge of the run (recorded as its failure)."""
        if silo in self.merge_inputs:
            del self.merge_inputs[silo]
            self.session.fail(Failure(silo, stage, f"left out of every merge: {reason}"))

    @property
    def base_hash(self) -> str:
        return state_hash(self.base)

    def trainers(self) -> list[str]:
        return [n for n, r in self.roles.items() if r == "train"]

    def require(self, stage: str, have: list[str]) -> None:
        need = max(1, self.cfg.federation.min_silos or len(self.trainers()))
        if len(have) < need:
            reasons = "; ".join(f"{f.silo} ({f.stage}): {f.reason}" for f in self.session.failures)
            raise FederationError(f"{stage}: only {len(have)} training silo(s) left {have}, "
                                  f"at least {need} needed. Failures: {reasons or 'none'}")

    def save(self, relative: str, state: StateDict, **meta: str) -> None:
        if self.outputs is not None:
            atomic_save_safetensors(state, self.outputs.path(relative),
                                    metadata={"base_hash": self.base_hash, **meta})

    def keep(self, pool: ModelPool, entry: ModelEntry, made_by: dict) -> None:
        """Add a model to the pool and, for everything but the silos' own models, write its
        weights to ``models/<name>/`` at once (the package is finished after evaluation)."""
        pool.add(entry)
        if entry.kind != "finetuned":
            self.made_by[entry.label] = made_by
            if self.outputs is not None:
                save_weights(self.outputs.path(f"models/{safe_name(entry.label)}"), entry.state,
                             entry.label)
