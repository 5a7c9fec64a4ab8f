"""What a run's architecture takes from its text encoder: the model config, θ₀, and each
catalogue's item inputs (frozen text vectors, or token states below the trainable top layers).

One place for these, so that the coordinator, the silos and the experiment scripts build the
same θ₀ and the same inputs from the same settings.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from .data.domain import texts_hash
from .model import ModelConfig, TextSeqRec, build_base_model
from .model.recommender import ItemInputs
from .text import HFEncoder, TextEncoder, catalogue_features, center_features, make_encoder
from .io import atomic_save_safetensors
from .text.token_states import TokenStates


def model_config_for(cfg: ModelConfig, encoder: TextEncoder) -> ModelConfig:
    """``cfg`` with the encoder's width and, for trainable top layers, their shape."""
    cfg = replace(cfg, text_dim=encoder.dim)
    if cfg.text_layers == 0:
        return cfg
    if not isinstance(encoder, HFEncoder):
        raise ValueError(f"model.text_layers = {cfg.text_layers} needs a transformer text "
                         f"encoder ('minilm' or a local folder), not '{encoder.encoder_id}'")
    arch = encoder.architecture()
    if not 0 < cfg.text_layers <= arch["layers"]:
        raise ValueError(f"model.text_layers must lie in 1..{arch['layers']} for "
                         f"{encoder.encoder_id}, got {cfg.text_layers}")
    return replace(cfg, text_heads=int(arch["heads"]), text_ffn=int(arch["ffn"]),
                   text_eps=float(arch["eps"]))


def resolve_base(encoder_spec: str, cfg: ModelConfig, seed: int
                 ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A run's model config (filled in from its encoder) and θ₀'s weights."""
    encoder = make_encoder(encoder_spec)
    cfg = model_config_for(cfg, encoder)
    return cfg, base_model(cfg, encoder, seed).state_dict()


def split_layer(cfg: ModelConfig, encoder: HFEncoder) -> int:
    """Encoder layers below the trainable top ones (their output is cached)."""
    return int(encoder.architecture()["layers"]) - cfg.text_layers


def base_model(cfg: ModelConfig, encoder: TextEncoder, seed: int) -> TextSeqRec:
    """θ₀ for ``cfg`` (already :func:`model_config_for` the encoder): the recommender with
    the encoder's pretrained top layers when it has any."""
    text_state = None
    if cfg.text_layers:
        assert isinstance(encoder, HFEncoder)
        text_state = encoder.layer_state(split_layer(cfg, encoder), cfg.text_layers)
    return build_base_model(cfg, seed, text_state)


def item_inputs(texts: list[str], encoder_spec: str, cfg: ModelConfig, center: bool,
                cache_dir: str | Path | None, label: str = "") -> ItemInputs:
    """The model's inputs for a catalogue: frozen text vectors (centred if asked), or, with
    trainable top layers, the token states below them (with the catalogue centre); cached
    on disk by encoder, split and catalogue hash."""
    encoder = make_encoder(encoder_spec)
    if cfg.text_layers == 0:
        feats = catalogue_features(texts, encoder, cache_dir, label)
        return center_features(feats) if center else feats
    assert isinstance(encoder, HFEncoder), "checked by model_config_for"
    layer = split_layer(cfg, encoder)
    path = None if cache_dir is None else \
        Path(cache_dir) / f"{encoder.encoder_id}-layer{layer}-{texts_hash(texts)}.safetensors"
    if path is not None and path.is_file():
        kept = load_file(str(path))
        if len(kept["offsets"]) == len(texts) + 1:
            return _with_center(kept, center)
    states, offsets, pooled = encoder.token_states(texts, layer)
    kept = {"states": states, "offsets": offsets, "mean": pooled.mean(0)}
    if path is not None:
        atomic_save_safetensors(kept, path, metadata={"encoder": encoder.encoder_id,
                                                      "layer": str(layer), "domain": label})
    return _with_center(kept, center)


def _with_center(kept: dict[str, torch.Tensor], center: bool) -> TokenStates:
    return TokenStates(kept["states"], kept["offsets"], kept["mean"] if center else None)
