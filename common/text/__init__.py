"""Frozen item-text encoders and their feature cache."""

from .cache import catalogue_features, center_features, item_features
from .encoders import HashingEncoder, HFEncoder, TextEncoder, make_encoder, minilm_path

__all__ = ["HFEncoder", "HashingEncoder", "TextEncoder", "catalogue_features", "center_features", "item_features",
           "make_encoder", "minilm_path"]
