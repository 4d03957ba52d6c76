"""The typed config loader: dataclass fields with a one-line doc, dot-path overrides parsed as
YAML, and a recursive dict -> dataclass build that checks keys (with a did-you-mean) and types.

Generic: hv_tune's training ``Config`` and curation's ``CurationConfig`` both load through it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hv_tune.errors import ConfigError


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file whose top level is a mapping (an empty file is ``{}``).

    The one YAML reader of hv_tune and curation.

    Raises:
        ConfigError: the file is missing, a folder, unreadable, not UTF-8, not YAML, or not a mapping.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:  # a folder, unreadable, not text
        why = getattr(e, "strerror", None) or e
        raise ConfigError(f"config file {path} cannot be read as UTF-8 YAML: {why}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return raw


def doc_field(default: Any, doc: str, **kw: Any) -> Any:
    """A dataclass field with a docstring (``default_factory`` for lists, dicts and dataclasses)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to the nested dict ``raw``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value (e.g. lora.rank=32)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); quote the "
                          "whole override for the shell and write lists/maps in YAML flow style, e.g. "
                          "'data.frame_buckets=[1, 33]' or 'data.sources=[{path: clips}]' (space after the colon)") from None


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, checking keys and types (recursively).

    Generic: any nested dataclass config (hv_tune's ``Config``, curation's ``CurationConfig``).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = prefix + str(key)
            valid = [prefix + n for n in names]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, raw[name] or {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(raw[name], tp, prefix + name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; ints are accepted for floats."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if tp is Any:  # free-form values (e.g. training.optimizer_args), checked by their user
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = " | ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {choices}")
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} does not fit {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {key!r}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        val_tp = typing.get_args(tp)[1]
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


def field_docs(cls: type, prefix: str = "") -> dict[str, str]:
    """Map of every dot-path key of dataclass ``cls`` to its one-line doc (used by docs and tests)."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], prefix + f.name + "."))
        else:
            out[prefix + f.name] = f.metadata.get("doc", "")
    return out
