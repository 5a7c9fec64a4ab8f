"""Text-based sequential recommender."""

from .recommender import (ModelConfig, TextSeqRec, build_base_model, model_from_state, pad_sequences,
                          state_hash)

__all__ = ["ModelConfig", "TextSeqRec", "build_base_model", "model_from_state", "pad_sequences",
           "state_hash"]
