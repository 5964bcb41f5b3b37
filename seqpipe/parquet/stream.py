"""Stream: reads the source one row group at a time, in sequence id order, ahead in threads.

A sequence's rows may span neighbouring row groups: the rows of the last id of a row group
wait for the next one, so each chunk handed on holds whole sequences. Streaming needs the
row groups, ordered by the id statistics in their Parquet footers, to hold disjoint id
ranges (rows sorted by id, as most writers leave them); `stream_order` says when they do not,
and then the source has to be grouped whole, in memory.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from seqpipe import tuning
from seqpipe._internal.threads import shared_pool
from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.footers import Fingerprint, check_unchanged
from seqpipe.parquet.grouping import id_runs
from seqpipe.parquet.source import CHECKSUMS, SourceFiles, SourceTable, read_error

# Row groups are read ahead of the one being grouped, `Tuning.read_ahead_rows` rows and at
# least one, `Tuning.read_threads` at a time: a big row group is read while the last is
# grouped, and a folder of small files is read several files at once.


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One row group of one file, with the id range its footer records."""

    fragment: Any  # pyarrow.dataset.ParquetFileFragment of a single row group
    file: str
    number: int  # the row group's number in its file
    rows: int
    first: Any = None
    last: Any = None
    built_from: Optional[Fingerprint] = None  # the file as the index was built from it
    copy_of: Optional[str] = None  # the source this file is a regrouped copy of

    @property
    def where(self) -> str:
        if self.copy_of is not None:
            return f"{self.copy_of} (regrouped: row group {self.number} of {self.file})"
        return f"{self.file} (row group {self.number})"


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """The row groups in the order to read them, or why the source cannot be streamed."""

    row_groups: tuple[RowGroup, ...]
    whole_because: Optional[str]  # None when the row groups can be streamed


def stream_order(files: SourceFiles, config: PipelineConfig,
                 copy_of: Optional[str] = None) -> StreamOrder:
    """Orders the row groups of `files` by sequence id, from the footers alone. `copy_of`:
    the source `files` are a regrouped copy of, which messages then name."""
    id_name = config.source.id_column
    row_groups = []
    for fragment in files.dataset.get_fragments():
        for piece in fragment.split_by_row_group():
            info = piece.row_groups[0]
            first, last = _id_range(info, id_name) if id_name else (None, None)
            row_groups.append(RowGroup(piece, fragment.path, info.id, info.num_rows, first, last,
                                       files.fingerprints.get(fragment.path), copy_of))
    if not id_name:
        return StreamOrder(tuple(row_groups), None)
    unknown = next((p for p in row_groups if p.first is None and p.rows), None)
    if unknown is not None:
        return StreamOrder(tuple(row_groups), f"{unknown.where} records no statistics for "
                                         f"source.id_column {id_name!r}")
    row_groups = sorted((p for p in row_groups if p.rows), key=lambda p: (p.first, p.last))
    for before, after in zip(row_groups, row_groups[1:]):
        shared = after.first < before.last or (
            after.first == before.last and config.source.layout == "nested")
        if shared:
            return StreamOrder(tuple(row_groups), (
                f"rows of the same sequences are spread over row groups: {before.where} "
                f"holds ids {before.first!r} to {before.last!r} and {after.where} holds ids "
                f"{after.first!r} to {after.last!r}"))
    return StreamOrder(tuple(row_groups), None)


def _id_range(info: Any, id_name: str) -> tuple:
    """The least and greatest id in a row group, from its footer; (None, None) when it does
    not record them. Only the id column's statistics are converted: pyarrow's
    `RowGroupInfo.statistics` converts every column's, and fails on a float16 one."""
    metadata = info.metadata
    for j in range(metadata.num_columns):
        column = metadata.column(j)
        if column.path_in_schema != id_name:
            continue
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            return None, None
        kind = info.schema.field(id_name).type
        try:
            return (pa.scalar(stats.min, type=kind).as_py(),
                    pa.scalar(stats.max, type=kind).as_py())
        except (pa.ArrowException, TypeError, ValueError):
            return None, None  # the rows are then grouped whole, saying why
    return None, None


def stream_chunks(order: StreamOrder, config: PipelineConfig, schema: pa.Schema,
                  in_pieces: bool = False) -> Iterator[SourceTable]:
    """Yields the source as tables of whole sequences, in id order, reading ahead.

    Args:
      order: a streamable `StreamOrder`.
      config: the pipeline config.
      schema: the columns to read and the types to cast them to.
      in_pieces: hand sorted row groups on in pieces of about `Tuning.piece_rows` rows.

    The first row groups are read from the moment this is called, not from the first
    chunk asked for: an epoch's planning then overlaps its first reads.
    """
    reads = _ReadAhead(order.row_groups, schema)
    return _chunks(order, config, in_pieces, reads)


class _ReadAhead:
    """Reads `row_groups` in order, `Tuning.read_ahead_rows` ahead of the one taken last."""

    def __init__(self, row_groups: tuple, schema: pa.Schema) -> None:
        self._row_groups, self._schema = row_groups, schema
        self._pool = shared_pool("read", tuning.TUNING.read_threads)
        self._pending: collections.deque = collections.deque()  # (rows, future)
        self._next = 0
        self._top_up()

    def take(self) -> pa.Table:
        """The next row group's table, once read; the reads after it are started first."""
        future = self._pending.popleft()[1]
        self._top_up()
        return future.result()

    def _top_up(self) -> None:
        ahead = sum(rows for rows, _ in self._pending)
        while self._next < len(self._row_groups) and (
                not self._pending
                or ahead + self._row_groups[self._next].rows <= tuning.TUNING.read_ahead_rows):
            row_group = self._row_groups[self._next]
            read = self._pool.submit(read_row_group, row_group, self._schema)
            self._pending.append((row_group.rows, read))
            ahead += row_group.rows
            self._next += 1


def _chunks(order: StreamOrder, config: PipelineConfig, in_pieces: bool,
            reads: _ReadAhead) -> Iterator[SourceTable]:
    row_groups, id_name = order.row_groups, config.source.id_column or ""
    long_layout = config.source.layout == "long" and bool(id_name)
    waiting: list[pa.Table] = []  # rows of a sequence that began in an earlier row group
    for k, row_group in enumerate(row_groups):
        table = reads.take()
        following = row_groups[k + 1] if k + 1 < len(row_groups) else None
        goes_on = long_layout and following is not None and following.first == row_group.last
        # Where each sequence begins, found once per row group and kept through the cuts
        # below and into grouping (four passes over the ids before).
        starts = _id_starts(table, id_name) if long_layout else None
        if waiting:
            head, table, starts = _split(table, starts, id_name, row_group.first, at_start=True)
            waiting.append(head)
            if table.num_rows == 0 and goes_on:
                continue
            # The sequence that spans row groups is handed on alone, so that the big
            # chunks stay single Arrow chunks that NumPy can view without copying.
            spanning = pa.concat_tables(waiting).combine_chunks()
            if spanning.num_rows:
                yield SourceTable(spanning, row_group.where, (row_group.file,))
            waiting = []
        if goes_on:
            table, tail, starts = _split(table, starts, id_name, row_group.last, at_start=False)
            waiting = [tail]
        if table.num_rows:
            pieces = (_pieces(table, starts) if long_layout and in_pieces
                      else [(table, starts)])
            for piece, piece_starts in pieces:
                yield SourceTable(piece, row_group.where, (row_group.file,), piece_starts)


def _id_starts(table: pa.Table, id_name: str) -> Optional[np.ndarray]:
    """Where each run of equal ids begins, when the ids are sorted and not null; else None."""
    ids = table[id_name]
    return None if ids.null_count else id_runs(ids)



def _pieces(table: pa.Table, starts: Optional[np.ndarray]) -> list:
    """Zero-copy slices of `table`, each of whole sequences, when its ids are sorted (their
    run `starts` known), each with its own run starts."""
    rows = tuning.TUNING.piece_rows
    if table.num_rows <= 2 * rows or starts is None or len(starts) < 2:
        return [(table, starts)]  # small, unsorted, or one sequence: nothing to cut
    inner = starts[1:]
    cuts = np.unique(inner[np.minimum(np.searchsorted(
        inner, np.arange(rows, table.num_rows, rows)), len(inner) - 1)])
    edges = np.concatenate([[0], cuts, [table.num_rows]])
    at = np.searchsorted(starts, edges)
    return [(table.slice(a, b - a), starts[i:j] - a)
            for a, b, i, j in zip(edges[:-1], edges[1:], at[:-1], at[1:]) if b > a]


def _split(table: pa.Table, starts: Optional[np.ndarray], id_name: str, value: Any,
           at_start: bool) -> tuple:
    """Splits off the rows whose id is `value`: (those rows, the rest, the rest's run starts)
    when `at_start`, else (the rest, those rows, the rest's run starts). Rows sorted by id
    (`starts` known) make this a zero-copy slice."""
    ids = table[id_name]
    if starts is not None and len(starts):  # sorted: the rows of `value` are the edge run
        row = 0 if at_start else int(starts[-1])
        if at_start:
            run = int(starts[1]) if len(starts) > 1 else len(ids)
        else:
            run = len(ids) - row
        count = run if ids[row].as_py() == value else 0
        edge = table.slice(0, count) if at_start else table.slice(table.num_rows - count)
        rest = table.slice(count) if at_start else table.slice(0, table.num_rows - count)
        if count:
            starts = starts[1:] - count if at_start else starts[:-1]
    else:
        match = pc.equal(ids, pa.scalar(value, ids.type))
        edge, rest = table.filter(match), table.filter(pc.invert(match))
        starts = None if starts is None else _id_starts(rest, id_name)
    return (edge, rest, starts) if at_start else (rest, edge, starts)


def _scan_options(fragment: Any) -> pads.ParquetFragmentScanOptions:
    """Local files are read a column chunk at a time, not a whole row group's compressed
    bytes first (pyarrow's `pre_buffer`, made for object stores, where it is kept): every
    read in flight then holds less memory, as fast. Page checksums are verified on every
    file system (`source.CHECKSUMS`)."""
    if isinstance(fragment.filesystem, pafs.LocalFileSystem):
        return _LOCAL
    return CHECKSUMS


_LOCAL = pads.ParquetFragmentScanOptions(pre_buffer=False, page_checksum_verification=True)


def read_row_group(row_group: RowGroup, schema: pa.Schema) -> pa.Table:
    """Reads one row group as one Arrow chunk per column: pyarrow's default cuts it in
    batches of 128 k rows, and a piece of a sequence straddling two chunks has to be
    copied before NumPy can see it (0.1 s an epoch of the reference file).

    The file is checked afterwards to be the one the index was built from: a rewrite,
    before or during the read, is an error and not rows read under the old index."""
    try:
        table = row_group.fragment.to_table(schema=schema, columns=list(schema.names),
                                       batch_size=max(row_group.rows, 1),
                                       fragment_scan_options=_scan_options(row_group.fragment))
    except (pa.ArrowException, OSError) as e:
        _check_unchanged(row_group)
        raise DataError(f"could not read {row_group.where}: {read_error(e)}") from e
    _check_unchanged(row_group)
    return table


def _check_unchanged(row_group: RowGroup) -> None:
    if row_group.built_from is not None:
        check_unchanged(row_group.fragment.filesystem, row_group.file, row_group.built_from)
