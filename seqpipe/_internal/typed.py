"""Typed config sections: frozen dataclasses built from mappings, every key checked.

A field carries its one-line doc and an optional rule (`field`); `build` makes a dataclass
from a mapping, naming the key path, the value received and the allowed keys in every
error; `Section` runs the same checks when a section is made in Python.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from seqpipe.errors import ConfigError


def field(default: Any = dataclasses.MISSING, doc: str = "", check=None, rule: str = ""):
    """A dataclass field carrying its one-line doc and an optional value rule."""
    metadata = {"doc": doc, "check": check, "rule": rule}
    if isinstance(default, types.MappingProxyType):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def build(cls, raw: Any, path: str):
    """Builds dataclass `cls` from a mapping, checking keys, types and rules."""
    where = path or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys; got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            guess = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown key {_join(path, key)!r}.{guess} "
                              f"Allowed keys in {where}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key} is required. {f.metadata['doc']}")
            continue
        value = _convert(raw[name], hints[name], key)
        _check_rule(f, value, raw[name], key)
        values[name] = value
    return cls(**values)


def _check_rule(f: dataclasses.Field, value: Any, given: Any, key: str) -> None:
    check = f.metadata.get("check")
    if check is not None and not check(value):
        raise ConfigError(f"{key} {f.metadata['rule']}; got {_show(given)}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if isinstance(value, Mapping) and len(sections) == 1:  # its own errors name the key
            return _convert(value, sections[0], key)
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_describe(tp)}; got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key} must be {_describe(tp)}; got {_show(value)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build(tp, value, key)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of name -> spec; got {_show(value)}")
        return types.MappingProxyType(
            {str(k): _convert(v, args[1], _join(key, k)) for k, v in value.items()})
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be {_describe(tp)}; got {_show(value)}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is str and isinstance(value, datetime.date):  # YAML reads 2024-06-01 as a date
        return value.isoformat()
    if _is_instance(value, tp):
        return float(value) if tp is float else value
    raise ConfigError(f"{key} must be {_describe(tp)}; got {_show(value)}")


def _is_instance(value: Any, tp: Any) -> bool:
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        plurals = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plurals[args[0]]}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class Section:
    """A config section: every field is checked against its type and rule when the section
    is made, so that a config built in Python is checked like one loaded from YAML (which
    `build` checks first, with the full key path)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        name = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every subclass is one
            value = _convert(getattr(self, f.name), hints[f.name], f"{name}.{f.name}")
            _check_rule(f, value, getattr(self, f.name), f"{name}.{f.name}")
            object.__setattr__(self, f.name, value)  # lists as tuples, mappings read-only
