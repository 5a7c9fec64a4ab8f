"""The coordinator's model pool: typed entries instead of labels parsed back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..settings import ServingConfig

StateDict = dict[str, torch.Tensor]
Kind = Literal["base", "finetuned", "baseline", "merge", "learned", "new-domain"]

BASE_LABEL = "zero-shot base θ₀"
IN_DOMAIN_LABEL = "in-domain fine-tuned"
NEW_DOMAIN_LABEL = "new-domain path"


def finetuned_label(silo: str) -> str:
    return f"fine-tuned on {silo}"


@dataclass
class ModelEntry:
    """One model the run evaluates: its label (a row of the results), what it is, its
    weights, for a fine-tuned model the silo it came from and whether that silo lets other
    silos evaluate it, and how it scores a catalogue where that is not the run's
    (``serving``)."""

    label: str
    kind: Kind
    state: StateDict
    silo: str | None = None
    shared: bool = False
    serving: ServingConfig | None = None

    def sent_to(self, silo: str) -> bool:
        """Whether ``silo`` may be sent these weights: anything but another silo's fine-tuned
        model, unless that silo shares it."""
        return self.kind != "finetuned" or self.silo == silo or self.shared


class ModelPool:
    """Entries by label, in the order they were added; a label is never silently replaced."""

    def __init__(self) -> None:
        self.entries: dict[str, ModelEntry] = {}

    def add(self, entry: ModelEntry) -> None:
        if entry.label in self.entries:
            raise ValueError(f"two models labelled {entry.label!r} in one run: give each "
                             "merge or learned variant its own name")
        self.entries[entry.label] = entry

    def of_kind(self, *kinds: Kind) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.kind in kinds]

    def for_silo(self, silo: str) -> dict[str, StateDict]:
        """The weights ``silo`` is asked to evaluate."""
        return {label: e.state for label, e in self.entries.items() if e.sent_to(silo)}

    def serving_for(self, silo: str) -> dict[str, ServingConfig]:
        """The serving settings of the models ``silo`` evaluates, where not the run's."""
        return {label: e.serving for label, e in self.entries.items()
                if e.sent_to(silo) and e.serving is not None}

    def withheld_from(self, silo: str) -> list[str]:
        return [label for label, e in self.entries.items() if not e.sent_to(silo)]
