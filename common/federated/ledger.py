"""A ledger of exactly what left each silo: message kinds, tensor names and shapes, bytes,
number of pseudo-user queries answered."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .protocol import Payload


@dataclass
class Ledger:
    """Appended to by the coordinator for every reply it receives (errors included)."""

    entries: list[dict[str, object]] = field(default_factory=list)

    def record(self, silo: str, kind: str, payload: Payload | None, error: str | None = None
               ) -> None:
        entry: dict[str, object] = {"silo": silo, "kind": kind}
        if payload is not None:
            entry.update(
                arrays={k: {"shape": list(v.shape), "dtype": str(v.dtype), "bytes": int(v.nbytes)}
                        for k, v in payload.arrays.items()},
                packed_tensors={k[:-len("#layout")]: json.loads(str(v))
                                for k, v in payload.config.items() if k.endswith("#layout")},
                config_keys=sorted(payload.config), metric_keys=sorted(payload.metrics),
                bytes=payload.nbytes(), queries=int(payload.metrics.get("rows", 0))
                if kind.startswith("query.distill") else 0)
        if error is not None:
            entry.update(error=error, bytes=len(error.encode()), queries=0)
        self.entries.append(entry)

    def summary(self) -> dict[str, dict[str, object]]:
        """Per silo: messages by kind, total bytes, pseudo-user queries answered."""
        out: dict[str, dict[str, object]] = {}
        for e in self.entries:
            s = out.setdefault(str(e["silo"]), {"messages": {}, "bytes": 0, "queries": 0,
                                                "errors": 0})
            kinds: dict[str, int] = s["messages"]  # type: ignore[assignment]
            kinds[str(e["kind"])] = kinds.get(str(e["kind"]), 0) + 1
            s["bytes"] = int(s["bytes"]) + int(e.get("bytes", 0))  # type: ignore[arg-type]
            s["queries"] = int(s["queries"]) + int(e.get("queries", 0))  # type: ignore[arg-type]
            s["errors"] = int(s["errors"]) + ("error" in e)
        return out
