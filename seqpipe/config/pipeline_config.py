"""The whole pipeline config: `PipelineConfig` (one field per YAML section), the rules that
tie several sections together (checked when one is made, one group of sections at a time;
each error names the keys, the values received and how to fix them) and `load_config`.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

from seqpipe._internal.typed import Section, build, field
from seqpipe._internal.yaml_file import read_yaml, set_dotted, to_plain
from seqpipe.config.sections import (
    BatchingConfig,
    InputConfig,
    OutputConfig,
    PaddingConfig,
    ShuffleConfig,
    SourceConfig,
    SplitConfig,
    WeightsConfig,
    WindowsConfig,
)
from seqpipe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PipelineConfig(Section):
    """The whole pipeline: one field per YAML section."""

    inputs: Mapping[str, InputConfig] = field(doc="Model input name -> input spec.")
    outputs: Mapping[str, OutputConfig] = field(
        types.MappingProxyType({}),
        "Model output name -> output spec. Empty yields features only, for predict().")
    source: SourceConfig = field(SourceConfig(), "Where the data is.")
    padding: PaddingConfig = field(PaddingConfig(), "Truncation and padding.")
    batching: BatchingConfig = field(BatchingConfig(), "Batch size and buckets.")
    weights: WeightsConfig = field(WeightsConfig(), "Sample weight mode.")
    shuffle: ShuffleConfig = field(ShuffleConfig(), "Shuffling.")
    split: SplitConfig = field(SplitConfig(), "Train/validation/test parts by sequence id.")
    windows: Optional[WindowsConfig] = field(
        None, "Cut every sequence into forecasting windows; null: whole sequences.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.padding.side is None:
            side: Literal["pre", "post"] = "post" if self.windows is None else "pre"
            object.__setattr__(self, "padding", dataclasses.replace(self.padding, side=side))
        check_cross_fields(self)

    def weight_mode(self, output: str) -> str:
        """The weight mode of one output: its own, or `weights.mode`."""
        return self.outputs[output].weights or self.weights.mode

    @property
    def levels(self) -> dict:
        """Input or output name -> "timestep" or "sequence": how the source holds it."""
        return {name: spec.level for specs in (self.inputs, self.outputs)
                for name, spec in specs.items()}

    def to_dict(self) -> dict:
        """A plain, YAML-ready dict that `load_config` turns back into an equal config."""
        return to_plain(self)


def check_cross_fields(config: PipelineConfig) -> None:
    """The rules that tie several keys together, one group of sections at a time."""
    _check_inputs(config)
    _check_source_and_split(config)
    _check_outputs(config)
    _check_label_leaks(config)
    _check_feature_columns(config)
    _check_preparation(config)
    _check_scaling(config)
    _check_batching(config)
    _check_windows(config)
    _check_packing(config)


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
    mask = config.padding.mask
    if mask is not None and not mask.strip():
        raise ConfigError(f"padding.mask must name the mask input (say 'timestep_mask'), or "
                          f"be null for none; got {mask!r}")
    if mask is not None and (mask in config.inputs or mask in config.outputs):
        raise ConfigError(
            f"padding.mask {mask!r} is also the name of an input or output; the mask is an "
            f"input of its own. Give it another name, say 'timestep_mask'.")


def _check_outputs(config: PipelineConfig) -> None:
    for name, output in config.outputs.items():
        if (output.column is None) == (output.columns is None):
            raise ConfigError(
                f"outputs.{name} needs exactly one of column (one label column) or columns "
                f"(several); got column={output.column!r}, columns="
                f"{list(output.columns) if output.columns else None!r}")
        if output.categorical and output.columns is not None and len(output.columns) > 1:
            raise ConfigError(
                f"outputs.{name}.categorical takes one label column; got columns "
                f"{list(output.columns)}. Make one output per categorical label.")


def _check_preparation(config: PipelineConfig) -> None:
    """normalize, time_delta, missing_indicators and categorical, input by input."""
    for name, spec in config.inputs.items():
        key = f"inputs.{name}"
        if spec.categorical:
            if len(spec.columns) != 1:
                raise ConfigError(
                    f"{key}.categorical takes exactly one column, whose values become ids; "
                    f"got columns {list(spec.columns)}. Make one input per categorical "
                    f"column.")
            for option in ("normalize", "time_delta", "missing_indicators"):
                if getattr(spec, option):
                    raise ConfigError(
                        f"{key}.{option} does not apply to a categorical input (its values "
                        f"are ids, and a missing one is id 1); got {option}: "
                        f"{getattr(spec, option)!r}. Put numeric columns in another input.")
            if spec.fill_value is not None:
                raise ConfigError(
                    f"{key}.fill_value does not apply to a categorical input: a missing "
                    f"value is id 1. Remove it; got {spec.fill_value!r}")
        elif spec.max_tokens is not None:
            raise ConfigError(f"{key}.max_tokens needs {key}.categorical: true; got "
                              f"max_tokens: {spec.max_tokens}")
        if spec.time_delta and spec.level == "sequence":
            raise ConfigError(f"{key}.time_delta needs level: timestep (a time between "
                              f"timesteps); {key} has level: sequence")
        if spec.time_delta and not config.source.time_column:
            raise ConfigError(f"{key}.time_delta needs source.time_column, the times it "
                              f"takes differences of; none is set")


def _check_scaling(config: PipelineConfig) -> None:
    """normalize of inputs and outputs: which methods go with which statistics."""
    for kind, specs in (("inputs", config.inputs), ("outputs", config.outputs)):
        for name, spec in specs.items():
            scaling, key = spec.scaling, f"{kind}.{name}.normalize"
            if scaling is None:
                continue
            if kind == "outputs" and spec.categorical:
                raise ConfigError(f"{key} does not apply to a categorical output (its labels "
                                  f"are class ids); got {spec.normalize!r}. Remove it.")
            if scaling.method == "mean" and scaling.per == "dataset":
                raise ConfigError(
                    f"{key}: method mean divides each series by its own mean absolute value, "
                    f"so it needs per: series; got per: dataset. Use {{method: mean, per: "
                    f"series}}, or method standard or minmax for one scale over the dataset.")
            if scaling.per != "dataset" and spec.level == "sequence":
                raise ConfigError(
                    f"{key}: per: {scaling.per} computes statistics over the timesteps of a "
                    f"{scaling.per}, and {kind}.{name} has level: sequence (one value per "
                    f"sequence, nothing to compute them over). Use per: dataset.")
            if scaling.per == "window":
                _check_per_window(config, kind, name, spec, key)
            if scaling.input is not None:
                _check_scale_input(config, key, scaling)
            if kind == "outputs" and scaling.per == "series" and config.split.by_sequence:
                raise ConfigError(
                    f"{key}: per: series scales a sequence's labels by statistics of its own "
                    f"labels, so a validation or test sequence would be scaled with the "
                    f"answers it is scored on (the split is by sequence: "
                    f"{_split_keys(config.split)}). Hold out each "
                    f"series' last timesteps instead (windows with split.time_cutoff or "
                    f"split.holdout_last: their labels never enter the statistics), or use "
                    f"per: dataset.")


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
    if split.column is not None and split.by_id:
        raise ConfigError(
            f"split.column ({split.column!r}) reads each sequence's part from the data, so "
            f"split.validation and split.test do not apply; got validation: "
            f"{split.validation}, test: {split.test}. Remove them, or remove split.column.")
    if split.column is not None and split.column in (source.id_column, source.time_column):
        raise ConfigError(f"split.column {split.column!r} is also source.id_column or "
                          f"source.time_column; the parts need a column of their own")
    if split.by_id and not source.id_column:
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
    if batching.static_shapes and maxlen is None and config.windows is None:
        raise ConfigError(
            "batching.static_shapes pads the last bucket to padding.maxlen, so it needs one: "
            "set padding.maxlen to the longest sequence you keep (longer ones are truncated "
            "and counted in the report).")


def _check_windows(config: PipelineConfig) -> None:
    """The rules of window mode, and the keys that need it."""
    windows = config.windows
    if windows is None:
        for name, spec in config.inputs.items():
            if spec.window != "history":
                raise ConfigError(
                    f"inputs.{name}.window: {spec.window} needs a windows section (the "
                    f"horizon it is known over); got none. Add windows: {{history: ..., "
                    f"horizon: ...}} or remove the key.")
        if config.split.by_time:
            raise ConfigError(
                f"{config.split.held_out} splits forecasting windows by time and needs a "
                f"windows section; whole sequences are split by id (split.validation, "
                f"split.test)")
        return
    if windows.shortest > windows.history:
        raise ConfigError(f"windows.min_history ({windows.min_history}) must be at most "
                          f"windows.history ({windows.history})")
    padding = config.padding
    if padding.side != "pre":
        raise ConfigError(
            "padding.side must be 'pre' with windows: a history shorter than "
            "windows.history starts at a sequence's start, so its padding goes in front and "
            "its last timestep stays next to the horizon. Set padding.side: pre.")
    if padding.maxlen is not None:
        raise ConfigError(
            f"padding.maxlen does not apply with windows (every window has "
            f"windows.history={windows.history} timesteps); got maxlen: {padding.maxlen}. "
            f"Remove it.")
    batching = config.batching
    for key, value in (("bucket_boundaries", batching.bucket_boundaries),
                       ("max_timesteps", batching.max_timesteps)):
        if value is not None:
            raise ConfigError(
                f"batching.{key} does not apply with windows: every window has the same "
                f"shape, so there is nothing to bucket; got {key}: {value!r}. Remove it.")
    for name, spec in config.inputs.items():
        if spec.window == "future" and (spec.level == "sequence" or not windows.horizon):
            raise ConfigError(
                f"inputs.{name}.window: future feeds values at the horizon's timesteps, so it "
                f"needs level: timestep and windows.horizon > 0; got level: {spec.level}, "
                f"horizon: {windows.horizon}")
    split = config.split
    if split.time_cutoff is not None:
        if not config.source.time_column:
            raise ConfigError(
                f"split.time_cutoff ({split.time_cutoff!r}) compares target times, so it "
                f"needs source.time_column; none is set")
    if split.time_cutoff is not None and split.holdout_last is not None:
        raise ConfigError(
            f"split.time_cutoff ({split.time_cutoff!r}) and split.holdout_last "
            f"({split.holdout_last}) both say where the held-out timesteps start; use one.")
    if split.by_time and split.by_sequence:
        raise ConfigError(
            f"{split.held_out} splits windows by time; it cannot be combined with a split "
            f"by sequence ({_split_keys(split)}). Use one or the other.")


def _check_packing(config: PipelineConfig) -> None:
    """Packed rows hold whole sequences end to end, one shape for every batch."""
    packing, batching, padding = config.batching.packing, config.batching, config.padding
    if packing is None:
        return
    if config.windows is not None:
        raise ConfigError(
            "batching.packing packs whole sequences and windows cut them: use one. Windows "
            "already have one shape (batch_size x windows.history).")
    if padding.maxlen is None or padding.maxlen > packing.length:
        raise ConfigError(
            f"batching.packing needs padding.maxlen at most packing.length "
            f"({packing.length}), so that every sequence fits in a row; got maxlen: "
            f"{padding.maxlen}. Set padding.maxlen to {packing.length} or less (longer "
            f"sequences are truncated and counted in the report).")
    if padding.side == "pre":
        raise ConfigError(
            "padding.side: pre does not apply with batching.packing: a row's sequences lie "
            "end to end from its start and its padding is at its end. Remove padding.side.")
    for key, value in (("bucket_boundaries", batching.bucket_boundaries),
                       ("max_timesteps", batching.max_timesteps)):
        if value is not None:
            raise ConfigError(
                f"batching.{key} does not apply with batching.packing: every batch is "
                f"batch_size rows of packing.length timesteps; got {key}: {value!r}. "
                f"Remove it.")
    names = (packing.segment_ids, packing.positions)
    scale_inputs = [s.scaling.input for specs in (config.inputs, config.outputs)
                    for s in specs.values() if s.scaling is not None and s.scaling.input]
    taken = {*config.inputs, *config.outputs, padding.mask, *scale_inputs}
    if names[0] == names[1] or taken & set(names):
        raise ConfigError(
            f"batching.packing.segment_ids and positions name two extra inputs of their "
            f"own, not an input, output, the mask, a scale input or each other; got "
            f"segment_ids: {names[0]!r}, positions: {names[1]!r}")


def _check_scale_input(config: PipelineConfig, key: str, scaling) -> None:
    name = scaling.input
    if scaling.per == "dataset":
        raise ConfigError(f"{key}.input ({name!r}) would hold one scale for every row with "
                          f"per: dataset; it needs per: series or per: window")
    taken = [n for n in (*config.inputs, *config.outputs, config.padding.mask) if n]
    others = [s.scaling.input for specs in (config.inputs, config.outputs)
              for s in specs.values() if s.scaling is not None and s.scaling.input]
    if not name.strip() or name in taken or others.count(name) > 1:
        raise ConfigError(f"{key}.input must name an input of its own, not an input, output, "
                          f"the mask or another scale input; got {name!r}")


def _check_per_window(config: PipelineConfig, kind: str, name: str, spec, key: str) -> None:
    if config.windows is None:
        raise ConfigError(f"{key}: per: window scales each forecasting window by its own "
                          f"history, so it needs a windows section; got none. Use per: "
                          f"series or per: dataset for whole sequences.")
    if kind == "inputs" and spec.window != "history":
        raise ConfigError(
            f"{key}: per: window scales by the window's history, and inputs.{name} feeds the "
            f"horizon (window: future), whose values the history does not hold. Use per: "
            f"dataset or per: series for it.")
    if kind == "outputs" and not config.windows.horizon:
        raise ConfigError(
            f"{key}: per: window scales the horizon's labels by the history before it, and "
            f"windows.horizon is 0 (the labels are the history itself). Use per: series or "
            f"per: dataset.")


def _split_keys(split) -> str:
    """The keys of a split by sequence, as the user set them."""
    if split.column is not None:
        return f"split.column={split.column!r}"
    return f"split.validation={split.validation}, split.test={split.test}"


def _check_label_leaks(config: PipelineConfig) -> None:
    """A label column that also feeds an input hands the model its answer. With windows and
    a horizon, the input holds the history and the label the horizon after it: forecasting
    a column's own future is not a leak."""
    for name, output in config.outputs.items():
        fed = {c: f"inputs.{i}.columns" for i, spec in config.inputs.items()
               for c in spec.columns if not _forecast(config, spec, output)}
        leaked = [c for c in output.label_columns if c in fed]
        if leaked and not output.also_input:
            column, key = leaked[0], "column" if output.column else "columns"
            raise ConfigError(
                f"outputs.{name}.{key} {column!r} is also in {fed[column]}: the "
                f"model would be fed the label it has to predict (a label leak). Use another "
                f"column for the input or the label (a shifted copy, say), or set "
                f"outputs.{name}.also_input: true if the model reconstructs its input.")


def _forecast(config: PipelineConfig, spec: InputConfig, output: OutputConfig) -> bool:
    """The input feeds a window's history only, and the output's labels come from the
    horizon after it."""
    return (config.windows is not None and bool(config.windows.horizon)
            and spec.window == "history" and spec.level == "timestep"
            and output.level == "timestep")


def leaked_labels(config: PipelineConfig) -> list[str]:
    """The outputs whose label column also feeds an input, as `also_input` allows."""
    return [name for name, output in config.outputs.items()
            if any(c in spec.columns for spec in config.inputs.values()
                   if not _forecast(config, spec, output) for c in output.label_columns)]


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
        raw = to_plain(source)
    else:
        raw = read_yaml(source)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return build(PipelineConfig, raw, "")
