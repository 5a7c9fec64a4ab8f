"""On-disk cache of item text features, keyed by encoder id and catalogue hash."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..data.domain import Domain, texts_hash
from ..io import atomic_save_safetensors
from .encoders import TextEncoder


def item_features(domain: Domain, encoder: TextEncoder, cache_dir: str | Path | None) -> torch.Tensor:
    """Text vectors ``[num_items, dim]`` for ``domain``, computed once and cached."""
    return catalogue_features(domain.item_texts, encoder, cache_dir, domain.name)


def catalogue_features(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None,
                       label: str = "") -> torch.Tensor:
    """Text vectors ``[len(texts), dim]`` of an item catalogue, cached by encoder id and a
    hash of the texts (so a coordinator that received the texts gets the silo's vectors)."""
    if cache_dir is None:
        return encoder.encode(texts)
    path = Path(cache_dir) / f"{encoder.encoder_id}-{texts_hash(texts)}.safetensors"
    if path.is_file():
        feats = load_file(str(path))["features"]
        if feats.shape == (len(texts), encoder.dim):
            return feats
    feats = encoder.encode(texts)
    atomic_save_safetensors({"features": feats}, path,
                            metadata={"encoder": encoder.encoder_id, "domain": label})
    return feats


def center_features(features: torch.Tensor) -> torch.Tensor:
    """Subtract the catalogue mean and re-normalise (removes the encoder's anisotropy).

    Sentence-encoder vectors of one catalogue share a large common direction (mean cosine
    around 0.3-0.4 on Amazon titles); removing it spreads cosines over [-1, 1], which makes
    cosine / temperature logits far more informative. Uses only the catalogue, no users.
    """
    return torch.nn.functional.normalize(features - features.mean(0, keepdim=True), dim=-1)
