"""The :class:`common.federated.Federation` transport over a Flower ``Grid``."""

from __future__ import annotations

import time
from typing import Callable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from common.federated import INFO, Failure, Ledger, Payload
from silos.records import from_record, to_record

POLL_S = 0.5  # faster than Grid.send_and_receive's fixed 3 s between pulls


class FlowerFederation:
    """Finds the silos (by asking each node its name and role), then exchanges payloads."""

    def __init__(self, grid: Grid, log: Callable[[str], None] = print) -> None:
        self.grid = grid
        self.log = log
        self.ledger = Ledger()  # the coordinator appends every later reply to it
        self.nodes: dict[str, int] = {}
        self._roles: dict[str, str] = {}
        self.rejected: list[Failure] = []

    def connect(self, expected: int, wait_s: float, names: list[str], registered: bool) -> None:
        """Wait up to ``wait_s`` for ``expected`` nodes, then learn every node's silo name;
        only the run's silo ``names`` are accepted, with ``registered`` only from the node
        whose SuperNode key was registered under that name (:func:`accept_claims`)."""
        deadline = time.monotonic() + wait_s
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < expected and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < expected:
            self.log(f"only {len(nodes)} of {expected} expected silos connected after {wait_s:.0f} s")
        replies = self._exchange(INFO, {str(n): (n, Payload()) for n in nodes}, wait_s)
        claims: dict[int, tuple[str, str]] = {}
        for key, reply in replies.items():
            if isinstance(reply, Failure):
                self.log(f"node {key} did not identify itself: {reply.reason}")
                continue
            name = str(reply.config.get("silo", ""))
            self.ledger.record(name or f"node {key}", INFO, reply)
            claims[int(key)] = (name, str(reply.config.get("role", "train")))
        keys = {int(n.node_id): str(n.name) for n in self.grid.get_nodes()} if registered else None
        if keys is not None and claims and not any(keys.values()):
            self.log("no node has a registered name (no SuperNode authentication): every silo "
                     "is refused; run with -c identity=claimed for simulation or plain mode")
        self.nodes, self._roles, self.rejected = accept_claims(claims, names, keys)

    def roles(self) -> dict[str, str]:
        return dict(self._roles)

    def send(self, kind: str, requests: dict[str, Payload], timeout: float
             ) -> dict[str, Payload | Failure]:
        return self._exchange(kind, {n: (self.nodes[n], p) for n, p in requests.items()}, timeout)

    def _exchange(self, kind: str, requests: dict[str, tuple[int, Payload]], timeout: float
                  ) -> dict[str, Payload | Failure]:
        """Push one message per silo, pull replies until all arrived or ``timeout`` passed."""
        msgs = {name: Message(to_record(p), dst_node_id=node, message_type=kind,
                              group_id=kind, ttl=max(timeout, 60.0))
                for name, (node, p) in requests.items()}
        ids = dict(zip(self.grid.push_messages(list(msgs.values())), msgs))  # id -> silo
        out: dict[str, Payload | Failure] = {}
        start = time.monotonic()
        deadline = start + timeout
        while len(out) < len(ids) and time.monotonic() < deadline:
            pending = [i for i, name in ids.items() if name not in out]
            for reply in self.grid.pull_messages(pending):
                name = ids.get(reply.metadata.reply_to_message_id)
                if name is None:
                    continue
                if reply.has_error():
                    out[name] = Failure(name, kind, f"error code {reply.error.code}: "
                                                    f"{reply.error.reason}")
                else:
                    out[name] = from_record(reply.content if reply.has_content() else RecordDict())
                self.log(f"{kind}: {name} replied after {time.monotonic() - start:.1f} s")
            if len(out) < len(ids):
                time.sleep(POLL_S)
        return out


def accept_claims(claims: dict[int, tuple[str, str]], names: list[str],
                  registered: dict[int, str] | None = None
                  ) -> tuple[dict[str, int], dict[str, str], list[Failure]]:
    """Node id → (claimed silo name, role) to the accepted silos' nodes and roles, and the
    refused claims: with ``registered`` (node id → the name its SuperNode key was registered
    under), a claim that is not the node's registered name; a name the run does not have; a
    name claimed by several nodes (given to none of them: an impostor must neither push a silo
    out nor win by answering first)."""
    by_name: dict[str, list[tuple[int, str]]] = {}
    rejected = []
    for node, (name, role) in sorted(claims.items()):
        if registered is not None and registered.get(node) != name:
            bound = registered.get(node) or "no name"
            rejected.append(Failure(name or "?", "connect", f"node {node} claims silo name "
                                    f"{name!r}, but its key is registered under {bound!r}; "
                                    "ignored"))
            continue
        by_name.setdefault(name, []).append((node, role))
    nodes, roles = {}, {}
    for name, claimants in by_name.items():
        ids = ", ".join(str(n) for n, _ in claimants)
        if name not in names:
            rejected.append(Failure(name or "?", "connect", f"node {ids} claims a silo name "
                                    "this run does not have; ignored"))
        elif len(claimants) > 1:
            rejected.append(Failure(name, "connect", f"name claimed by nodes {ids}; none of "
                                    "them is trusted"))
        else:
            nodes[name], roles[name] = claimants[0]
    return nodes, roles, rejected
