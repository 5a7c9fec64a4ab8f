"""Domain data: loaders, synthetic generator, validation."""

from .domain import DataError, Domain, Split
from .export import write_mergerec_json
from .formats import FORMATS, detect_format, load_path
from .lcrec import load_lcrec
from .mergerec_json import load_mergerec_json
from .recbole import load_recbole
from .subsample import subsample_users
from .synthetic import SyntheticConfig, make_synthetic_domains
from .validation import validate_domain

__all__ = [
    "FORMATS",
    "DataError",
    "Domain",
    "Split",
    "SyntheticConfig",
    "detect_format",
    "load_lcrec",
    "load_mergerec_json",
    "load_path",
    "load_recbole",
    "make_synthetic_domains",
    "subsample_users",
    "validate_domain",
    "write_mergerec_json",
]
