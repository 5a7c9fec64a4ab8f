"""Runtime facts about this machine (used to pick fast, accurate kernels)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator

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


def show_progress() -> bool:
    """Whether to draw progress bars: ``$MERGEREC_PROGRESS`` (``1`` / ``0``), by default only
    on a terminal. A display setting of this process, never part of a run's configuration (so
    nothing hashed or reproduced depends on it)."""
    value = os.environ.get("MERGEREC_PROGRESS", "").strip()
    return value == "1" if value in ("0", "1") else sys.stderr.isatty()


def log_to_stderr() -> None:
    """Show the library's INFO lines (a training's epochs, say) on stderr with the time, unless
    the program has configured logging itself: long work says where it is."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S")
    logging.getLogger("mergerec").setLevel(logging.INFO)


def set_progress(on: bool) -> None:
    """Turn progress bars on or off for this process (and the processes it starts)."""
    os.environ["MERGEREC_PROGRESS"] = "1" if on else "0"


def use_bf16(requested: bool) -> bool:
    """Whether to run bf16 autocast: requested and fast here."""
    return requested and bf16_matmul_is_fast()


def reproducible(seed: int) -> None:
    """Seed torch and make its kernels deterministic, so that one seed gives the same numbers
    run after run (on CPU the backward of indexing, ``index_put_(accumulate=True)``, sums in a
    thread-dependent order otherwise). Ops without a deterministic kernel only warn."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # no cost on torch.empty


def compute_device() -> torch.device:
    """Where training, evaluation and merge learning run: ``$MERGEREC_DEVICE`` (``cpu``,
    ``cuda``, ``cuda:N``; default ``auto`` = the first CUDA GPU when there is one, else CPU).

    Inputs and results stay on the CPU; only the heavy tensor work moves to the device.
    """
    name = os.environ.get("MERGEREC_DEVICE", "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"MERGEREC_DEVICE={name!r} is not a torch device") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MERGEREC_DEVICE={name!r} but torch sees no CUDA GPU here")
    return device


def bf16_enabled(device: torch.device, requested: bool) -> bool:
    """Whether :func:`autocast_bf16` turns bf16 on: where requested and it pays off (CPU: only
    with native bf16 support; CUDA: kept off so that GPU and CPU runs share fp32 numerics)."""
    return device.type == "cpu" and use_bf16(requested)


def autocast_bf16(device: torch.device, requested: bool) -> torch.autocast:
    """bf16 autocast on ``device`` where :func:`bf16_enabled`."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=bf16_enabled(device, requested))


@contextlib.contextmanager
def on_device(model: torch.nn.Module, eval_mode: bool = False) -> Iterator[torch.device]:
    """Run ``model`` on :func:`compute_device` (in eval mode if asked) and put it back where
    and how it was afterwards; yields the device."""
    device = compute_device()
    home = next(model.parameters()).device
    was_training = model.training
    model.to(device)
    if eval_mode:
        model.eval()
    try:
        yield device
    finally:
        model.to(home)
        model.train(was_training)
