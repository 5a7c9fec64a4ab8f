"""Training-free merge methods and learnable merging weights."""

from .learned import Granularity, LearnedMerge
from .methods import (METHODS, MergeConfig, MergeInit, StateDict, build_merge, task_vectors,
                      topk_mask)

__all__ = ["METHODS", "Granularity", "LearnedMerge", "MergeConfig", "MergeInit", "StateDict",
           "build_merge", "task_vectors", "topk_mask"]
