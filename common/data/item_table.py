"""Item tables (``item_id``, ``text``) as CSV that spreadsheets open safely.

A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
a spreadsheet (CSV injection); such a text, and one beginning with the escape itself, is
written with a leading ``'`` (the spreadsheet convention), which :func:`unescape_cell` takes
off again when the table is read, so a written catalogue reads back exactly.
"""

from __future__ import annotations

import csv
import io

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def escape_cell(text: str) -> str:
    return ESCAPE + text if text.startswith((*FORMULA_STARTS, ESCAPE)) else text


def unescape_cell(text: str) -> str:
    escaped = text.startswith(ESCAPE) and text[1:].startswith((*FORMULA_STARTS, ESCAPE))
    return text[1:] if escaped else text


def item_table(texts: list[str]) -> str:
    """A catalogue as an item table: ``item_id`` = the item's index, ``text`` escaped."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["item_id", "text"])
    writer.writerows((i, escape_cell(t)) for i, t in enumerate(texts))
    return buf.getvalue()
