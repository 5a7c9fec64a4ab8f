"""Domain data: loaders, synthetic generator, validation."""

from .domain import DataError, Domain, Split
from .export import write_mergerec_json
from .mergerec_json import load_mergerec_json
from .recbole import load_recbole
from .subsample import subsample_users
from .synthetic import SyntheticConfig, make_synthetic_domains
from .validation import validate_domain

__all__ = [
    "DataError",
    "Domain",
    "Split",
    "SyntheticConfig",
    "load_mergerec_json",
    "load_recbole",
    "make_synthetic_domains",
    "subsample_users",
    "validate_domain",
    "write_mergerec_json",
]
