"""Full-ranking evaluation and metrics."""

from .evaluate import EvalConfig, EvalResult, evaluate_model, evaluate_popularity, evaluate_scores
from .metrics import metrics_from_ranks, ndcg_single, target_ranks

__all__ = ["EvalConfig", "EvalResult", "evaluate_model", "evaluate_popularity", "evaluate_scores",
           "metrics_from_ranks", "ndcg_single", "target_ranks"]
