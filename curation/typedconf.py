"""A compact typed-config loader: nested dataclasses from plain data, with key and type checks.

Supports the types curation's config uses: bool, int, float, str, ``Literal``, ``X | None``,
``list[X]`` (X may be a dataclass) and ``dict[str, X]``. Unknown keys are errors that name the
key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

import yaml

from curation.errors import ConfigError


def doc_field(default: Any, doc: str) -> Any:
    """A dataclass field with a one-line doc (``default_factory`` for lists, dicts, dataclasses)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def _copy(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value)
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to nested dict ``raw``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value (e.g. filters.aesthetic_min=5)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, checking keys and types recursively."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full, valid = prefix + str(key), [prefix + n for n in names]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
    kwargs = {name: coerce(raw[name], hints[name], prefix + name) for name in names if name in raw}
    return cls(**kwargs)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (ints are accepted for floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {' | '.join(map(str, args))}")
        return value
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args).replace("NoneType", "null")
        raise ConfigError(f"config key {key!r}: {value!r} is not a {names}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {key!r}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    return _scalar(value, tp, key)


def _scalar(value: Any, tp: type, key: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) and tp is not bool:
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


def field_docs(cls: type, prefix: str = "") -> dict[str, str]:
    """Every dot-path key of ``cls`` mapped to its one-line doc."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], prefix + f.name + "."))
        else:
            out[prefix + f.name] = f.metadata.get("doc", "")
    return out
