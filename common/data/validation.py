"""Consistency checks shared by every loader; each failure names the file and the problem."""

from __future__ import annotations

from .domain import DataError, Domain


def validate_domain(domain: Domain, files: dict[str, str] | None = None) -> Domain:
    """Check ``domain`` and return it; raise :class:`DataError` on the first problem.

    ``files`` maps a role (``train``, ``val``, ``test``, ``meta``) to the file it came from,
    so that messages can point at the offending file.
    """
    files = files or {}
    where = lambda role: files.get(role, f"{domain.source} ({role})")  # noqa: E731
    if domain.num_items == 0:
        raise DataError(f"{where('meta')}: domain '{domain.name}' has no items")
    if domain.num_users == 0:
        raise DataError(f"{where('train')}: domain '{domain.name}' has no users")
    n = domain.num_items
    for i, text in enumerate(domain.item_texts):
        key = domain.item_keys[i] if i < len(domain.item_keys) else str(i)
        if not text.strip():
            raise DataError(f"{where('meta')}: item {key} (index {i}) has no text metadata")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where('meta')}: the text of item {key} (index {i}) is not valid "
                            "Unicode (a lone surrogate escape?)") from None
    if not (len(domain.train) == len(domain.val) == len(domain.test) == domain.num_users):
        raise DataError(f"{domain.source}: split sizes differ from the number of users")
    for role, rows in (("train", domain.train),):
        for u, seq in enumerate(rows):
            for i in seq:
                if not 0 <= i < n:
                    raise DataError(
                        f"{where(role)}: user {domain.user_ids[u]} has item id {i} "
                        f"outside [0, {n})"
                    )
    for role, targets in (("val", domain.val), ("test", domain.test)):
        for u, i in enumerate(targets):
            if i is not None and not 0 <= i < n:
                raise DataError(
                    f"{where(role)}: user {domain.user_ids[u]} has item id {i} outside [0, {n})"
                )
    if not any(domain.train):
        raise DataError(f"{where('train')}: domain '{domain.name}' has no training interactions")
    if all(t is None for t in domain.test):
        raise DataError(f"{where('test')}: domain '{domain.name}' has no test users")
    return domain
