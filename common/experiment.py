"""A run's domains loaded from its data settings, and its configuration from a Flower run config
(the settings themselves: :mod:`common.settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .config import ConfigError, load_yaml
from .runtime import set_progress
from .data import Domain, load_path, make_synthetic_domains, subsample_users
from .privacy import hold_out_users
from .settings import DataConfig, DomainSource, DPConfig, PipelineConfig


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
    """Load a domain from its source (a folder or .tar.gz in one of :data:`common.data.FORMATS`)."""
    domain = load_path(src.path, src.format, src.name, Path(cache_dir) / "data",
                       src.description_chars)
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
        cfg.check_training(cfg.train, "run config dp-epsilon")
    if "progress" in values:  # progress bars (a display setting of this process, not the run's)
        set_progress(bool(values["progress"]))
    if fed.catalogue not in ("text", "vectors"):
        raise ConfigError(f"run config 'catalogue' must be 'text' or 'vectors', got {fed.catalogue!r}")
    return cfg


def _under(root: Path, path: str) -> str:
    return str(path if Path(path).is_absolute() else root / path)
