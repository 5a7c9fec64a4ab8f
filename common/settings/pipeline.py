"""A whole run's configuration, as loaded from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import with_overrides
from .data import DataConfig
from .federation import (CoordinatorConfig, FederationConfig, LearnedMergeSpec, NewDomainConfig,
                         default_learned, default_merges)
from .merging import MergeConfig
from .model import ModelConfig, SASRecConfig
from .training import EvalConfig, TrainConfig, check_interpolation, check_loss


@dataclass
class PipelineConfig:
    """Everything a run needs: data, model, fine-tuning, merges, learned merges, federation.

    ``silo_dir``: where in-process silos keep their work (checkpoints, per-run records); default
    ``<output_dir>/silos``. Runs sharing it reuse each other's fine-tuned checkpoints.
    ``id_baseline``: also train an ID-based SASRec in each training silo, alone on its data
    (in-process only: the "train alone" reference, which cannot be merged). ``new_domain``: how
    the run serves catalogues no silo trained on (:class:`NewDomainConfig`; ``None``: it
    chooses nothing, and a package serves every catalogue as it serves its own).
    """

    data: DataConfig = field(default_factory=DataConfig)
    encoder: str = "hashing-256"
    center_features: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, patience=10))
    eval: EvalConfig = field(default_factory=EvalConfig)
    merges: list[MergeConfig] = field(default_factory=default_merges)
    learned: list[LearnedMergeSpec] = field(default_factory=default_learned)
    federation: FederationConfig = field(default_factory=FederationConfig)
    new_domain: NewDomainConfig | None = field(default_factory=NewDomainConfig)
    joint: bool = False
    id_baseline: SASRecConfig | None = None
    seed: int = 0
    output_dir: str | None = None
    silo_dir: str | None = None

    def coordinator(self) -> CoordinatorConfig:
        """What the coordinator needs of this run (and nothing of its data sources)."""
        return CoordinatorConfig(self.data.domain_names(), self.encoder, self.center_features,
                                 self.model, self.train, self.merges, self.learned,
                                 self.federation, self.seed, self.output_dir, str(self.data.cache()),
                                 self.new_domain)

    def __post_init__(self) -> None:
        names = self.data.domain_names()
        labels = [m.label for m in self.merges] + [s.name for s in self.learned]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"merges and learned variants need distinct names; {twice} "
                             "appear more than once (give merges a 'name')")
        for name, own in self.federation.silo_train.items():
            if name not in names:
                raise ValueError(f"federation.silo_train: no domain '{name}' (have {names})")
            self.check_training(with_overrides(self.train, own, f"federation.silo_train.{name}"),
                                f"federation.silo_train.{name}")
        self.check_training(self.train, "train")

    def check_training(self, train: TrainConfig, where: str) -> None:
        """Settings of one fine-tuning that the model cannot run with."""
        if self.model.user == "history_text" and train.dp is not None and train.dp.epsilon is not None:
            raise ValueError(f"{where}.dp: DP-SGD clips per-user gradients of the sequence "
                             "tower; it does not run with model.user = history_text")
        check_interpolation(train, where)
        check_loss(train, self.model, where)
