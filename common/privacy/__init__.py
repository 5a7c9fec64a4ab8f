"""Differential privacy and measured leakage (pure, no Flower imports): accounting for
user-level DP-SGD and a membership-inference attack from the coordinator's point of view."""

from .accountant import DPConfig, calibrate_noise, dp_epsilon
from .attack import attack_metrics, hold_out_users, membership_scores

__all__ = ["DPConfig", "attack_metrics", "calibrate_noise", "dp_epsilon", "hold_out_users",
           "membership_scores"]
