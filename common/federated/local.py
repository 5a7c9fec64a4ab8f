"""The in-process federation: silos as objects in this process, same payloads as Flower."""

from __future__ import annotations

import uuid

from .protocol import Failure, Payload
from .silo import Silo


class LocalFederation:
    """Calls :meth:`Silo.handle` directly; an exception becomes a :class:`Failure`."""

    def __init__(self, silos: list[Silo], run_id: str | None = None) -> None:
        self.silos = {s.cfg.name: s for s in silos}
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.rejected: list[Failure] = []

    def roles(self) -> dict[str, str]:
        return {n: "eval" if s.cfg.eval_only else "train" for n, s in self.silos.items()}

    def send(self, kind: str, requests: dict[str, Payload], timeout: float
             ) -> dict[str, Payload | Failure]:
        out: dict[str, Payload | Failure] = {}
        for name, payload in requests.items():
            try:
                out[name] = self.silos[name].handle(kind, payload, self.run_id)
            except Exception as exc:  # noqa: BLE001 - any silo error is reported, not raised
                out[name] = Failure(name, kind, f"{type(exc).__name__}: {exc}")
        return out
