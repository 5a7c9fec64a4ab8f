"""The coordinator's configuration: what it needs of a run, and nothing of the run's data
sources; the learned-merge variants and the federation's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .bounds import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bound, check_bounds
from .distill import DistillConfig, LossConfig, PseudoUserConfig
from .merging import MergeConfig
from .model import ModelConfig
from .training import TrainConfig


@dataclass
class LearnedMergeSpec:
    """One learned-merge variant: its initialisation, pseudo-users, teacher and optimiser."""

    name: str
    init: MergeConfig = field(default_factory=MergeConfig)
    pseudo_users: PseudoUserConfig = field(default_factory=PseudoUserConfig)
    teacher_topk: int | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)


def default_learned() -> list[LearnedMergeSpec]:
    """Entropy-only (AdaMerging) and the full method, task-wise and layer-wise."""
    return [
        LearnedMergeSpec("adamerging (entropy)", distill=DistillConfig(
            loss=LossConfig(rec_weight=0.0, kd_weight=0.0, entropy_weight=1.0))),
        LearnedMergeSpec("mergerec task-wise", distill=DistillConfig(granularity="task")),
        LearnedMergeSpec("mergerec layer-wise", distill=DistillConfig(granularity="layer")),
    ]


def default_merges() -> list[MergeConfig]:
    """The training-free baselines, each with its customary hyper-parameters."""
    return [
        MergeConfig("average"),
        MergeConfig("task_arithmetic", lam=0.3),
        MergeConfig("ties", lam=1.0, density=0.2),
        MergeConfig("dare", lam=0.3, drop_rate=0.9),
        MergeConfig("pcb", lam=1.0, density=0.2),
        MergeConfig("localize_stitch", density=0.2),
    ]


@dataclass
class FederationConfig:
    """How the coordinator talks to the silos.

    ``catalogue``: what a silo sends about its items after training, the item ``text`` (the
    coordinator encodes it with the same frozen encoder) or only the frozen item ``vectors``.
    ``min_silos``: training silos that must deliver a valid update (default: all of them).
    ``eval_only``, ``query_budget``, ``silo_train`` (per silo name, its own fine-tuning
    settings over ``train``, e.g. ``{Pantry: {batch_size: 256}}``) and ``silo_policy`` (the
    :class:`~common.federated.SiloPolicy` of every silo, e.g. ``{share_weights: true}``; its
    evaluation protocol is the run's ``eval``) are silo-side settings; in deployment each silo
    takes them from its own node config (``train-batch-size=256``, ``share-weights=true``), in
    simulation and in-process (no node config) from here.
    Coordinator-side checks: ``max_catalogue_items`` per update; an update whose task-vector
    norm exceeds ``update_norm_limit`` times the median of the other silos' (at least 1 % of
    θ₀'s norm) is rejected;
    ``teacher_check_rows`` rows of every teacher answer are re-computed from the silo's
    weights and must agree within ``teacher_tolerance`` (0 rows: no check).
    Robust merging (every merge, training-free, learned and the new-domain path, takes the
    silos' task vectors as these leave them): a task vector longer than ``task_vector_clip``
    times the median of the other silos' norms is scaled down to that length (``None``: off);
    a silo whose task vector, added at ``contribution_lambda`` to the other silos' (task
    arithmetic), lowers the other silos' mean validation Recall@10 by more than the fraction
    ``contribution_tolerance`` is left out of every merge of the run, and so is a silo whose
    teacher answers fail their check (``None``: no contribution check).
    """

    catalogue: Literal["text", "vectors"] = "text"
    min_silos: int | None = None
    eval_only: list[str] = field(default_factory=list)
    query_budget: int | None = None
    silo_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    silo_policy: dict[str, Any] = field(default_factory=dict)
    max_query_rows: int = 20000
    max_catalogue_items: int = 2_000_000
    update_norm_limit: float = 10.0
    teacher_check_rows: int = 16
    teacher_tolerance: float = 1e-3
    task_vector_clip: float | None = 3.0
    contribution_tolerance: float | None = 0.2
    contribution_lambda: float = 0.3
    wait_for_silos_s: float = 120.0
    train_timeout_s: float = 7200.0
    query_timeout_s: float = 900.0
    eval_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        check_bounds(self, min_silos=AT_LEAST_1, query_budget=AT_LEAST_1,
                     max_query_rows=AT_LEAST_1, max_catalogue_items=AT_LEAST_1,
                     update_norm_limit=Bound(2, why="below 2 refuses honest silos; it must be "
                                             "finite to refuse anything"),
                     teacher_check_rows=Bound(0, why="0 turns the answer check off"),
                     teacher_tolerance=Bound(0, 1), wait_for_silos_s=AT_LEAST_0,
                     task_vector_clip=Bound(1, why="below 1 shortens the median silo"),
                     contribution_tolerance=Bound(0, 1, strict=True),
                     contribution_lambda=Bound(0, 2, strict=True),
                     train_timeout_s=POSITIVE, query_timeout_s=POSITIVE, eval_timeout_s=POSITIVE)


@dataclass
class NewDomainConfig:
    """How the run serves a catalogue no silo trained on (a shop that joins later).

    Candidates: θ₀ + λ · (sum of the training silos' task vectors) for λ in
    ``task_arithmetic`` (0: θ₀ itself), each scored with every combination of the catalogue-level
    serving settings ``whiten`` and ``history_decay`` (:class:`~common.settings.ServingConfig`:
    they need the new catalogue only, never its users). Every training silo judges them on its
    own validation split as a new domain meets them: built without its own task vector
    (leave-one-silo-out), each against θ₀ on the same users. Kept: the candidate with the best
    mean Recall@10 ratio to θ₀ among those that are at least θ₀'s Recall@10 and NDCG@10 on
    every silo (θ₀ itself when none is). The item-history bonus stays θ₀'s: a new shop may
    sell repeat purchases or not, and only its users could tell."""

    task_arithmetic: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2])
    whiten: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.75, 0.9])
    history_decay: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.6])

    def __post_init__(self) -> None:
        for name, top in (("task_arithmetic", 2.0), ("whiten", 0.9), ("history_decay", 0.95)):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                 or not 0.0 <= v <= top for v in values):
                raise ValueError(f"new_domain.{name} must be a non-empty list of numbers in "
                                 f"[0, {top}], got {values!r}")

    def candidates(self) -> list[tuple[float, float, float]]:
        """(λ, whiten, history_decay) of every candidate, θ₀ as it is first."""
        grid = [(float(lam), float(w), float(d)) for lam in self.task_arithmetic
                for w in self.whiten for d in self.history_decay]
        return [(0.0, 0.0, 0.0)] + [c for c in grid if c != (0.0, 0.0, 0.0)]


@dataclass
class CoordinatorConfig:
    """The run as the coordinator sees it: the silos' names in the run's order, the model and
    how it is built and trained, the merges and learned variants, the federation settings, the
    seed, where results go and where encoded catalogues are cached."""

    domains: list[str]
    encoder: str
    center_features: bool
    model: ModelConfig
    train: TrainConfig
    merges: list[MergeConfig]
    learned: list[LearnedMergeSpec]
    federation: FederationConfig
    seed: int
    output_dir: str | None
    cache_dir: str
    new_domain: NewDomainConfig | None = None

    def cache(self) -> Path:
        return Path(self.cache_dir)
