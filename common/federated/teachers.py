"""Pseudo-users and the silos' teacher answers for them, checked before use.

A silo's answer is a deterministic function of the weights it sent and of its catalogue, both
of which the coordinator holds; so the coordinator re-computes a sample of the rows itself and
refuses an answer that does not match (a silo poisoning the distillation signal), instead of
only checking shapes and ranges.
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from ..distill import DomainPseudoData, TeacherSignal, extend_walks, select_items, teacher_scores
from ..model import TextSeqRec
from ..model.recommender import ItemInputs
from ..runtime import on_device
from ..settings import LearnedMergeSpec
from .protocol import QUERY, decode_answer, encode_query

Ask = Callable[[dict[str, list[list[int]]], "int | None"], dict[str, TeacherSignal]]
Verify = Callable[[str, list[list[int]], TeacherSignal], "str | None"]


def build_pseudo_data(spec: LearnedMergeSpec, features: dict[str, ItemInputs], ask: Ask,
                      vectors: Callable[[str], torch.Tensor]) -> list[DomainPseudoData]:
    """Pseudo-users per domain from its catalogue only; walks
    and teacher answers are asked of the silos (``ask``: domain → sequences in, domain →
    answers out, failed silos left out). ``vectors(name)``: θ₀'s item text vectors of a
    catalogue (centroid sampling clusters them)."""
    cfg = spec.pseudo_users
    if cfg.kind not in ("one_item", "walk"):
        raise ValueError(f"unknown pseudo-user kind '{cfg.kind}'")
    seqs = {n: [[i] for i in select_items(vectors(n) if cfg.sample == "centroid" else f, cfg)]
            for n, f in features.items()}
    if cfg.kind == "walk":
        for _ in range(cfg.walk_length - 1):
            answers = ask(seqs, None)
            seqs = {n: extend_walks(seqs[n], answers[n].scores) for n in answers}
    if not spec.distill.loss.needs_teacher:
        return [DomainPseudoData(n, features[n], s) for n, s in seqs.items()]
    answers = ask(seqs, spec.teacher_topk)
    return [DomainPseudoData(n, features[n], seqs[n], a) for n, a in answers.items()]


class AnswerCheck:
    """Checks a silo's answer against the weights it sent, in two ways it cannot dodge:

    * every score must lie in the range those weights allow: a cosine in [-1, 1] plus, for a
      history item, the model's bonus β of that item (computed here once per silo);
    * ``rows`` rows, drawn at random from a generator the silo cannot predict (the system's
      entropy, fresh per run), are re-computed and must agree within ``tolerance``, so a silo
      cannot poison only the rows it expects to go unchecked.

    Answers that change between queries are caught the same way: each query is checked."""

    def __init__(self, teachers: dict[str, TextSeqRec], features: dict[str, ItemInputs],
                 rows: int, tolerance: float, rng: random.Random | None = None) -> None:
        self.teachers, self.features = teachers, features
        self.rows, self.tolerance = rows, tolerance
        self.rng = rng or random.SystemRandom()
        self._ranges: dict[str, tuple[float, float]] = {}

    def score_range(self, name: str) -> tuple[float, float]:
        """The lowest and highest score the silo's weights can give (cosine ± its β)."""
        if name not in self._ranges:
            model = self.teachers[name]
            with on_device(model, eval_mode=True) as device, torch.no_grad():
                beta = model.history_bias(  # the parameter itself without a repeat head
                    model.encode_items(self.features[name].float().to(device))).detach()
            self._ranges[name] = (-1.0 + min(0.0, float(beta.min())),
                                  1.0 + max(0.0, float(beta.max())))
        return self._ranges[name]

    def __call__(self, name: str, seqs: list[list[int]], signal: TeacherSignal) -> str | None:
        if self.rows <= 0:
            return None
        low, high = self.score_range(name)
        if bool((signal.scores < low - self.tolerance).any() |
                (signal.scores > high + self.tolerance).any()):
            return (f"scores outside [{low:.3g}, {high:.3g}], the range the weights it sent "
                    f"can give (min {float(signal.scores.min()):.3g}, max "
                    f"{float(signal.scores.max()):.3g})")
        pick = torch.tensor(sorted(self.rng.sample(range(len(seqs)), min(self.rows, len(seqs)))))
        ref = teacher_scores(self.teachers[name], self.features[name],
                             [seqs[int(i)] for i in pick]).scores
        got = signal.rows(pick)
        if got.indices is None:
            gap = (got.scores - ref).abs().max()
        else:  # the reported scores must be the model's at those items and be its top k
            at_items = ref.gather(1, got.indices)
            top = ref.topk(got.scores.shape[1], dim=1).values
            gap = torch.maximum((got.scores - at_items).abs().max(),
                                (got.scores.sort(1, descending=True).values - top).abs().max())
        if not bool(gap <= self.tolerance):
            return (f"answers differ from the scores of the weights it sent by up to "
                    f"{float(gap):.3g} (tolerance {self.tolerance:g}) on re-computed rows "
                    f"drawn at random")
        return None


def ask_silos(session, seqs: dict[str, list[list[int]]], topk: int | None,  # type: ignore[no-untyped-def]
              max_rows: int, timeout: float, require_dp: bool, num_items: dict[str, int],
              verify: Verify) -> dict[str, TeacherSignal]:
    """Teacher answers for every domain's pseudo-users, in as few batched rounds as possible.
    A silo whose answer is malformed or fails ``verify`` is a recorded failure, left out."""
    got: dict[str, list[TeacherSignal]] = {n: [] for n in seqs}
    rounds = max((len(s) + max_rows - 1) // max_rows for s in seqs.values()) if seqs else 0
    for r in range(rounds):
        chunk = {n: s[r * max_rows:(r + 1) * max_rows] for n, s in seqs.items() if n in got}
        chunk = {n: c for n, c in chunk.items() if c}
        requests = {n: encode_query(c, topk, require_dp) for n, c in chunk.items()}
        replies = session.exchange("query", QUERY, requests, timeout)
        for n in chunk:
            signal = None if n not in replies else session.guard(
                n, "query", lambda n=n: _checked(replies[n], chunk[n], topk, num_items[n], verify, n))
            if signal is None:
                got.pop(n, None)
            else:
                got[n].append(signal)
    out = {}
    for n, parts in got.items():
        idx = [p.indices for p in parts]
        out[n] = TeacherSignal(torch.cat([p.scores for p in parts]), parts[0].num_items,
                               None if idx[0] is None else torch.cat(idx))  # type: ignore[arg-type]
    return out


def _checked(payload, seqs: list[list[int]], topk: int | None, num_items: int,  # type: ignore[no-untyped-def]
             verify: Verify, name: str) -> TeacherSignal:
    signal = decode_answer(payload, len(seqs), num_items, topk)
    signal.validate(len(seqs))
    problem = verify(name, seqs, signal)
    if problem:
        raise ValueError(problem)
    return signal
