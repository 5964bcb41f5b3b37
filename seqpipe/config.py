"""The pipeline config: one frozen, validated dataclass per YAML section.

`load_config` turns a YAML file or a mapping into a `PipelineConfig`. Every key is checked
against the dataclass that owns its section: unknown keys are errors that list the allowed
ones, and a bad value names its key path (`padding.side must be 'pre' or 'post'; got 'left'`).
Nothing here imports TensorFlow or touches the data.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

import yaml

from seqpipe.errors import ConfigError, SourceNotFoundError

Level = Literal["timestep", "sequence"]
WeightMode = Literal["binary", "batch_mean", "global_mean", "sequence_mean"]


def _field(default: Any = dataclasses.MISSING, doc: str = "", check=None, rule: str = ""):
    """A dataclass field carrying its one-line doc and an optional value rule."""
    metadata = {"doc": doc, "check": check, "rule": rule}
    if isinstance(default, types.MappingProxyType):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _positive(value) -> bool:
    return value is None or value > 0


def _fills(value) -> list:
    if value is None:
        return []
    return list(value.values()) if isinstance(value, Mapping) else [value]


def _finite(value) -> bool:
    return value is None or math.isfinite(value)


def _build(cls, raw: Any, path: str):
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
        return value if isinstance(value, tp) else _build(tp, value, key)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of name -> spec; got {_show(value)}")
        return types.MappingProxyType(
            {str(k): _convert(v, args[1], _join(key, k)) for k, v in value.items()})
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be {_describe(tp)}; got {_show(value)}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
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
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class _Section:
    """A config section: every field is checked against its type and rule when the section
    is made, so that a config built in Python is checked like one loaded from YAML (which
    `_build` checks first, with the full key path)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        name = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every subclass is one
            value = _convert(getattr(self, f.name), hints[f.name], f"{name}.{f.name}")
            _check_rule(f, value, getattr(self, f.name), f"{name}.{f.name}")
            object.__setattr__(self, f.name, value)  # lists as tuples, mappings read-only


@dataclasses.dataclass(frozen=True)
class SourceConfig(_Section):
    """Where the sequences come from and how their rows are laid out."""

    path: Optional[str] = _field(
        None, "A Parquet file, a directory of Parquet files (hive partitions too), or a glob. "
        "Optional when the data is passed in memory.")
    layout: Literal["long", "nested"] = _field(
        "long", "long: one row per timestep; nested: one row per sequence with list columns.")
    id_column: Optional[str] = _field(
        None, "The sequence id. Required for `long`; for `nested`, sequences keep row order "
        "when absent.")
    time_column: Optional[str] = _field(
        None, "Orders the timesteps of a sequence. When absent, timesteps keep source order "
        "(files by name, rows in file order).")


@dataclasses.dataclass(frozen=True)
class InputConfig(_Section):
    """One model input: which columns feed it and at which level."""

    columns: tuple[str, ...] = _field(
        doc="Numeric columns, stacked in this order on the last axis.",
        check=lambda v: len(v) > 0 and len(set(v)) == len(v),
        rule="must be a non-empty list of distinct column names")
    level: Level = _field(
        "timestep", "timestep: a (batch, time, columns) tensor; sequence: (batch, columns).")
    fill_value: Union[float, Mapping[str, float], None] = _field(
        None, "Replaces NaN, null and infinite values: one number for every column, or "
        "{column: number}. null (default), or a column left out, makes them an error, "
        "because a NaN feature silently turns every loss it touches into NaN.",
        check=lambda v: all(math.isfinite(x) for x in _fills(v)),
        rule="must be a finite number, a mapping of column -> finite number, or null")

    def fill_for(self, column: str) -> Optional[float]:
        """The value that replaces a missing value of `column`, or None for an error."""
        if isinstance(self.fill_value, Mapping):
            return self.fill_value.get(column)
        return self.fill_value


@dataclasses.dataclass(frozen=True)
class OutputConfig(_Section):
    """One model output: its label column, its level and how its sample weights are made."""

    column: str = _field(doc="The label column. Null or NaN labels are missing: weight 0.")
    level: Level = _field(
        "timestep", "timestep: y (batch, time, 1), weight (batch, time); "
        "sequence: y (batch, 1), weight (batch,).")
    fill_value: float = _field(
        0.0, "Stands in for a missing label. It must be finite because 0 * NaN is NaN.",
        check=_finite, rule="must be a finite number")
    weights: Optional[WeightMode] = _field(
        None, "This output's weight mode; null uses `weights.mode`.")
    also_input: bool = _field(
        False, "true lets the label column also feed an input (an autoencoder reconstructs "
        "its input), with a warning; false refuses it, because a label fed to the model as a "
        "feature is a leak.")


@dataclasses.dataclass(frozen=True)
class PaddingConfig(_Section):
    """Truncation and padding, in the words of `keras.utils.pad_sequences`."""

    maxlen: Optional[int] = _field(
        None, "Longer sequences are truncated to this many timesteps; null keeps them whole. "
        "A batch pads to its longest sequence, never beyond maxlen.",
        check=_positive, rule="must be a positive integer or null")
    side: Literal["pre", "post"] = _field(
        "post", "Where padding goes (pad_sequences `padding`).")
    truncating: Literal["pre", "post"] = _field(
        "post", "Which end of a long sequence is cut (pad_sequences `truncating`): "
        "pre cuts the start and keeps the latest timesteps.")
    value: float = _field(
        0.0, "Written at padded positions of features and labels.",
        check=_finite, rule="must be a finite number")


@dataclasses.dataclass(frozen=True)
class BatchingConfig(_Section):
    """How sequences are grouped into batches."""

    batch_size: int = _field(
        64, "Sequences per batch; with max_timesteps, the most sequences per batch.",
        check=_positive, rule="must be a positive integer")
    bucket_boundaries: Union[tuple[int, ...], Literal["auto"], None] = _field(
        None, "Length boundaries: bucket i holds lengths in [b[i-1], b[i]), so a batch only "
        "mixes similar lengths. 'auto' picks them from the data; null means one bucket.",
        check=lambda v: v is None or v == "auto" or (
            len(v) > 0 and all(b > 0 for b in v) and all(a < b for a, b in zip(v, v[1:]))),
        rule="must be 'auto', null, or a non-empty, strictly increasing list of positive "
        "integers")
    drop_remainder: bool = _field(
        False, "Drop the last, smaller batch of each bucket; counted in the report.")
    max_timesteps: Optional[int] = _field(
        None, "Token budget: each batch holds at most this many padded timesteps, so "
        "buckets of short sequences get larger batches. null: batch_size alone decides.",
        check=lambda v: v is None or v > 0, rule="must be a positive integer or null")


@dataclasses.dataclass(frozen=True)
class WeightsConfig(_Section):
    """How sample weights are made from padding and missing labels."""

    mode: WeightMode = _field(
        "batch_mean", "batch_mean makes Keras's default loss the mean over present labels. "
        "See the README table for which mode goes with which Keras reduction.")


@dataclasses.dataclass(frozen=True)
class ShuffleConfig(_Section):
    """Shuffling of sequences and batches; reshuffled every epoch, reproducibly."""

    buffer_size: int = _field(
        0, "Sequences mixed together; 0 means no shuffle. At least the number of sequences "
        "gives a full shuffle.", check=lambda v: v >= 0, rule="must be an integer >= 0")
    seed: Optional[int] = _field(
        None, "The same seed gives the same batches in the same order, run after run. "
        "null draws a fresh seed, recorded in the report.",
        check=lambda v: v is None or v >= 0, rule="must be an integer >= 0 or null")


def _fraction(value) -> bool:
    return 0 <= value < 1


@dataclasses.dataclass(frozen=True)
class SplitConfig(_Section):
    """Train/validation/test split by sequence id: deterministic and leak-free."""

    validation: float = _field(
        0.0, "Share of sequences in the validation part.", check=_fraction,
        rule="must be a number in [0, 1)")
    test: float = _field(
        0.0, "Share of sequences in the test part.", check=_fraction,
        rule="must be a number in [0, 1)")
    seed: int = _field(
        0, "Another seed gives another split; the same seed, the same split everywhere.",
        check=lambda v: v >= 0, rule="must be an integer >= 0")

    @property
    def enabled(self) -> bool:
        return bool(self.validation or self.test)


@dataclasses.dataclass(frozen=True)
class PipelineConfig(_Section):
    """The whole pipeline: one field per YAML section."""

    inputs: Mapping[str, InputConfig] = _field(doc="Model input name -> input spec.")
    outputs: Mapping[str, OutputConfig] = _field(
        types.MappingProxyType({}),
        "Model output name -> output spec. Empty yields features only, for predict().")
    source: SourceConfig = _field(SourceConfig(), "Where the data is.")
    padding: PaddingConfig = _field(PaddingConfig(), "Truncation and padding.")
    batching: BatchingConfig = _field(BatchingConfig(), "Batch size and buckets.")
    weights: WeightsConfig = _field(WeightsConfig(), "Sample weight mode.")
    shuffle: ShuffleConfig = _field(ShuffleConfig(), "Shuffling.")
    split: SplitConfig = _field(SplitConfig(), "Train/validation/test parts by sequence id.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_cross_fields(self)

    def weight_mode(self, output: str) -> str:
        """The weight mode of one output: its own, or `weights.mode`."""
        return self.outputs[output].weights or self.weights.mode

    @property
    def levels(self) -> dict:
        """Input or output name -> "timestep" or "sequence"."""
        return {name: spec.level for specs in (self.inputs, self.outputs)
                for name, spec in specs.items()}

    def to_dict(self) -> dict:
        """A plain, YAML-ready dict that `load_config` turns back into an equal config."""
        return _to_plain(self)


def _check_cross_fields(config: PipelineConfig) -> None:
    """The rules that tie several keys together, one group of sections at a time."""
    _check_inputs(config)
    _check_source_and_split(config)
    _check_label_leaks(config)
    _check_feature_columns(config)
    _check_batching(config)


def _check_inputs(config: PipelineConfig) -> None:
    if not config.inputs:
        raise ConfigError("inputs must name at least one model input; got none. "
                          "Example: inputs: {vitals: {columns: [hr, bp]}}")
    if all(spec.level == "sequence" for spec in config.inputs.values()):
        raise ConfigError(
            f"at least one input must have level: timestep, since seqpipe batches time "
            f"series; every input is level: sequence ({', '.join(config.inputs)})")
    clash = set(config.inputs) & set(config.outputs)
    if clash:
        raise ConfigError(f"a name cannot be both an input and an output; got {sorted(clash)}")


def _check_source_and_split(config: PipelineConfig) -> None:
    source = config.source
    if source.layout == "long" and not source.id_column:
        raise ConfigError(
            "source.id_column is required when source.layout is 'long' (one row per "
            "timestep): it says which rows belong to which sequence. Got none. Set "
            "source.id_column, or use source.layout: nested for one row per sequence.")
    split = config.split
    if split.validation + split.test >= 1:
        raise ConfigError(
            f"split.validation + split.test must be below 1, leaving sequences to train on; "
            f"got {split.validation} + {split.test}")
    if split.enabled and not source.id_column:
        raise ConfigError(
            "split needs source.id_column: a sequence's part is decided by its id, so that "
            "it does not change with row order or file layout. Set source.id_column.")
    if source.id_column and source.id_column == source.time_column:
        raise ConfigError(
            f"source.id_column and source.time_column are both {source.id_column!r}; the id "
            f"says which rows form a sequence and the time orders them, so they must be "
            f"different columns")


def _check_feature_columns(config: PipelineConfig) -> None:
    keys = {c: "source.id_column" for c in [config.source.id_column] if c}
    for name, spec in config.inputs.items():
        if isinstance(spec.fill_value, Mapping):
            unknown = sorted(set(spec.fill_value) - set(spec.columns))
            if unknown:
                raise ConfigError(
                    f"inputs.{name}.fill_value names columns that are not in "
                    f"inputs.{name}.columns: {unknown}; its columns are {list(spec.columns)}")
        for column in spec.columns:
            if column in keys:
                raise ConfigError(
                    f"inputs.{name}.columns uses column {column!r}, which is "
                    f"{keys[column]}; a sequence key cannot also be a feature")


def _check_batching(config: PipelineConfig) -> None:
    batching = config.batching
    boundaries = batching.bucket_boundaries
    maxlen = config.padding.maxlen
    if batching.max_timesteps is not None and maxlen is not None \
            and batching.max_timesteps < maxlen:
        raise ConfigError(
            f"batching.max_timesteps ({batching.max_timesteps}) is smaller than padding.maxlen "
            f"({maxlen}), so a sequence of maxlen timesteps fits in no batch. Raise "
            f"max_timesteps to at least {maxlen} or lower maxlen.")
    if isinstance(boundaries, tuple) and maxlen is not None and boundaries[-1] > maxlen:
        raise ConfigError(
            f"batching.bucket_boundaries must not exceed padding.maxlen ({maxlen}), because "
            f"no sequence is longer than maxlen after truncation. Received: {list(boundaries)}")


def _check_label_leaks(config: PipelineConfig) -> None:
    """A label column that also feeds an input hands the model its answer."""
    fed = {c: f"inputs.{name}.columns" for name, spec in config.inputs.items()
           for c in spec.columns}
    for name, output in config.outputs.items():
        if output.column in fed and not output.also_input:
            raise ConfigError(
                f"outputs.{name}.column {output.column!r} is also in {fed[output.column]}: the "
                f"model would be fed the label it has to predict (a label leak). Use another "
                f"column for the input or the label (a shifted copy, say), or set "
                f"outputs.{name}.also_input: true if the model reconstructs its input.")


def leaked_labels(config: PipelineConfig) -> list[str]:
    """The outputs whose label column also feeds an input, as `also_input` allows."""
    fed = {c for spec in config.inputs.values() for c in spec.columns}
    return [name for name, spec in config.outputs.items() if spec.column in fed]


def load_config(source: Union[str, os.PathLike, Mapping, PipelineConfig],
                overrides: Optional[Mapping[str, Any]] = None) -> PipelineConfig:
    """Loads and validates a pipeline config.

    Args:
      source: a YAML file path, a mapping shaped like the YAML, or a `PipelineConfig`.
      overrides: dotted keys to set before validation, e.g. `{"batching.batch_size": 128}`.

    Returns:
      A frozen `PipelineConfig`.

    Raises:
      ConfigError: a key is unknown or missing, or a value breaks its rule. The message names
        the key path and the value received.
      SourceNotFoundError: `source` is a path that does not exist.

    Example:
      >>> config = load_config({"source": {"layout": "nested"},
      ...                       "inputs": {"x": {"columns": ["a"]}}})
      >>> config.padding.side
      'post'
    """
    if isinstance(source, PipelineConfig):
        raw = source.to_dict()
    elif isinstance(source, Mapping):
        raw = _to_plain(source)
    else:
        raw = _read_yaml(source)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return _build(PipelineConfig, raw, "")


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


def _read_yaml(path) -> dict:
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


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[:depth + 1])
            raise ConfigError(f"override {dotted!r}: {where} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
