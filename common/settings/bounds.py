"""Range checks for numeric settings: a setting that guards something (a norm limit, a budget, a
privacy parameter) must not be switched off by a typo such as ``.inf``, ``-5`` or ``nan``."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """``low`` ≤ value (or < with ``strict``) ≤ ``high``; ``None`` on a side: unbounded there,
    but always finite. ``why``: what the bound protects, for the error."""

    low: float | None = None
    high: float | None = None
    strict: bool = False
    why: str = ""

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.strict else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return " and ".join(x for x in (low, high) if x) or "finite"


AT_LEAST_1 = Bound(1)
AT_LEAST_0 = Bound(0)
POSITIVE = Bound(0, strict=True)
FRACTION = Bound(0, 1)


def check_bounds(obj: object, **bounds: Bound) -> None:
    """Raise ``ValueError`` naming the field when a numeric field of ``obj`` (skipped when
    ``None``; every element for a list) is not finite or out of its :class:`Bound`."""
    for name, bound in bounds.items():
        value = getattr(obj, name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None:
                continue
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (bound.low is not None and (v <= bound.low if bound.strict else v < bound.low)) \
                or (bound.high is not None and v > bound.high)
            if bad:
                reason = f" ({bound.why})" if bound.why else ""
                raise ValueError(f"{name} must be a finite number {bound.describe()}{reason}, "
                                 f"got {v!r}")
