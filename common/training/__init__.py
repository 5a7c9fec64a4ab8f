"""Local fine-tuning of the recommender."""

from .checkpoints import checkpoint_path, fine_tune_cached, training_key
from .finetune import TrainConfig, TrainResult, fine_tune, next_item_loss

__all__ = ["TrainConfig", "TrainResult", "checkpoint_path", "fine_tune", "fine_tune_cached",
           "next_item_loss", "training_key"]
