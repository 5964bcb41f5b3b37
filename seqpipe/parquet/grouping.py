"""Grouping: the source table's rows grouped into variable-length sequences, ordered by id
and by time, in columnar form (`Sequences`).

Grouping, ordering and the missing-value rules run on whole columns, with no Python loop
per sequence or per timestep. Missing values (`seqpipe.parquet.missing`): a null or NaN
label is missing (filled, `present` False); a NaN, null or infinite feature is an error
unless its input sets `fill_value`, and every filled value is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError, raise_or_collect
from seqpipe.parquet import missing
from seqpipe.parquet.sequences import Categories, Sequences, offsets_of, ranges, show_id
from seqpipe.parquet.source import SourceTable
from seqpipe.split import PARTS


@dataclasses.dataclass(frozen=True)
class GroupingCounts:
    """What grouping read, filled and dropped."""

    rows: int
    empty_sequences_dropped: int
    filled_values: Mapping[str, int]  # "inputs.<name>.<column>" -> values replaced


def group_sequences(source: SourceTable, config: PipelineConfig,
                    with_inputs: bool = True, chunk: bool = False,
                    problems: Optional[list] = None) -> tuple[Sequences, GroupingCounts]:
    """Groups the source rows into sequences ordered by id, timesteps ordered by time.

    Args:
      source: the table `read_source` returned, or one chunk of whole sequences.
      config: the pipeline config.
      with_inputs: False groups only ids, times and labels (features stay empty); then
        `source` needs only those columns (and, nested, the first input list column).
      chunk: `source` is one chunk of a streamed source, which may hold only empty
        sequences.
      problems: None raises the first bad value; a list collects the value errors that
        grouping can go on after (times, per-sequence values, ids, features, labels), so
        that one pass finds them all (`seqpipe validate --data`).

    Returns:
      The sequences and the counts of what was filled or dropped.

    Raises:
      DataError: no sequences; null ids or times; two rows at one time in one sequence;
        two different values of a per-sequence column in one sequence; list columns of
        different lengths in one nested row; NaN or infinite features without
        `fill_value`; infinite labels.
    """
    table = source.table
    if table.num_rows == 0:
        raise DataError(f"no sequences: {source.where} has no rows")
    if config.source.layout == "long":
        ids, offsets, columns, dropped = _group_long(table, config, source.where, with_inputs,
                                                     source.id_starts, problems)
    else:
        ids, offsets, columns, dropped = _group_nested(table, config, source.where,
                                                       with_inputs, problems)
    if len(ids) == 0 and not chunk:
        raise DataError(f"no sequences: every sequence in {source.where} is empty")
    features, filled = ({}, {}) if not with_inputs else missing.features(
        columns, config, source.where, problems)
    labels, present = missing.labels(columns, config, source.where, problems)
    times = columns.get((config.source.time_column, "timestep"))
    parts = (None if config.split.column is None else
             _parts(columns[config.split.column, "sequence"], ids, config.split.column,
                    source.where, problems))
    sequences = Sequences(ids, offsets, features, labels, present, times, parts)
    return sequences, GroupingCounts(table.num_rows, dropped, filled)


def sequence_lengths(source: SourceTable, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ids (ascending) and row counts of the sequences of a long-layout table, from its
    id column alone: what a streamed source's index needs, without grouping the rest."""
    id_name = config.source.id_column or ""  # the long layout always has one
    check_no_nulls(source.table[id_name], "source.id_column", id_name, source.where)
    ids = source.table[id_name].combine_chunks()
    starts = source.id_starts if source.id_starts is not None else id_runs(ids)
    if starts is not None:
        lengths = np.diff(np.append(starts, len(ids)))
        return ids.take(pa.array(starts)).to_numpy(zero_copy_only=False), lengths
    counts = pc.value_counts(ids)
    order = pc.sort_indices(counts.field("values"))
    return (counts.field("values").take(order).to_numpy(zero_copy_only=False),
            counts.field("counts").take(order).to_numpy().astype(np.int64))


def id_runs(ids) -> Optional[np.ndarray]:
    """Where each sequence begins in an id column (Arrow, without nulls) when its rows are
    sorted by id: the row where each run of equal ids begins. None when they are not."""
    values = _comparable(ids)
    if values is None:  # strings, say: Arrow's kernels, in several passes
        return _sequence_starts(ids) if _ascending(ids) else None
    from seqpipe._internal.runs import (
        run_starts,  # numba, imported when sequences are first grouped
    )

    return run_starts(values)


def _time_order(times, starts: np.ndarray) -> int:
    """`seqpipe._internal.runs.time_order` of an Arrow time column (without nulls)."""
    from seqpipe._internal.runs import time_order

    values = _comparable(times)
    if values is None:  # the source's schema check admits only types that are
        raise TypeError(f"cannot order times of type {times.type} (a seqpipe bug; please "
                        f"report it)")
    return time_order(values, starts)


def _comparable(column) -> Optional[np.ndarray]:
    """An Arrow column of numbers or times as a NumPy array the compiled passes can compare
    (a view when it is one chunk), or None for other types."""
    kind = column.type
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if pa.types.is_temporal(kind) and kind.bit_width in (32, 64):
        column = column.view(pa.int64() if kind.bit_width == 64 else pa.int32())
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    return column.to_numpy(zero_copy_only=False)


def _ascending(values) -> bool:
    """True when an Arrow array or column never decreases."""
    return pc.all(pc.less_equal(values[:-1], values[1:])).as_py() is not False


def _sequence_starts(ids) -> np.ndarray:
    """The row where each run of equal ids begins: with rows sorted by id, where each
    sequence begins."""
    if len(ids) == 0:
        return np.empty(0, dtype=np.int64)
    new = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.concatenate([[True], new]))


def check_no_nulls(column: pa.ChunkedArray, key: str, name: str, where: str) -> None:
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += pc.sum(pc.is_nan(column)).as_py() or 0
        kind = "null or NaN"
    else:
        kind = "null"
    if missing:
        raise DataError(f"{key} {name!r} has {missing:,} {kind} values in {where}; "
                        f"every row needs one")


def _group_long(table: pa.Table, config: PipelineConfig, where: str, with_inputs: bool,
                id_starts: Optional[np.ndarray], problems: Optional[list]):
    id_name = config.source.id_column or ""  # the long layout always has one
    time_name = config.source.time_column
    check_no_nulls(table[id_name], "source.id_column", id_name, where)
    if time_name:
        check_no_nulls(table[time_name], "source.time_column", time_name, where)
    table, starts, repeated = _sorted_by_id_and_time(table, id_name, time_name, id_starts)
    offsets = np.append(starts, table.num_rows).astype(np.int64)
    sequence_ids = table[id_name].take(pa.array(starts)).to_numpy(zero_copy_only=False)
    if repeated:
        times = table[time_name].to_numpy()
        new_sequence = np.zeros(table.num_rows, dtype=bool)
        new_sequence[starts] = True
        raise_or_collect(problems, _repeated_times(times, new_sequence, sequence_ids, offsets,
                                                   time_name, where))
    columns = {}
    if time_name:
        columns[time_name, "timestep"] = table[time_name].to_numpy()
    for column, key, level, categorical in _value_columns(config, with_inputs):
        values = (Categories.of(table[column]) if categorical
                  else table[column].to_numpy())
        if level == "sequence":
            check = _one_category_per_sequence if categorical else _one_value_per_sequence
            values = check(values, starts, sequence_ids, column, key, where, problems)
        columns[column, level] = values
    return sequence_ids, offsets, columns, 0


def _sorted_by_id_and_time(table: pa.Table, id_name: str, time_name,
                           id_starts: Optional[np.ndarray] = None):
    """The table sorted by id, then time (the table itself when it already is), where each
    sequence begins in it, and whether a time repeats within a sequence. `id_starts`: the
    id runs, when already found (None: look)."""
    from seqpipe._internal.runs import ASCENDING, REPEATED, UNSORTED

    starts = id_starts if id_starts is not None else id_runs(table[id_name])
    order = ASCENDING
    if starts is not None and time_name:
        order = _time_order(table[time_name], starts)
    if starts is None or order == UNSORTED:
        keys = [(id_name, "ascending")] + ([(time_name, "ascending")] if time_name else [])
        table = table.take(pc.sort_indices(table, sort_keys=keys))
        starts = id_runs(table[id_name])
        if starts is None:  # sorted just now, so the ids run ascending
            raise AssertionError("ids not in runs after sorting (a seqpipe bug; please report it)")
        order = _time_order(table[time_name], starts) if time_name else ASCENDING
    return table, starts, order == REPEATED


def _repeated_times(times, new_sequence, sequence_ids, offsets, time_name,
                    where) -> Optional[DataError]:
    repeated = np.flatnonzero(~new_sequence[1:] & (times[1:] == times[:-1]))
    if len(repeated):
        row = repeated[0] + 1
        sequence = sequence_ids[np.searchsorted(offsets, row, side="right") - 1]
        return DataError(
            f"sequence {show_id(sequence)} has two rows at time {show_id(times[row])} "
            f"(source.time_column {time_name!r}) in {where}; each timestep needs one row. "
            f"{len(repeated):,} repeated (id, time) pairs in all. Deduplicate or aggregate "
            f"them before reading.")
    return None


def _value_columns(config: PipelineConfig, with_inputs: bool = True):
    """(column, config key, level, categorical) for every feature and label column, each
    once per level."""
    seen = set()
    for name, spec in config.inputs.items() if with_inputs else ():
        for column in spec.columns:
            seen.add((column, spec.level))
            yield column, f"inputs.{name}.columns", spec.level, spec.categorical
    for name, output in config.outputs.items():
        key = f"outputs.{name}.column" + ("s" if output.columns else "")
        for column in output.label_columns:
            if (column, output.level) not in seen:
                seen.add((column, output.level))
                yield column, key, output.level, output.categorical
    part = config.split.column
    if part is not None and (part, "sequence") not in seen:
        yield part, "split.column", "sequence", True


def _parts(values: Categories, sequence_ids, column: str, where: str,
           problems: Optional[list]) -> np.ndarray:
    """(n,) int8 index into `PARTS` of each sequence's part, read from `split.column`."""
    known = pc.fill_null(pc.index_in(values.values.cast(pa.string()),
                                     value_set=pa.array(PARTS)), -1).to_numpy(
        zero_copy_only=False)
    table = np.append(known, -1).astype(np.int8)  # the last: a missing value
    parts = table[values.codes]
    bad = np.flatnonzero(parts < 0)
    if len(bad):
        first = bad[0]
        code = values.codes[first]
        value = None if code < 0 else values.values[int(code)].as_py()
        raise_or_collect(problems, DataError(
            f"split.column {column!r} holds {value!r} for sequence "
            f"{show_id(sequence_ids[first])} in {where}; each sequence's part must be one of "
            f"{', '.join(map(repr, PARTS))}. {len(bad):,} sequences have another value or "
            f"none. Fix the column, or split by id (split.validation, split.test) instead."))
        parts = np.where(parts < 0, 0, parts).astype(np.int8)
    return parts


def _one_value_per_sequence(values, starts, sequence_ids, column, key, where,
                            problems: Optional[list]) -> np.ndarray:
    # fmin/fmax skip NaN, so missing rows are fine; two different present values conflict.
    low = np.fmin.reduceat(values, starts)
    high = np.fmax.reduceat(values, starts)
    conflicts = np.flatnonzero(low != high)
    conflicts = conflicts[~np.isnan(low[conflicts])]
    if len(conflicts):
        first = conflicts[0]
        raise_or_collect(problems, DataError(
            f"column {column!r} ({key}, level: sequence) has two different values in sequence "
            f"{show_id(sequence_ids[first])} of {where}: {low[first]:g} and {high[first]:g}. "
            f"A per-sequence column must repeat one value on the rows of its sequence "
            f"(missing rows are fine). {len(conflicts):,} sequences conflict."))
    return low


def _one_category_per_sequence(values: Categories, starts, sequence_ids, column, key, where,
                               problems: Optional[list]) -> Categories:
    """`_one_value_per_sequence` for categories: missing rows (code -1) are fine."""
    codes = values.codes
    high = np.maximum.reduceat(codes, starts)
    low = np.minimum.reduceat(np.where(codes < 0, np.iinfo(np.int32).max, codes), starts)
    conflicts = np.flatnonzero((low != high) & (high >= 0))
    if len(conflicts):
        first = conflicts[0]
        show = values.values.take(pa.array([low[first], high[first]])).to_pylist()
        raise_or_collect(problems, DataError(
            f"column {column!r} ({key}, level: sequence) has two different values in sequence "
            f"{show_id(sequence_ids[first])} of {where}: {show[0]!r} and {show[1]!r}. A "
            f"per-sequence column must repeat one value on the rows of its sequence (missing "
            f"rows are fine). {len(conflicts):,} sequences conflict."))
    return Categories(high, values.values)


def _group_nested(table: pa.Table, config: PipelineConfig, where: str, with_inputs: bool,
                  problems: Optional[list]):
    id_name = config.source.id_column
    if id_name:
        check_no_nulls(table[id_name], "source.id_column", id_name, where)
        table = table.take(pc.sort_indices(table, sort_keys=[(id_name, "ascending")]))
        sequence_ids = table[id_name].to_numpy()
        raise_or_collect(problems, _repeated_ids(sequence_ids, id_name, where))
    else:
        sequence_ids = np.arange(table.num_rows)
    lists = list_columns(config)
    if not with_inputs:  # the first list column still gives the lengths
        lists = lists[:1] + [c for c in lists[1:] if not c[1].startswith("inputs.")]
    reference = lists[0][0]
    lengths = _list_lengths(table[reference])
    if (lengths < 0).any():
        raise _null_list_error(table, reference, lists[0][1], lengths, sequence_ids, where)
    offsets = offsets_of(lengths)
    columns = {}
    for column, key, may_be_null, categorical in lists:
        columns[column, "timestep"] = _flatten(table[column], lengths, offsets, column, key,
                                               may_be_null, reference, sequence_ids, where,
                                               categorical)
    if config.source.time_column:
        time_name = config.source.time_column
        raise_or_collect(problems, _missing_nested_times(table[time_name], time_name,
                                                         sequence_ids, where))
        raise_or_collect(problems, _order_nested_by_time(columns, time_name, offsets,
                                                         sequence_ids, where))
    keep = lengths > 0
    for column, _, level, categorical in _value_columns(config, with_inputs):
        if level == "sequence":
            values = Categories.of(table[column]) if categorical else table[column].to_numpy()
            columns[column, level] = values[keep]
    if not keep.all():
        sequence_ids = sequence_ids[keep]
        offsets = offsets_of(lengths[keep])
    return sequence_ids, offsets, columns, int((~keep).sum())


def _repeated_ids(sequence_ids: np.ndarray, id_name: str, where: str) -> Optional[DataError]:
    repeated = np.flatnonzero(sequence_ids[1:] == sequence_ids[:-1])
    if len(repeated):
        return DataError(
            f"sequence id {show_id(sequence_ids[repeated[0]])} (source.id_column {id_name!r}) "
            f"appears in more than one row of {where}; in the nested layout each sequence is "
            f"one row. {len(repeated):,} repeated ids in all. Use source.layout: long for one "
            f"row per timestep.")
    return None


def list_columns(config: PipelineConfig):
    """(column, key, may_be_null, categorical) for each list column; the first fixes the
    sequence length."""
    found: dict[str, tuple[str, bool, bool]] = {}
    for name, spec in config.inputs.items():
        if spec.level == "timestep":
            for column in spec.columns:
                found.setdefault(column, (f"inputs.{name}.columns", False, spec.categorical))
    for name, output in config.outputs.items():
        if output.level == "timestep":
            key = f"outputs.{name}.column" + ("s" if output.columns else "")
            for column in output.label_columns:
                found.setdefault(column, (key, True, output.categorical))
    if config.source.time_column:
        found.setdefault(config.source.time_column, ("source.time_column", False, False))
    return [(column, *rest) for column, rest in found.items()]


def _list_lengths(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(column), -1).to_numpy().astype(np.int64)


def _flatten(column, lengths, offsets, name, key, may_be_null, reference, sequence_ids, where,
             categorical=False):
    own = _list_lengths(column)
    mismatch = np.flatnonzero((own != lengths) & (own >= 0))
    if len(mismatch):
        row = mismatch[0]
        raise DataError(
            f"sequence {show_id(sequence_ids[row])} in {where} has {own[row]} values in column "
            f"{name!r} ({key}) but {lengths[row]} in {reference!r}; every list column of a "
            f"row must have one value per timestep. {len(mismatch):,} rows differ.")
    if (own < 0).any() and not may_be_null:
        raise _null_list_error(column, name, key, own, sequence_ids, where)
    flat = pc.list_flatten(column)
    values = Categories.of(flat) if categorical else flat.to_numpy()
    if not (own < 0).any():
        return values
    # A null label list means every label of that sequence is missing.
    at = ranges(offsets[:-1][own >= 0], own[own >= 0])
    if categorical:
        codes = np.full(offsets[-1], -1, dtype=np.int32)
        codes[at] = values.codes
        return Categories(codes, values.values)
    full = np.full(offsets[-1], np.nan, dtype=values.dtype)
    full[at] = values
    return full


def _null_list_error(column, name, key, own, sequence_ids, where) -> DataError:
    rows = np.flatnonzero(own < 0)
    return DataError(
        f"column {name!r} ({key}) is null instead of a list in {len(rows):,} rows of {where}, "
        f"first in sequence {show_id(sequence_ids[rows[0]])}; it needs one value per timestep")


def _missing_nested_times(times: pa.ChunkedArray, time_name: str, sequence_ids: np.ndarray,
                          where: str) -> Optional[DataError]:
    """A null or NaN inside a time list has no place in its sequence's order."""
    flat = pc.list_flatten(times)
    missing = pc.is_null(flat, nan_is_null=True)
    count = pc.sum(missing).as_py() or 0
    if count:
        rows = pc.filter(pc.list_parent_indices(times), missing).to_numpy()
        return DataError(
            f"source.time_column {time_name!r} has {count:,} null or NaN times inside the "
            f"lists of {len(np.unique(rows)):,} sequences of {where}, first in sequence "
            f"{show_id(sequence_ids[rows[0]])}; every timestep needs a time to be ordered "
            f"by. Drop those timesteps or fill their times before reading.")
    return None


def _order_nested_by_time(columns, time_name, offsets, sequence_ids,
                          where) -> Optional[DataError]:
    """Sorts the timesteps of each sequence by time, in place in `columns`; returns the
    error for a time that repeats in a sequence."""
    times = columns[time_name, "timestep"]
    sequence_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    order = np.lexsort((times, sequence_of))
    new_sequence = np.concatenate([[True], sequence_of[1:] != sequence_of[:-1]])
    for key, values in columns.items():
        columns[key] = values[order]
    return _repeated_times(times[order], new_sequence, sequence_ids, offsets, time_name, where)
