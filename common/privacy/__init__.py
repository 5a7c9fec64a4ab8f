"""Measured leakage (pure, no Flower imports): a membership-inference attack from the
coordinator's point of view; the DP settings (:mod:`common.settings`) and the DP-SGD accounting
(:mod:`common.training.accountant`) are re-exported here."""

from ..settings import DPConfig
from ..training.accountant import calibrate_noise, dp_epsilon
from .attack import attack_metrics, hold_out_users, membership_scores

__all__ = ["DPConfig", "attack_metrics", "calibrate_noise", "dp_epsilon", "hold_out_users",
           "membership_scores"]
