"""Every typed setting of a run, loadable from YAML without torch (:func:`common.config.load_yaml`).

The library modules that use a setting import it from here; nothing in this package imports
torch, numpy or Flower, so a config can be read and checked before any of them is loaded.
"""

from .data import DataConfig, DomainSource, Split, SyntheticConfig, default_cache
from .distill import DistillConfig, Granularity, LossConfig, PseudoUserConfig
from .federation import (CoordinatorConfig, FederationConfig, LearnedMergeSpec, NewDomainConfig,
                         default_learned, default_merges)
from .merging import METHODS, REGISTRY, TRAINING_FREE_LABELS, MergeConfig, MergeMethod
from .model import ModelConfig, SASRecConfig, ServingConfig
from .pipeline import PipelineConfig
from .training import DPConfig, EvalConfig, TrainConfig

__all__ = ["METHODS", "REGISTRY", "TRAINING_FREE_LABELS", "CoordinatorConfig", "DPConfig",
           "DataConfig", "DistillConfig", "DomainSource", "EvalConfig", "FederationConfig",
           "Granularity", "LearnedMergeSpec", "LossConfig", "MergeConfig", "MergeMethod",
           "ModelConfig", "NewDomainConfig", "PipelineConfig", "PseudoUserConfig", "SASRecConfig", "ServingConfig", "Split",
           "SyntheticConfig", "TrainConfig", "default_cache", "default_learned", "default_merges"]
