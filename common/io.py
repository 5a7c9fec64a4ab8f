"""Writing files safely: atomic writes, errors that name the path, and a run's result files
staged until the run is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file


class OutputError(OSError):
    """A file could not be written; the message names it and says why."""


@contextlib.contextmanager
def naming_errors(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into an :class:`OutputError` naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    tmp = _temporary(path)
    with naming_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path,
                            metadata: dict[str, str] | None = None) -> None:
    """Save safetensors to a temporary file, then rename, so readers never see half a file."""
    tmp = _temporary(path)
    with naming_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


class RunOutputs:
    """A run's result files, written as the run goes into ``<out>/.partial-<pid>/`` and moved
    into ``<out>`` only by :meth:`commit`.

    Until then ``<out>`` keeps the previous run's results untouched; a run that dies leaves
    what it had done in the partial folder. The commit first removes the old ``report.json``
    (the mark of a complete folder), replaces the other result entries, and moves the new
    ``report.json`` in last, so a folder with a ``report.json`` is always a complete one. Other
    entries of ``<out>`` (silo work folders, caches) are left alone.
    """

    REPORT = "report.json"

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.stage = self.out / f".partial-{os.getpid()}"
        with naming_errors(self.stage):
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage.mkdir(parents=True)

    def path(self, relative: str) -> Path:
        """Where a result file goes while the run is in progress."""
        return self.stage / relative

    def commit(self) -> Path:
        """Move the staged results into place (see the class docstring); returns ``<out>``."""
        entries = sorted(p.name for p in self.stage.iterdir())
        if self.REPORT not in entries:
            raise OutputError(f"{self.stage}: no {self.REPORT}; the run's results are incomplete")
        with naming_errors(self.out):
            (self.out / self.REPORT).unlink(missing_ok=True)
            for name in [e for e in entries if e != self.REPORT] + [self.REPORT]:
                target = self.out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                (self.stage / name).replace(target)
            self.stage.rmdir()
        return self.out
