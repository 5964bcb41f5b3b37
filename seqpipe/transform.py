"""Transform: turns grouped sequences into the values the model receives.

One chunk at a time, on whole columns: scales (`normalize`), fills missing values after
scaling, appends `time_delta` and `missing_indicators` columns, and maps categorical inputs
and labels to int32 ids through their vocabularies (`seqpipe.statistics`). What it changes
is counted: categories the vocabulary does not hold become id 1 (a label: weight 0).

An input's columns leave in this order: its `columns` (scaled and filled), then the time
since the previous kept timestep (`time_delta`), then one 0/1 column per column
(`missing_indicators`).
"""

from __future__ import annotations

import collections
from collections.abc import Generator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe._internal.buffers import SHARED
from seqpipe.config import InputConfig, PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.missing import deferred
from seqpipe.parquet.sequences import Categories, Sequences
from seqpipe.statistics import Statistics, Vocabulary


def changes_values(config: PipelineConfig) -> bool:
    """Whether any input or output is transformed at all (else chunks pass untouched)."""
    return any(deferred(s) or s.time_delta or s.categorical for s in config.inputs.values()) \
        or any(s.categorical for s in config.outputs.values())


class Transform:
    """Prepares chunks of grouped sequences for the model.

    Args:
      config: the pipeline config.
      statistics: the statistics to scale and encode with (`Statistics.check`ed).
      skipped: (n,) timesteps truncation cuts from the start of each sequence of the
        source's index: the first kept timestep's time delta is 0, as at a sequence's first.
      counted: (n,) the sequences whose unseen categories are counted (the part read).
    """

    def __init__(self, config: PipelineConfig, statistics: Statistics, skipped: np.ndarray,
                 counted: np.ndarray) -> None:
        self.config, self.statistics = config, statistics
        self.skipped, self.counted = skipped, counted
        self._vocabularies = {name: _value_set(v)
                              for name, v in statistics.vocabularies.items()}

    def apply(self, first: int, chunk: Sequences) -> tuple[Sequences, Mapping[str, int]]:
        """The chunk whose first sequence has index `first`, prepared; and, per categorical
        input or output, how many of its values (in counted sequences) were not in the
        vocabulary."""
        index = np.arange(first, first + len(chunk))
        counted = self.counted[index]
        unseen: collections.Counter = collections.Counter()
        features: dict[str, Any] = {}
        for name, spec in self.config.inputs.items():
            values = chunk.features[name]
            if spec.categorical:
                ids, missed = self._ids(name, values, chunk, counted, spec.level)
                features[name] = ids
                unseen[f"inputs.{name}"] += missed
            elif deferred(spec) or spec.time_delta:
                features[name] = self._numeric(name, spec, values, chunk, index)
            else:
                features[name] = values
        labels, present = dict(chunk.labels), dict(chunk.present)
        for name, output in self.config.outputs.items():
            if output.categorical:
                ids, missed = self._ids(name, labels[name], chunk, counted, output.level)
                present[name] = ids >= 0
                labels[name] = np.where(present[name], ids,
                                        np.int32(output.fill_value)).astype(np.int32)
                unseen[f"outputs.{name}"] += missed
        prepared = Sequences(chunk.ids, chunk.offsets, features, labels, present, chunk.times)
        return prepared, {key: n for key, n in unseen.items() if n}

    def stream(self, chunks: Generator[tuple[int, Sequences], None, Any],
               unseen: collections.Counter) -> Generator[tuple[int, Sequences], None, Any]:
        """`chunks` prepared (see `apply`), adding their unseen categories to `unseen`;
        returns what `chunks` returns."""
        while True:
            try:
                first, chunk = next(chunks)
            except StopIteration as end:
                return end.value
            chunk, found = self.apply(first, chunk)
            unseen.update(found)
            yield first, chunk

    def _numeric(self, name: str, spec: InputConfig, values: Any, chunk: Sequences,
                 index: np.ndarray) -> tuple:
        columns = list(values)
        from seqpipe._internal.runs import scale_fill  # numba, as grouping imported it

        k = len(spec.columns)
        # One array per input and chunk, its columns contiguous, from the pool assembly
        # uses: chunks of one size recur, and fresh memory costs a page fault per page.
        out = SHARED.empty((spec.width, len(columns[0])))
        stats = self.statistics.columns.get(name, {})
        for j, column in enumerate(spec.columns):
            shift, divisor = (stats[column].scale(spec.normalize) if spec.normalize
                              else (0.0, 1.0))
            scale_fill(columns[j], shift, divisor, spec.fill_for(column) or 0.0, out[j])
            if spec.missing_indicators:
                np.logical_not(np.isfinite(columns[j]), out=out[spec.width - k + j],
                               casting="unsafe")
        if spec.time_delta:
            out[k] = self._time_delta(chunk, index)
        return tuple(out)

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
