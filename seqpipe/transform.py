"""Transform: turns grouped sequences into the values the model receives.

One chunk at a time, on whole columns: scales inputs and labels (`normalize`, see
`seqpipe.scaling`), fills missing values after scaling, appends `time_delta` and
`missing_indicators` columns, and maps categorical inputs and labels to int32 ids through
their vocabularies (`seqpipe.statistics`). What it changes is counted: categories the
vocabulary does not hold become id 1 (a label: weight 0), and series scaled by their own
statistics that have no value to compute them over keep their values as read.

An input's columns leave in this order: its `columns` (scaled and filled), then the time
since the previous kept timestep (`time_delta`), then one 0/1 column per column
(`missing_indicators`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Generator, Mapping
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe._internal.buffers import SHARED
from seqpipe.config import InputConfig, PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.missing import deferred
from seqpipe.parquet.sequences import Categories, Sequences
from seqpipe.scaling import (
    Scales,
    dataset_scales,
    per_series,
    per_window,
    scale_columns,
    scale_input,
    series_scales,
)
from seqpipe.statistics import Statistics, Vocabulary


def changes_values(config: PipelineConfig) -> bool:
    """Whether any input or output is transformed at all (else chunks pass untouched)."""
    return any(deferred(s) or s.time_delta or s.categorical for s in config.inputs.values()) \
        or any(s.categorical or s.scaling for s in config.outputs.values())


class Transform:
    """Prepares chunks of grouped sequences for the model.

    Args:
      config: the pipeline config.
      statistics: the statistics to scale and encode with (`Statistics.check`ed).
      skipped: (n,) timesteps truncation cuts from the start of each sequence of the
        source's index: the first kept timestep's time delta is 0, as at a sequence's first.
      counted: (n,) the sequences whose unseen categories are counted (the part read).
      own: for inputs and outputs scaled `per: series`, (skipped, length) per sequence of
        the index: the timesteps each one's own statistics come from (its train timesteps).
    """

    def __init__(self, config: PipelineConfig, statistics: Statistics, skipped: np.ndarray,
                 counted: np.ndarray,
                 own: Optional[tuple[np.ndarray, np.ndarray]] = None) -> None:
        self.config, self.statistics = config, statistics
        self.skipped, self.counted, self.own = skipped, counted, own
        self._vocabularies = {name: _value_set(v)
                              for name, v in statistics.vocabularies.items()}

    def apply(self, first: int, chunk: Sequences
              ) -> tuple[Sequences, Mapping[str, Mapping[str, int]]]:
        """The chunk whose first sequence has index `first`, prepared; and what it changed
        in counted sequences: `unseen_categories` (per categorical input or output, values
        not in the vocabulary) and `unscaled_series` (per input or output scaled per series,
        sequences kept as read), as `Report` holds them."""
        index = np.arange(first, first + len(chunk))
        counted = self.counted[index]
        unseen: collections.Counter = collections.Counter()
        unscaled: collections.Counter = collections.Counter()
        features: dict[str, Any] = {}
        for name, spec in self.config.inputs.items():
            values = chunk.features[name]
            if spec.categorical:
                ids, missed = self._ids(name, values, chunk, counted, spec.level)
                features[name] = ids
                unseen[f"inputs.{name}"] += missed
            elif deferred(spec) or spec.time_delta:
                features[name], unscaled[f"inputs.{name}"], scales = self._numeric(
                    name, spec, values, chunk, index)
                extra = scale_input(spec, "series")
                if extra and scales is not None:
                    features[extra] = scale_columns(scales)
            else:
                features[name] = values
        labels, present = dict(chunk.labels), dict(chunk.present)
        for name, output in self.config.outputs.items():
            if output.scaling and not per_window(output):  # per window: when assembled
                scales = self.scales(name, chunk, index)
                labels[name] = _scaled_labels(labels[name], present[name], scales,
                                              chunk.offsets, output.fill_value)
                extra = scale_input(output, "series")
                if extra:
                    features[extra] = scale_columns(scales)
                unscaled[f"outputs.{name}"] += _unscaled(scales, counted)
            if output.categorical:
                ids, missed = self._ids(name, labels[name], chunk, counted, output.level)
                present[name] = ids >= 0
                labels[name] = np.where(present[name], ids,
                                        np.int32(output.fill_value)).astype(np.int32)
                unseen[f"outputs.{name}"] += missed
        prepared = dataclasses.replace(chunk, features=features, labels=labels,
                                       present=present)
        return prepared, {"unseen_categories": {k: n for k, n in unseen.items() if n},
                          "unscaled_series": {k: n for k, n in unscaled.items() if n}}

    def stream(self, chunks: Generator[tuple[int, Sequences], None, Any],
               changed: Mapping[str, collections.Counter]
               ) -> Generator[tuple[int, Sequences], None, Any]:
        """`chunks` prepared (see `apply`), adding what they changed to `changed` (a
        Counter per kind of change); returns what `chunks` returns."""
        while True:
            try:
                first, chunk = next(chunks)
            except StopIteration as end:
                return end.value
            chunk, found = self.apply(first, chunk)
            for key, counts in found.items():
                changed[key].update(counts)
            yield first, chunk

    def scales(self, name: str, chunk: Sequences, index: np.ndarray) -> Scales:
        """The scales of a scaled input or output over a chunk whose sequences have the
        index numbers `index`: per dataset, one per column; per series, one per column and
        sequence (counted from the chunk's raw values, before `apply`)."""
        spec = self.config.inputs.get(name) or self.config.outputs[name]
        if not per_series(spec):
            return dataset_scales(name, spec, self.statistics)
        if self.own is None:
            raise AssertionError("per-series scaling without spans (a seqpipe bug)")
        skipped, length = (a[index] for a in self.own)
        if name in self.config.inputs:
            return series_scales(spec, list(chunk.features[name]), chunk.offsets, skipped,
                                 length)
        labels = chunk.labels[name]
        columns = [labels] if labels.ndim == 1 else list(labels.T)
        return series_scales(spec, columns, chunk.offsets, skipped, length,
                             chunk.present[name])

    def _numeric(self, name: str, spec: InputConfig, values: Any, chunk: Sequences,
                 index: np.ndarray) -> tuple[tuple, int, Optional[Scales]]:
        """The input's columns prepared, how many counted series are kept as read, and the
        scales used (None when not scaled here)."""
        columns = list(values)
        from seqpipe._internal.runs import (  # numba, as grouping imported it
            scale_each_run,
            scale_fill,
        )

        k = len(spec.columns)
        # One array per input and chunk, its columns contiguous, from the pool assembly
        # uses: chunks of one size recur, and fresh memory costs a page fault per page.
        out = SHARED.empty((spec.width, len(columns[0])))
        # Per window, the window assembler scales and fills: missing values stay NaN.
        windowed = per_window(spec)
        scales = self.scales(name, chunk, index) if spec.scaling and not windowed else None
        unscaled = 0 if scales is None else _unscaled(scales, self.counted[index])
        for j, column in enumerate(spec.columns):
            fill = np.nan if windowed else spec.fill_for(column) or 0.0
            if scales is not None and scales.unscaled is not None:  # per series
                scale_each_run(columns[j], chunk.offsets - chunk.offsets[0], scales.shift[j],
                               scales.divisor[j], fill, out[j])
                continue
            shift, divisor = (0.0, 1.0) if scales is None else (scales.shift[j],
                                                                  scales.divisor[j])
            scale_fill(columns[j], shift, divisor, fill, out[j])
            if spec.missing_indicators:
                np.logical_not(np.isfinite(columns[j]), out=out[spec.width - k + j],
                               casting="unsafe")
        if spec.time_delta:
            out[k] = self._time_delta(chunk, index)
        return tuple(out), unscaled, scales

    def _time_delta(self, chunk: Sequences, index: np.ndarray) -> np.ndarray:
        times = chunk.times
        if times is None:  # the config check requires a time column
            raise AssertionError("time_delta without times (a seqpipe bug; please report it)")
        delta = np.zeros(len(times), dtype=np.float64)
        if len(times) > 1:
            steps = np.diff(times)
            if steps.dtype.kind == "m":  # dates and timestamps: seconds
                steps = steps / np.timedelta64(1, "s")
            delta[1:] = steps
        starts = chunk.offsets[:-1]
        delta[starts] = 0
        delta[starts + self.skipped[index]] = 0
        return delta.astype(np.float32)

    def _ids(self, name: str, values: Categories, chunk: Sequences, counted: np.ndarray,
             level: str) -> tuple[np.ndarray, int]:
        """int32 ids of a chunk's categories: the vocabulary's `first_id + i` for its value i;
        for an input 1 at a missing or unseen value, for a label -1. And how many present
        values of counted sequences were unseen."""
        first_id = self.statistics.vocabularies[name].first_id
        found = _lookup(self._vocabularies[name], values.values, name)
        none = 1 if first_id else -1
        table = np.full(len(values.values) + 1, none, dtype=np.int32)  # the last: missing
        table[:-1] = np.where(found >= 0, found + first_id, none)
        ids = table[values.codes]
        unseen = (ids == none) & (values.codes >= 0)
        rows = counted if level == "sequence" else np.repeat(counted, chunk.lengths)
        return ids, int(np.count_nonzero(unseen & rows))


def _scaled_labels(labels: np.ndarray, present: np.ndarray, scales: Scales,
                   offsets: np.ndarray, fill: float) -> np.ndarray:
    """float32 labels in the model's units; a missing label keeps its fill value. Per
    series, sequence i (`offsets[i]:offsets[i + 1]`) by its own scales."""
    from seqpipe._internal.runs import scale_each_run

    columns = [labels] if labels.ndim == 1 else list(labels.T)
    out = np.empty((len(columns), len(labels)), dtype=np.float32)  # a row per column
    for j, column in enumerate(columns):
        if scales.unscaled is None:
            out[j] = (column.astype(np.float64) - scales.shift[j]) / scales.divisor[j]
        else:
            scale_each_run(column, offsets - offsets[0], scales.shift[j], scales.divisor[j],
                           fill, out[j])
        out[j][~present] = fill
    return out[0] if labels.ndim == 1 else out.T.copy()


def _unscaled(scales: Scales, counted: np.ndarray) -> int:
    """How many of the counted sequences (per series) kept their values as read."""
    if scales.unscaled is None:
        return 0
    return int(np.count_nonzero(scales.unscaled & counted))


def _value_set(vocabulary: Vocabulary) -> pa.Array:
    return pa.array(list(vocabulary.values))


def _lookup(vocabulary: pa.Array, values: pa.Array, name: str) -> np.ndarray:
    """The vocabulary index of each of a chunk's distinct values, -1 where it has none."""
    if len(vocabulary) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    if values.type != vocabulary.type:
        try:
            values = values.cast(vocabulary.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataError(
                f"{name}: the vocabulary holds {vocabulary.type} values but the column "
                f"holds {values.type}; statistics computed on other data do not fit this "
                f"column. Compute them again on this data.") from e
    found = pc.index_in(values, value_set=vocabulary)
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
