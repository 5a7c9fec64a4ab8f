"""Model packages: a folder per model that says what it is and loads in one call.

    <folder>/model.safetensors       the weights
    <folder>/new-domain.safetensors  the weights for a catalogue none of its silos trained on
                                     (when the run chose a new-domain path)
    <folder>/config.json             architecture and serving settings, text encoder, θ₀ hash,
                                     how it was made, the catalogues it was trained on, its
                                     new-domain path, the released metrics, the weights' SHA-256
    <folder>/README.md               a generated model card

:func:`load_package` refuses, with the folder and the reason, a package whose weights were
altered (hash), whose weights do not fit its architecture, or whose text encoder is not the
one installed here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .config import ConfigError, from_dict, to_dict
from .io import atomic_save_safetensors, atomic_write_text
from .data.domain import texts_hash
from .model import ModelConfig, TextSeqRec, model_from_state, state_hash
from .settings import ServingConfig
from .text import make_encoder

FORMAT = "mergerec-model/1"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
NEW_DOMAIN_WEIGHTS = "new-domain.safetensors"


class PackageError(ValueError):
    """A model package cannot be used; the message names the folder and the problem."""


@dataclass
class NewDomainRoute:
    """How a package serves a catalogue none of its silos trained on: other weights (a file in
    the package), scored with catalogue-level serving settings, as the run chose them."""

    weights_sha256: str
    serving: ServingConfig = field(default_factory=ServingConfig)
    method: str = ""
    weights: str = NEW_DOMAIN_WEIGHTS


@dataclass
class PackageInfo:
    """``config.json`` of a package. ``trained_on``: the catalogues (silo → catalogue hash)
    whose silos trained the merged models; ``new_domain``: what it does for any other one
    (``None``: it serves every catalogue with its own weights)."""

    label: str
    kind: str
    model: ModelConfig
    encoder: str
    encoder_id: str
    center_features: bool
    base_hash: str
    made_by: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format: str = FORMAT
    trained_on: dict[str, str] = field(default_factory=dict)
    new_domain: NewDomainRoute | None = None

    def route(self, texts: list[str]) -> str:
        """Which weights serve a catalogue with these item texts: ``trained on <silo>``,
        ``new domain`` or, without a new-domain path, ``own weights``."""
        digest = texts_hash(texts)
        silo = next((s for s, h in self.trained_on.items() if h == digest), None)
        if silo is not None:
            return f"trained on {silo}"
        return "new domain" if self.new_domain is not None else "own weights"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(folder: Path, state: dict[str, torch.Tensor], label: str) -> None:
    """The weights alone (written as soon as a model exists; :func:`finish_package` adds the
    rest once its metrics are known)."""
    atomic_save_safetensors(state, folder / WEIGHTS, metadata={"label": label,
                                                               "state_hash": state_hash(state)})


def add_new_domain_route(folder: Path, state: dict[str, torch.Tensor], serving: ServingConfig,
                         method: str) -> NewDomainRoute:
    """Write the new-domain weights into a package folder; the route for its config."""
    atomic_save_safetensors(state, folder / NEW_DOMAIN_WEIGHTS, metadata={
        "label": "new-domain path", "state_hash": state_hash(state)})
    return NewDomainRoute(file_sha256(folder / NEW_DOMAIN_WEIGHTS), serving, method)


def finish_package(folder: Path, info: PackageInfo) -> None:
    """Write ``config.json`` (with the weights' hash) and the model card next to the weights."""
    info.weights_sha256 = file_sha256(folder / WEIGHTS)
    atomic_write_text(folder / CONFIG, json.dumps(to_dict(info), indent=2, ensure_ascii=False))
    atomic_write_text(folder / CARD, model_card(info, folder.name))


def read_info(folder: str | Path) -> PackageInfo:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise PackageError(f"{folder}: not a model package (no {CONFIG})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        info = from_dict(PackageInfo, raw, str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as exc:
        raise PackageError(f"{path}: unreadable package config ({exc})") from None
    if info.format != FORMAT:
        raise PackageError(f"{path}: package format {info.format!r}, this code reads {FORMAT!r}")
    return info


def load_package(folder: str | Path, catalogue: list[str] | None = None
                 ) -> tuple[TextSeqRec, PackageInfo]:
    """The model (eval mode) and its description; refuses a tampered, mismatched or foreign
    package with a :class:`PackageError` naming the folder. With the ``catalogue`` it is to
    serve (item texts), the weights and serving settings its route names
    (:meth:`PackageInfo.route`): the new-domain path for a catalogue none of its silos trained
    on."""
    folder = Path(folder)
    info = read_info(folder)
    weights, sha, model_cfg = folder / WEIGHTS, info.weights_sha256, info.model
    if catalogue is not None and info.route(catalogue) == "new domain":
        assert info.new_domain is not None
        weights, sha = folder / info.new_domain.weights, info.new_domain.weights_sha256
        model_cfg = replace(info.model, serving=info.new_domain.serving)
        if Path(info.new_domain.weights).name != info.new_domain.weights:
            raise PackageError(f"{folder / CONFIG}: new_domain.weights must be a file name in "
                               f"the package, got {info.new_domain.weights!r}")
    if not weights.is_file():
        raise PackageError(f"{folder}: {weights.name} is missing")
    if file_sha256(weights) != sha:
        raise PackageError(f"{weights}: the weights' SHA-256 differs from the one in {CONFIG} "
                           "(altered or replaced after the package was written)")
    try:
        encoder = make_encoder(info.encoder)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise PackageError(f"{folder}: its text encoder {info.encoder!r} is not usable here "
                           f"({exc})") from None
    if encoder.encoder_id != info.encoder_id or encoder.dim != info.model.text_dim:
        raise PackageError(f"{folder}: made with text encoder {info.encoder_id} "
                           f"({info.model.text_dim}-d); {info.encoder!r} here is "
                           f"{encoder.encoder_id} ({encoder.dim}-d)")
    try:
        model = model_from_state(model_cfg, load_file(str(weights)))
    except (ValueError, RuntimeError) as exc:
        raise PackageError(f"{folder}: the weights do not fit the package's architecture "
                           f"({exc})") from None
    return model, info


def model_card(info: PackageInfo, name: str) -> str:
    """A short Markdown card: what the model is, how it was made, what the silos released."""
    made = info.made_by
    silos = made.get("silos", {})
    lines = [f"# {info.label}", "",
             f"A MergeRec text-based sequential recommender ({info.kind}). It ranks any "
             "catalogue's items by their text, so it serves domains that never took part.", "",
             f"- text encoder: `{info.encoder}` ({info.encoder_id}, {info.model.text_dim}-d"
             + (f", top {info.model.text_layers} layers trained" if info.model.text_layers else "")
             + ")",
             f"- θ₀: `{info.base_hash[:16]}`",
             f"- made by: {made.get('method', info.kind)}"]
    if silos:
        lines.append("- silos merged: " + ", ".join(f"{s} (catalogue `{h}`)" for s, h in silos.items()))
    if info.model.serving.active:
        s = info.model.serving
        lines.append(f"- scores a catalogue with whitening {s.whiten:g} and history decay "
                     f"{s.history_decay:g}")
    if info.new_domain is not None:
        route = info.new_domain
        lines.append(f"- a catalogue none of these silos trained on is served by "
                     f"`{route.weights}`: {route.method}")
    if made.get("weights"):
        lines.append(f"- merging weights: `{json.dumps(made['weights'])}`")
    if info.metrics:
        metric_names = [m for m in ("recall@10", "ndcg@10") if any(m in v for v in info.metrics.values())]
        lines += ["", f"## Metrics the silos released ({info.protocol.get('split', 'test')} split, "
                  "full ranking)", "",
                  "| domain | " + " | ".join(metric_names) + " |",
                  "|---|" + "---:|" * len(metric_names)]
        lines += [f"| {d} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in metric_names) + " |"
                  for d, m in info.metrics.items()]
    lines += ["", "## Use it", "", "```bash",
              f"mergerec-model recommend --model {name} --catalogue ITEMS.csv --history ITEM_ID ...",
              f"mergerec-model serve --model {name} --catalogue shop=ITEMS.csv", "```", "",
              "```python", "from common.recommend import Recommender",
              f"rec = Recommender.open('{name}', 'ITEMS.csv')",
              "rec.recommend([['ITEM_ID', 'ANOTHER']], k=10)", "```", ""]
    return "\n".join(lines)
