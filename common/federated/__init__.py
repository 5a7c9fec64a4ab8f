"""Transport-neutral federation: silo handlers, coordinator flow, payload codec, checks, ledger.

No Flower imports here; ``silos/`` and ``coordinator/`` wrap these in Flower apps.
"""

from .checks import check_update, check_vectors
from .coordinator import (BASE_LABEL, IN_DOMAIN_LABEL, Federation, FederationError,
                          build_pseudo_data, run_coordinator)
from .ledger import Ledger
from .local import LocalFederation
from .protocol import (EVALUATE, INFO, MESSAGE_KINDS, QUERY, TRAIN, VALIDATE, Failure, Payload, QueryRefused,
                       RunSettings)
from .silo import OWN_TRAIN_METRIC, Silo, SiloConfig, SiloPolicy

__all__ = ["BASE_LABEL", "EVALUATE", "IN_DOMAIN_LABEL", "INFO", "MESSAGE_KINDS", "OWN_TRAIN_METRIC", "QUERY", "TRAIN", "VALIDATE", "Failure", "Federation",
           "FederationError", "Ledger", "LocalFederation", "Payload", "QueryRefused", "RunSettings",
           "Silo", "SiloConfig", "SiloPolicy", "build_pseudo_data", "check_update", "check_vectors",
           "run_coordinator"]
