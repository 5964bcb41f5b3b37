"""Sequences: variable-length sequences in columnar form, as every source hands them on.

All timesteps of all sequences lie end to end in flat arrays; `offsets[i]:offsets[i + 1]`
is sequence i. `seqpipe.parquet.grouping` makes them from Parquet rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Sequences end to end in flat arrays.

    Attributes:
      ids: (n,) sequence ids, ascending when the source has an id column.
      offsets: (n + 1,) int64; sequence i is timesteps `offsets[i]:offsets[i + 1]`.
      features: numeric input name -> a tuple of its k columns, each float32 `(timesteps,)`
        for a timestep input or `(n,)` for a sequence input: columns read from Arrow are
        not copied; a scaled input's values are float64, and may be NaN, until
        `seqpipe.transform` scales and fills them.
      labels: output name -> float32 `(timesteps,)` or `(n,)`. Always finite: missing labels
        hold their output's `fill_value`.
      present: output name -> bool, shaped like `labels`: False where the label was missing.
      times: (timesteps,) the time column's values (numbers or datetime64), in order;
        None without a time column, or once the sequences are prepared for the model.
      parts: (n,) int8 index into `seqpipe.split.PARTS` of each sequence's part, read from
        `split.column`; None without one.

    A categorical input or label comes from grouping as `Categories` (codes into the
    chunk's own values) and leaves `seqpipe.transform` as int32 ids; a label of several
    columns is a float32 `(timesteps, k)` matrix whose `present` is True only where every
    column is.
    """

    ids: np.ndarray
    offsets: np.ndarray
    features: Mapping[str, Any]
    labels: Mapping[str, Any]
    present: Mapping[str, np.ndarray]
    times: Optional[np.ndarray] = None
    parts: Optional[np.ndarray] = None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def with_matrices(self) -> Sequences:
        """These sequences with each numeric input as one `(timesteps, k)` or `(n, k)`
        matrix instead of a tuple of columns, as a user reads them (`Pipeline.sequences`)."""
        features = {name: np.stack(values, axis=1) if isinstance(values, tuple) else values
                    for name, values in self.features.items()}
        return dataclasses.replace(self, features=features)

    def __len__(self) -> int:
        return len(self.ids)


class HeldChunks(list):
    """Chunks `(index of the first sequence, Sequences)` that are all in memory at once, in
    index order. They iterate as the chunks a source streams; an assembler that is handed
    them may also take each block's sequences straight from them, a block at a time."""


@dataclasses.dataclass(frozen=True)
class Categories:
    """A categorical column as grouping hands it on: int32 codes into the column's own
    distinct values (-1 where the value is missing), before a vocabulary maps them to ids.
    Indexing takes rows and keeps the values."""

    codes: np.ndarray
    values: pa.Array

    def __getitem__(self, rows) -> Categories:
        return Categories(self.codes[rows], self.values)

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def of(cls, column) -> Categories:
        """The codes and values of an Arrow column (nulls are missing values)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        encoded = pc.dictionary_encode(column)
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return cls(codes.astype(np.int32, copy=False), encoded.dictionary)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 offsets of sequences of these lengths laid end to end."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def take(values: Any, rows: Any) -> Any:
    """Rows (an index array or a slice) of one input's or output's values: of each column
    of a numeric input, or of the one array (`Categories`, ids, labels)."""
    return tuple(v[rows] for v in values) if isinstance(values, tuple) else values[rows]


def concat_sequences(pieces: list[Sequences]) -> Sequences:
    """Chunks of sequences as one `Sequences`."""
    def concatenated(parts: list) -> Any:
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(column) for column in zip(*parts))
        return np.concatenate(parts)

    def joined(field):
        return {name: concatenated([getattr(p, field)[name] for p in pieces])
                for name in getattr(pieces[0], field)}

    times, parts = (None if getattr(pieces[0], key) is None
                    else np.concatenate([getattr(p, key) for p in pieces])
                    for key in ("times", "parts"))
    return Sequences(np.concatenate([p.ids for p in pieces]),
                     offsets_of(np.concatenate([p.lengths for p in pieces])),
                     joined("features"), joined("labels"), joined("present"), times, parts)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The flat indices of the ranges starts[i] : starts[i] + lengths[i], end to end."""
    total = int(lengths.sum())
    range_of = np.repeat(np.arange(len(lengths)), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return (np.arange(total) - first[range_of] + starts[range_of]).astype(np.int64)


def runs_of(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of True in a 1-D `mask` starts, and its length.

    >>> [a.tolist() for a in runs_of(np.array([1, 1, 0, 1, 0, 0, 1], bool))]
    [[0, 3, 6], [2, 1, 1]]
    """
    edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
    start, end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return start, end - start


def show_id(value) -> str:
    """A sequence id or time as the user wrote it: 's01', 7, not np.int64(7)."""
    if isinstance(value, np.datetime64):
        return str(value)
    return repr(value.item() if isinstance(value, np.generic) else value)
