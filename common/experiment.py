"""Run configuration shared by the in-process pipeline and the Flower apps (loadable from YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from .config import ConfigError, load_yaml, with_overrides
from .runtime import default_cache, set_progress
from .data import (Domain, SyntheticConfig, load_mergerec_json, load_recbole, make_synthetic_domains,
                   subsample_users)
from .evaluation import EvalConfig
from .federated.config import (CoordinatorConfig, FederationConfig, LearnedMergeSpec,
                                default_learned, default_merges)
from .merging import MergeConfig
from .model import ModelConfig
from .model.sasrec import SASRecConfig
from .privacy import DPConfig, hold_out_users
from .training import TrainConfig


@dataclass
class DomainSource:
    """Where one domain comes from; ``max_users`` keeps a fixed random sample of that many
    users and the items they touched (:func:`common.data.subsample_users`)."""

    name: str
    format: Literal["mergerec_json", "recbole"] = "mergerec_json"
    path: str = ""
    max_users: int | None = None
    sample_seed: int = 0


@dataclass
class DataConfig:
    """The domains of a run: real sources, or the synthetic generator when ``sources`` is empty.

    ``holdout_fraction`` > 0 keeps that share of each domain's users out of the run entirely
    (the silo never sees them): the non-members of the membership-inference experiment.
    """

    sources: list[DomainSource] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    cache_dir: str = ""

    def cache(self) -> Path:
        """The cache folder: ``cache_dir``, or the user cache when empty
        (:func:`common.runtime.default_cache`)."""
        return Path(self.cache_dir) if self.cache_dir else default_cache()
    holdout_fraction: float = 0.0
    holdout_seed: int = 0

    def domain_names(self) -> list[str]:
        """Names of the configured domains, in order (partition ``i`` in simulation)."""
        if self.sources:
            return [s.name for s in self.sources]
        return list(self.synthetic.domains)


@dataclass
class PipelineConfig:
    """Everything a run needs: data, model, fine-tuning, merges, learned merges, federation.

    ``silo_dir``: where in-process silos keep their work (checkpoints, per-run records); default
    ``<output_dir>/silos``. Runs sharing it reuse each other's fine-tuned checkpoints.
    ``id_baseline``: also train an ID-based SASRec in each training silo, alone on its data
    (in-process only: the "train alone" reference, which cannot be merged).
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
    joint: bool = False
    id_baseline: SASRecConfig | None = None
    seed: int = 0
    output_dir: str | None = None
    silo_dir: str | None = None

    def coordinator(self) -> CoordinatorConfig:
        """What the coordinator needs of this run (and nothing of its data sources)."""
        return CoordinatorConfig(self.data.domain_names(), self.encoder, self.center_features,
                                 self.model, self.train, self.merges, self.learned,
                                 self.federation, self.seed, self.output_dir, str(self.data.cache()))

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
            with_overrides(self.train, own, f"federation.silo_train.{name}")


def load_domain(cfg: DataConfig, name: str) -> Domain:
    """Load one configured domain by name (a synthetic one is generated with its siblings)."""
    if name not in cfg.domain_names():
        raise KeyError(f"no domain '{name}' in the data config (have {cfg.domain_names()})")
    sources = [s for s in cfg.sources if s.name == name]
    full = [load_source(sources[0], cfg.cache())] if sources else \
        [d for d in make_synthetic_domains(cfg.synthetic) if d.name == name]
    return split_holdout(cfg, full[0])[0]


def split_holdout(cfg: DataConfig, domain: Domain) -> tuple[Domain, Domain | None]:
    """(the users a run may use, the held-out users or ``None``)."""
    if cfg.holdout_fraction <= 0:
        return domain, None
    return hold_out_users(domain, cfg.holdout_fraction, cfg.holdout_seed)


def load_source(src: DomainSource, cache_dir: str | Path) -> Domain:
    """Load a domain from its source (MergeRec JSON folder/.tar.gz or RecBole atomic files)."""
    if src.format == "mergerec_json":
        domain = load_mergerec_json(src.path, src.name, cache_dir=Path(cache_dir) / "data")
    else:
        domain = load_recbole(src.path, src.name)
    if src.max_users is not None:
        domain = subsample_users(domain, src.max_users, src.sample_seed)
    return domain


def load_domains(cfg: DataConfig) -> list[Domain]:
    """Load the configured domains (or generate the synthetic ones)."""
    return [split_holdout(cfg, d)[0] for d in load_full_domains(cfg)]


def load_full_domains(cfg: DataConfig) -> list[Domain]:
    """Every configured domain with all its users (held-out ones included)."""
    if not cfg.sources:
        return make_synthetic_domains(cfg.synthetic)
    return [load_source(src, cfg.cache()) for src in cfg.sources]


def config_from_run(values: Mapping[str, object], root: Path) -> PipelineConfig:
    """The run's :class:`PipelineConfig` from a Flower run config.

    ``experiment`` names a YAML PipelineConfig (relative paths resolve against ``root``, data
    source paths against ``data-dir``; empty: the embedded synthetic default). The flat keys
    override it where set: ``seed`` (-1: keep), ``output-dir``, ``catalogue`` (empty: keep),
    ``min-silos`` (0: keep), ``eval-only`` (comma-separated), ``query-budget`` (0: keep),
    ``dp-epsilon`` (user-level DP-SGD in every silo; 0: keep), ``progress``.
    """
    exp = str(values.get("experiment", "") or "")
    cfg = load_yaml(PipelineConfig, _under(root, exp)) if exp else PipelineConfig()
    data_root = Path(_under(root, str(values.get("data-dir", "") or "")))
    for src in cfg.data.sources:
        src.path = _under(data_root, src.path)
    if cfg.data.cache_dir:
        cfg.data.cache_dir = _under(root, cfg.data.cache_dir)
    if int(values.get("seed", -1)) >= 0:  # type: ignore[call-overload]
        cfg.seed = int(values["seed"])  # type: ignore[call-overload]
    if values.get("output-dir"):
        cfg.output_dir = _under(root, str(values["output-dir"]))
    fed = cfg.federation
    if values.get("catalogue"):
        fed.catalogue = str(values["catalogue"])  # type: ignore[assignment]
    if int(values.get("min-silos", 0) or 0) > 0:  # type: ignore[call-overload]
        fed.min_silos = int(values["min-silos"])  # type: ignore[call-overload]
    if values.get("eval-only"):
        fed.eval_only = [s.strip() for s in str(values["eval-only"]).split(",") if s.strip()]
    if int(values.get("query-budget", 0) or 0) > 0:  # type: ignore[call-overload]
        fed.query_budget = int(values["query-budget"])  # type: ignore[call-overload]
    if float(values.get("dp-epsilon", 0) or 0) > 0:  # type: ignore[arg-type]
        cfg.train.dp = DPConfig(epsilon=float(values["dp-epsilon"]))  # type: ignore[arg-type]
    if "progress" in values:  # progress bars (a display setting of this process, not the run's)
        set_progress(bool(values["progress"]))
    if fed.catalogue not in ("text", "vectors"):
        raise ConfigError(f"run config 'catalogue' must be 'text' or 'vectors', got {fed.catalogue!r}")
    return cfg


def _under(root: Path, path: str) -> str:
    return str(path if Path(path).is_absolute() else root / path)
