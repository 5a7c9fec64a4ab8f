"""Training-free merge methods and learnable merging weights."""

from .learned import Granularity, LearnedMerge
from ..settings.merging import METHODS, REGISTRY, TRAINING_FREE_LABELS, MergeConfig, MergeMethod
from .methods import MergeInit, StateDict, build_merge, task_vectors, topk_mask

__all__ = ["METHODS", "REGISTRY", "TRAINING_FREE_LABELS", "MergeMethod", "Granularity", "LearnedMerge", "MergeConfig", "MergeInit", "StateDict",
           "build_merge", "task_vectors", "topk_mask"]
