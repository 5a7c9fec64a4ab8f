"""Runtime facts about this machine (used to pick fast, accurate kernels)."""

from __future__ import annotations

import functools
import time

import torch


@functools.cache
def bf16_matmul_is_fast(size: int = 256, min_speedup: float = 1.2) -> bool:
    """True when bf16 autocast matmuls beat fp32 on this CPU (AVX-512 BF16 / AMX).

    On CPUs without native bf16 support, autocast falls back to an emulated path that can
    be hundreds of times slower, so bf16 is only used where it measurably pays off.
    """
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(0))  # global RNG untouched

    def timed(bf16: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x @ x
            start = time.perf_counter()
            for _ in range(3):
                x @ x
            return time.perf_counter() - start

    return timed(True) * min_speedup < timed(False)


def use_bf16(requested: bool) -> bool:
    """Whether to run bf16 autocast: requested and fast here."""
    return requested and bf16_matmul_is_fast()
