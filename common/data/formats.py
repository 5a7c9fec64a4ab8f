"""One entry point for every domain format: MergeRec JSON, RecBole atomic files, LC-Rec JSON."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Literal, get_args

from .domain import DataError, Domain
from .lcrec import load_lcrec
from .mergerec_json import load_mergerec_json
from .recbole import load_recbole

Format = Literal["mergerec_json", "recbole", "lcrec"]
FORMATS: tuple[str, ...] = get_args(Format)


def detect_format(path: str | Path) -> Format:
    """The format of a domain folder or ``.tar.gz`` by the files it holds: ``*.inter.json``
    is LC-Rec, ``*.inter`` RecBole, anything else MergeRec JSON (whose loader then names
    what is missing)."""
    path = Path(path)
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
    elif path.suffix in (".gz", ".tgz") and path.is_file():
        try:
            with tarfile.open(path, "r:gz") as tar:
                names = [Path(n).name for n in tar.getnames()]
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            return "mergerec_json"  # its loader reports the damage, naming the archive
    else:
        return "mergerec_json"
    if any(n.endswith(".inter.json") for n in names):
        return "lcrec"
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    return "mergerec_json"


def load_path(path: str | Path, fmt: str = "auto", name: str | None = None,
              cache_dir: str | Path = ".cache/data", description_chars: int = 0) -> Domain:
    """A domain from ``path`` in format ``fmt`` (``auto``: :func:`detect_format`);
    ``description_chars`` adds LC-Rec item descriptions, cut to that length."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown data format {fmt!r} (have {', '.join(FORMATS)})")
    if description_chars and fmt != "lcrec":
        raise DataError(f"{path}: description_chars applies to the lcrec format only, not {fmt}")
    if fmt == "lcrec":
        return load_lcrec(path, name, cache_dir=cache_dir, description_chars=description_chars)
    if fmt == "recbole":
        return load_recbole(path, name)
    return load_mergerec_json(path, name, cache_dir=cache_dir)
