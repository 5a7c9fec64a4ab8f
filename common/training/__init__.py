"""Local fine-tuning of the recommender."""

from .finetune import TrainConfig, TrainResult, fine_tune, next_item_loss

__all__ = ["TrainConfig", "TrainResult", "fine_tune", "next_item_loss"]
