"""Privacy accounting for user-level DP-SGD with Poisson-sampled users.

Uses Google's ``dp-accounting`` library (the one Flower's own RdpAccountant wraps) with its
privacy-loss-distribution (PLD) accountant, which is tight for the subsampled Gaussian
mechanism (RDP would over-state ε); a value discretisation of 1e-3 keeps ε exact to about
1e-4 on our settings at a tenth of the default's cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant


@dataclass
class DPConfig:
    """User-level DP for a silo's fine-tuning: one user = one privacy unit.

    ``epsilon`` is the target (``None``: no DP); ``delta`` defaults to 1 / number of users;
    the noise multiplier is calibrated to reach ``epsilon`` after ``epochs`` passes with
    Poisson sampling rate ``batch_size / users``, unless given explicitly.
    ``train_item_tower``: also train the item tower privately. Off by default: the item tower
    stays at θ₀ (it then holds nothing private), because a user's gradient through it needs a
    backward pass over the whole catalogue per user (measured 30-45× slower on 2.5k-5k items).
    """

    epsilon: float | None = None
    delta: float | None = None
    clip_norm: float = 1.0
    noise_multiplier: float | None = None
    train_item_tower: bool = False


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε after ``steps`` Poisson-sampled Gaussian steps (PLD accountant)."""
    if noise_multiplier <= 0:
        return float("inf")
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def calibrate_noise(epsilon: float, sample_rate: float, steps: int, delta: float,
                    tolerance: float = 0.01) -> float:
    """Smallest noise multiplier (within ``tolerance``) whose ε does not exceed ``epsilon``."""
    if epsilon <= 0:
        raise ValueError(f"target epsilon must be positive, got {epsilon}")
    low, high = 0.0, 1.0
    while dp_epsilon(high, sample_rate, steps, delta) > epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"epsilon {epsilon} is out of reach with {steps} steps")
    while high - low > tolerance:
        mid = (low + high) / 2
        if dp_epsilon(mid, sample_rate, steps, delta) > epsilon:
            low = mid
        else:
            high = mid
    return high
