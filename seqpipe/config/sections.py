"""The pipeline config's sections: one frozen, validated dataclass per YAML section.

`load_config` turns a YAML file or a mapping into a `PipelineConfig`. Every key is checked
against the dataclass that owns its section: unknown keys are errors that list the allowed
ones, and a bad value names its key path (`padding.side must be 'pre' or 'post'; got 'left'`).
`seqpipe.config.pipeline_config` ties them together. Nothing here imports TensorFlow or
touches the data.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Literal, Optional, Union

from seqpipe._internal.typed import Section, field

Level = Literal["timestep", "sequence"]
WeightMode = Literal["binary", "batch_mean", "global_mean", "sequence_mean"]


def _positive(value) -> bool:
    return value is None or value > 0


def _fills(value) -> list:
    if value is None:
        return []
    return list(value.values()) if isinstance(value, Mapping) else [value]


def _finite(value) -> bool:
    return value is None or math.isfinite(value)


_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


@dataclasses.dataclass(frozen=True)
class CacheConfig(Section):
    """Where a source whose sequences are spread over row groups (files by day, say) is
    regrouped once, sorted by id and time, so that it streams with bounded memory."""

    dir: Optional[str] = field(
        None, "The cache folder; null: seqpipe/regrouped under the user's cache directory "
        "($XDG_CACHE_HOME or ~/.cache).")
    memory_limit: str = field(
        "1GB", "The most memory the regrouping sort holds; past it, it spills to disk. The "
        "default suits a small machine.",
        check=lambda v: bool(_MEMORY.match(v)), rule="must be a size such as '500MB' or '2GB'")


@dataclasses.dataclass(frozen=True)
class SourceConfig(Section):
    """Where the sequences come from and how their rows are laid out."""

    path: Optional[str] = field(
        None, "A Parquet file, a directory of Parquet files (hive partitions too), or a glob. "
        "Optional when the data is passed in memory.")
    layout: Literal["long", "nested"] = field(
        "long", "long: one row per timestep; nested: one row per sequence with list columns.")
    id_column: Optional[str] = field(
        None, "The sequence id. Required for `long`; for `nested`, sequences keep row order "
        "when absent.")
    time_column: Optional[str] = field(
        None, "Orders the timesteps of a sequence. When absent, timesteps keep source order "
        "(files by name, rows in file order).")
    cache: Union[CacheConfig, bool] = field(
        CacheConfig(), "A long-layout source whose sequences are spread over row groups is "
        "regrouped once into this cache and streamed from it; false groups it whole, in "
        "memory, every time (fine for small data).")
    memory_mb: int = field(
        512, "Later epochs from memory: when the prepared sequences (scaled and encoded, "
        "not padded) fit in this many MB, the first epoch keeps them and later epochs are "
        "built from them, reshuffled, without reading the source again. 0 reads the source "
        "every epoch.", check=lambda v: v >= 0, rule="must be an integer >= 0")

    @property
    def regroup(self) -> Optional[CacheConfig]:
        """The cache to regroup into, or None when `cache: false`."""
        if self.cache is False:
            return None
        return self.cache if isinstance(self.cache, CacheConfig) else CacheConfig()


@dataclasses.dataclass(frozen=True)
class ScalingConfig(Section):
    """How a numeric input's or label's values are scaled, and over which values its
    statistics are computed. `normalize: standard` is short for `{method: standard}`."""

    method: Literal["standard", "minmax", "mean"] = field(
        "standard", "standard: (value - mean) / std; minmax: min -> 0, max -> 1; mean: value "
        "/ mean(|value|), which keeps 0 at 0 (a series' own level, as DeepAR and Chronos "
        "scale; needs per: series).")
    per: Literal["dataset", "series", "window"] = field(
        "dataset", "dataset: one set of statistics per column, from the train part; series: "
        "each sequence's own, from its own train timesteps (before split.time_cutoff or "
        "split.holdout_last), so that series whose scales differ by orders of magnitude "
        "all reach the model near 1; window (with windows): each window's own, from its "
        "history only, never its horizon.")
    input: Optional[str] = field(
        None, "With per: series or window, the name of an extra model input that holds the "
        "scales, for scale-aware heads: float32 (batch, 2k), each column's shift, then each "
        "column's divisor, of the row's series or window. null: none.")


Normalize = Union[Literal["standard", "minmax"], ScalingConfig, None]


def _scaling(normalize: Normalize) -> Optional[ScalingConfig]:
    return ScalingConfig(method=normalize) if isinstance(normalize, str) else normalize


@dataclasses.dataclass(frozen=True)
class InputConfig(Section):
    """One model input: which columns feed it, at which level, and how they are prepared."""

    columns: tuple[str, ...] = field(
        doc="Numeric columns, stacked in this order on the last axis; or, with "
        "categorical: true, the one column whose values are categories.",
        check=lambda v: len(v) > 0 and len(set(v)) == len(v),
        rule="must be a non-empty list of distinct column names")
    level: Level = field(
        "timestep", "timestep: a (batch, time, columns) tensor; sequence: (batch, columns).")
    fill_value: Union[float, Mapping[str, float], None] = field(
        None, "Replaces NaN, null and infinite values: one number for every column, or "
        "{column: number}. null (default), or a column left out, makes them an error, "
        "because a NaN feature silently turns every loss it touches into NaN; with "
        "normalize or missing_indicators, null means 0 (after scaling).",
        check=lambda v: all(math.isfinite(x) for x in _fills(v)),
        rule="must be a finite number, a mapping of column -> finite number, or null")
    normalize: Normalize = field(
        None, "standard: (value - mean) / std; minmax: min -> 0, max -> 1; statistics per "
        "column over present values at kept timesteps of the train part. Or {method, per} "
        "(see ScalingConfig) to scale each series by its own statistics. null: as read.")
    time_delta: bool = field(
        False, "Appends one column: time since the sequence's previous kept timestep, 0 at "
        "the first (time_column units; seconds for dates and timestamps).")
    missing_indicators: bool = field(
        False, "Appends one 0/1 column per column: 1 where the value was missing and filled.")
    categorical: bool = field(
        False, "The one column holds categories (string, integer, boolean or dictionary): "
        "int32 ids, 0 padding, 1 missing or unseen, 2.. the vocabulary by frequency.")
    max_tokens: Optional[int] = field(
        None, "With categorical: keep at most this many values, the most frequent; the "
        "rest map to 1. null keeps every value seen in the train part.",
        check=_positive, rule="must be a positive integer or null")
    window: Literal["history", "future"] = field(
        "history", "With windows: history feeds the window's history timesteps (batch, "
        "history, k); future feeds values known ahead (a calendar, a promotion plan) at the "
        "horizon's timesteps (batch, horizon, k).")

    @property
    def scaling(self) -> Optional[ScalingConfig]:
        """`normalize` in its long form; None when the input is not scaled."""
        return _scaling(self.normalize)

    def fill_for(self, column: str) -> Optional[float]:
        """The value that replaces a missing value of `column`, or None for an error."""
        if isinstance(self.fill_value, Mapping):
            value = self.fill_value.get(column)
        else:
            value = self.fill_value
        if value is None and (self.normalize or self.missing_indicators):
            return 0.0
        return value

    @property
    def width(self) -> int:
        """Values per timestep (or per sequence) the model receives; 1 for categorical."""
        if self.categorical:
            return 1
        return (len(self.columns) * (2 if self.missing_indicators else 1)
                + int(self.time_delta))

    @property
    def dtype(self) -> str:
        return "int32" if self.categorical else "float32"

    @property
    def tail(self) -> tuple[int, ...]:
        """The shape after (batch, time) or (batch,): categorical ids have no last axis."""
        return () if self.categorical else (self.width,)


@dataclasses.dataclass(frozen=True)
class OutputConfig(Section):
    """One model output: its label columns, its level and how its sample weights are made."""

    column: Optional[str] = field(
        None, "The label column. Null or NaN labels are missing: weight 0.")
    columns: Optional[tuple[str, ...]] = field(
        None, "Several label columns instead of `column`: y (batch, time, k); a timestep "
        "counts only when all of them are present.",
        check=lambda v: v is None or (len(v) > 0 and len(set(v)) == len(v)),
        rule="must be a non-empty list of distinct column names or null")
    level: Level = field(
        "timestep", "timestep: y (batch, time, 1), weight (batch, time); "
        "sequence: y (batch, 1), weight (batch,).")
    fill_value: float = field(
        0.0, "Stands in for a missing label. It must be finite because 0 * NaN is NaN.",
        check=_finite, rule="must be a finite number")
    weights: Optional[WeightMode] = field(
        None, "This output's weight mode; null uses `weights.mode`.")
    also_input: bool = field(
        False, "true lets the label column also feed an input (an autoencoder reconstructs "
        "its input), with a warning; false refuses it, because a label fed to the model as a "
        "feature is a leak.")
    categorical: bool = field(
        False, "The label holds classes (string, integer, boolean or dictionary): int32 "
        "class ids 0..C-1 by frequency in the train part; a missing or unseen class weighs 0.")
    normalize: Normalize = field(
        None, "Scales the labels as inputs are scaled (standard, minmax, or {method, per}), "
        "from present labels of the train part; the model learns in scaled units and "
        "seqpipe.predict returns the data's units. null: labels as read.")

    @property
    def scaling(self) -> Optional[ScalingConfig]:
        """`normalize` in its long form; None when the labels are not scaled."""
        return _scaling(self.normalize)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The label columns, in the order they fill y's last axis."""
        return self.columns or ((self.column,) if self.column else ())

    @property
    def width(self) -> int:
        return len(self.label_columns)

    @property
    def dtype(self) -> str:
        return "int32" if self.categorical else "float32"


@dataclasses.dataclass(frozen=True)
class PaddingConfig(Section):
    """Truncation and padding, in the words of `keras.utils.pad_sequences`."""

    maxlen: Optional[int] = field(
        None, "Longer sequences are truncated to this many timesteps; null keeps them whole. "
        "A batch pads to its longest sequence, never beyond maxlen.",
        check=_positive, rule="must be a positive integer or null")
    side: Optional[Literal["pre", "post"]] = field(
        None, "Where padding goes (pad_sequences `padding`). null: post for whole sequences, "
        "pre with windows (the only side they allow).")
    truncating: Literal["pre", "post"] = field(
        "post", "Which end of a long sequence is cut (pad_sequences `truncating`): "
        "pre cuts the start and keeps the latest timesteps.")
    value: float = field(
        0.0, "Written at padded positions of features and labels (categorical ids: 0).",
        check=_finite, rule="must be a finite number")
    mask: Optional[str] = field(
        None, "The name of an extra input, bool (batch, time), True at real timesteps: for "
        "layers that take mask= (RNNs, attention). null: no mask input.")


@dataclasses.dataclass(frozen=True)
class WindowsConfig(Section):
    """Forecasting windows: every sequence cut into fixed-length windows, each a history and
    the horizon after it, anchored at the sequence's end."""

    history: int = field(doc="Timesteps of input per window.", check=lambda v: v > 0,
                         rule="must be a positive integer")
    horizon: int = field(
        0, "Timesteps after the history whose labels the window predicts; 0: labels aligned "
        "with the history (labelling windows of long series).",
        check=lambda v: v >= 0, rule="must be an integer >= 0")
    stride: int = field(
        1, "Timesteps between the ends of a sequence's consecutive windows; 1 makes a window "
        "end at every timestep.", check=lambda v: v > 0, rule="must be a positive integer")
    min_history: Optional[int] = field(
        None, "Shortest real history: a history shorter than `history`, at a sequence's "
        "start, is padded at the front (weight 0) down to this many real timesteps. null: "
        "history (no padded window).", check=_positive, rule="must be a positive integer or null")

    @property
    def shortest(self) -> int:
        """The fewest real history timesteps a window has."""
        return self.min_history or self.history

    @property
    def targets(self) -> int:
        """Timesteps of a window's timestep labels: the horizon, or the history when 0."""
        return self.horizon or self.history


@dataclasses.dataclass(frozen=True)
class PackingConfig(Section):
    """Packed rows: whole sequences end to end in rows of one length, for attention models
    and XLA, which want one batch shape and as little padding as possible."""

    length: int = field(
        doc="Timesteps of every row. Sequences (truncated to padding.maxlen, which must be at "
        "most length) are packed into rows inside each shuffle buffer.",
        check=lambda v: v > 0, rule="must be a positive integer")
    max_segments: int = field(
        64, "The most sequences in one row: the size of the segment axis that per-sequence "
        "inputs, outputs and weights get, (batch, max_segments, ...). Raise it when most "
        "sequences are shorter than length / max_segments (seqpipe inspect shows how many "
        "rows reach it).", check=lambda v: v > 0, rule="must be a positive integer")
    segment_ids: str = field(
        "segment_ids", "The name of the extra input, int32 (batch, length): 1..k for the "
        "row's k sequences in order, 0 at padding.",
        check=lambda v: bool(v), rule="must be a non-empty name")
    positions: str = field(
        "positions", "The name of the extra input, int32 (batch, length): 0..n-1 within each "
        "sequence, 0 at padding.", check=lambda v: bool(v), rule="must be a non-empty name")


@dataclasses.dataclass(frozen=True)
class BatchingConfig(Section):
    """How sequences are grouped into batches."""

    batch_size: int = field(
        64, "Sequences per batch; with max_timesteps, the most sequences per batch.",
        check=_positive, rule="must be a positive integer")
    bucket_boundaries: Union[tuple[int, ...], Literal["auto"], None] = field(
        None, "Length boundaries: bucket i holds lengths in [b[i-1], b[i]), so a batch only "
        "mixes similar lengths. 'auto' picks them from the data; null means one bucket.",
        check=lambda v: v is None or v == "auto" or (
            len(v) > 0 and all(b > 0 for b in v) and all(a < b for a, b in zip(v, v[1:]))),
        rule="must be 'auto', null, or a non-empty, strictly increasing list of positive "
        "integers")
    drop_remainder: bool = field(
        False, "Drop the last, smaller batch of each bucket; counted in the report.")
    max_timesteps: Optional[int] = field(
        None, "Token budget: each batch holds at most this many padded timesteps, so "
        "buckets of short sequences get larger batches. null: batch_size alone decides.",
        check=lambda v: v is None or v > 0, rule="must be a positive integer or null")
    static_shapes: bool = field(
        False, "For XLA (jit_compile, JAX, TPUs), which compiles once per shape: every batch "
        "of a bucket pads to the longest length the bucket holds (its upper boundary - 1; "
        "the last bucket to padding.maxlen, then required) and to the bucket's full batch "
        "size, the rows of a last, smaller batch left empty with weight 0. An epoch then has "
        "at most one shape per bucket.")
    packing: Optional[PackingConfig] = field(
        None, "Pack whole sequences end to end into rows of packing.length timesteps: one "
        "batch shape, (batch_size, length), with almost no padding. null: one sequence per "
        "row.")
    accumulation_steps: int = field(
        1, "The gradient_accumulation_steps of your Keras optimizer: the weights then make "
        "each run of this many consecutive batches one mean (over all their present labels, "
        "or sequences), and the batches per epoch a multiple of it.",
        check=_positive, rule="must be a positive integer")


@dataclasses.dataclass(frozen=True)
class WeightsConfig(Section):
    """How sample weights are made from padding and missing labels."""

    mode: WeightMode = field(
        "batch_mean", "batch_mean makes Keras's default loss the mean over present labels. "
        "See the README table for which mode goes with which Keras reduction.")


@dataclasses.dataclass(frozen=True)
class ShuffleConfig(Section):
    """Shuffling of sequences and batches; reshuffled every epoch, reproducibly."""

    buffer_size: int = field(
        0, "Sequences mixed together; 0 means no shuffle. At least the number of sequences "
        "gives a full shuffle.", check=lambda v: v >= 0, rule="must be an integer >= 0")
    seed: Optional[int] = field(
        None, "The same seed gives the same batches in the same order, run after run. "
        "null draws a fresh seed, recorded in the report.",
        check=lambda v: v is None or v >= 0, rule="must be an integer >= 0 or null")


def _fraction(value) -> bool:
    return 0 <= value < 1


@dataclasses.dataclass(frozen=True)
class SplitConfig(Section):
    """Train/validation/test parts: by sequence id (deterministic and leak-free), by a
    column that already holds each sequence's part, or, with windows, by time."""

    validation: float = field(
        0.0, "Share of sequences in the validation part.", check=_fraction,
        rule="must be a number in [0, 1)")
    test: float = field(
        0.0, "Share of sequences in the test part.", check=_fraction,
        rule="must be a number in [0, 1)")
    seed: int = field(
        0, "Another seed gives another split; the same seed, the same split everywhere.",
        check=lambda v: v >= 0, rule="must be an integer >= 0")
    time_cutoff: Union[str, float, None] = field(
        None, "With windows: train holds the windows whose every target time is before it, "
        "validation those whose first target time is at or after it (a date or timestamp "
        "such as 2024-06-01, read as UTC, or a number, in source.time_column's type).")
    column: Optional[str] = field(
        None, "A column that holds each sequence's part: 'train', 'validation' or 'test' "
        "(one value per sequence; long layout: repeated on its rows). Instead of the "
        "shares.")
    holdout_last: Optional[int] = field(
        None, "With windows: hold out each series' last N timesteps, as a backtest does: "
        "train holds the windows whose every target is before them, validation those whose "
        "first target is one of them.", check=_positive,
        rule="must be a positive integer or null")

    @property
    def enabled(self) -> bool:
        return bool(self.validation or self.test or self.column or self.by_time)

    @property
    def by_sequence(self) -> bool:
        """Every sequence is in one part: by its id's hash, or by `column`."""
        return self.by_id or self.column is not None

    @property
    def by_time(self) -> bool:
        """Windows are split by time: at `time_cutoff`, or before each series' last
        `holdout_last` timesteps."""
        return self.time_cutoff is not None or self.holdout_last is not None

    @property
    def held_out(self) -> str:
        """The key that splits by time and its value, for messages."""
        if self.holdout_last is not None:
            return f"split.holdout_last={self.holdout_last}"
        return f"split.time_cutoff={self.time_cutoff!r}"

    @property
    def by_id(self) -> bool:
        """Parts are decided by sequence id (validation and test shares)."""
        return bool(self.validation or self.test)
