"""Reading a YAML config file: UTF-8, one mapping, no key given twice."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import yaml

from seqpipe.errors import ConfigError, SourceNotFoundError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error:
    PyYAML keeps the last, so a whole section written twice would vanish without a word."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML's own error says so
                break
            if first is not key_node:
                raise ConfigError(
                    f"key {key!r} appears twice in one mapping of config file "
                    f"{key_node.start_mark.name!r}, on lines {first.start_mark.line + 1} "
                    f"and {key_node.start_mark.line + 1}; YAML would keep only the last. "
                    f"Merge the two into one.")
        return super().construct_mapping(node, deep=deep)


def read_yaml(path) -> dict:
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise SourceNotFoundError(f"config file not found: {name!r}") from e
    if data.startswith(b"PAR1"):
        raise ConfigError(f"config file {name!r} is a Parquet file, not a YAML config; give "
                          f"the YAML config here (seqpipe inspect reads Parquet files)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {name!r} is not UTF-8 text (byte {data[e.start]:#04x} "
                          f"on line {data[:e.start].count(10) + 1}); save it as UTF-8 YAML") from e
    loader = _UniqueKeyLoader(text)
    loader.name = name  # for the line numbers of errors
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {name!r} is not valid YAML: {e}") from e
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {os.fspath(path)!r} must hold a mapping of sections "
                          f"(source, inputs, outputs, ...); got {type(raw).__name__}")
    return raw


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[:depth + 1])
            raise ConfigError(f"override {dotted!r}: {where} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
