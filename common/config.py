"""Typed configs from YAML: nested dataclasses, unknown keys and wrong types are errors."""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-12`` and ``3e-4`` are numbers (YAML 1.1
    wants a dot in the mantissa and reads them as strings)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


class ConfigError(ValueError):
    """A config file or mapping does not fit the expected schema."""


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(args[1] if args else Any, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; missing keys keep their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


EXTENDS = "extends"
APPEND = "+"  # suffix of a key that appends to an inherited list


def deep_merge(base: dict, changes: dict, _at: str = "") -> dict:
    """``base`` with ``changes`` merged in: nested mappings key by key, anything else (lists
    included) replaced, except that a key written ``name+`` appends its list to the list
    ``name`` of ``base`` (``sources+: [{name: Toys, path: Toys.tar.gz}]`` adds a domain)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(key, str) and key.endswith(APPEND):
            name = key[:-len(APPEND)]
            if name in changes or not isinstance(value, list) or \
                    not isinstance(out.get(name), list):
                raise ConfigError(f"'{_at}{key}' appends a list to an inherited list "
                                  f"'{_at}{name}' (and is not given beside it)")
            out[name] = out[name] + copy.deepcopy(value)
        elif isinstance(value, dict):
            inner = out.get(key) if isinstance(out.get(key), dict) else {}
            out[key] = deep_merge(inner, value, f"{_at}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_overrides(obj: T, changes: dict[str, Any], where: str) -> T:
    """A copy of dataclass ``obj`` with ``changes`` deep-merged in, type-checked like a file."""
    return from_dict(type(obj), deep_merge(to_dict(obj), changes), where)


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> Any:
    """The YAML document at ``path``; a mapping with ``extends: other.yaml`` (relative to this
    file) is that file's mapping with this one deep-merged over it, so a variant config names
    only what it changes (:func:`deep_merge`: ``key+`` appends to the inherited list). Paths
    inside the merged mapping are read as the extending file's own (keep variants beside what
    they extend). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - safe
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                          "as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        return data
    parent = data.pop(EXTENDS, None)
    base: Any = {}
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{path}: '{EXTENDS}' must name a YAML file, got {parent!r}")
        target = (path.parent / parent).resolve()
        chain = (*_chain, path.resolve())
        if target in chain:
            raise ConfigError(f"{path}: '{EXTENDS}: {parent}' forms a cycle "
                              f"({' -> '.join(p.name for p in (*chain, target))})")
        base = read_yaml(target, chain)
        if not isinstance(base, dict):
            raise ConfigError(f"{target}: expected a mapping (extended by {path})")
    try:
        return deep_merge(base, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load ``cls`` from a YAML file (``extends`` resolved, :func:`read_yaml`); errors name the
    file and the offending key."""
    return from_dict(cls, read_yaml(path), str(path))


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict for JSON reports."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
