"""Pseudo-users, teacher signals, distillation losses and merge-weight learning."""

from .learn import DistillConfig, DomainPseudoData, LearnResult, learn_merge_weights
from .losses import LossConfig, entropy_loss, kd_loss, merge_loss, mse_loss, rec_loss
from .pseudo_users import (PseudoUserConfig, build_pseudo_users, extend_walks, kmeans_nearest,
                           select_items)
from .teacher import TeacherSignal, teacher_scores

__all__ = ["DistillConfig", "DomainPseudoData", "LearnResult", "LossConfig", "PseudoUserConfig",
           "TeacherSignal", "build_pseudo_users", "extend_walks", "entropy_loss", "kd_loss", "kmeans_nearest",
           "learn_merge_weights", "merge_loss", "mse_loss", "rec_loss", "select_items",
           "teacher_scores"]
