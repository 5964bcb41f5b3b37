"""Stream: reads the source one row group at a time, in sequence id order, ahead in threads.

A sequence's rows may span neighbouring row groups: the rows of the last id of a row group
wait for the next one, so each chunk handed on holds whole sequences. Streaming needs the
row groups, ordered by the id statistics in their Parquet footers, to hold disjoint id
ranges (rows sorted by id, as most writers leave them); `stream_order` says when they do not,
and then the source has to be grouped whole, in memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Iterator
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError
from seqpipe.source import SourceFiles, SourceTable

# Row groups read ahead of the one being grouped, and the threads reading them. pyarrow
# decodes in its own thread pool too; two parts in flight keep both cores busy while the
# consumer pads.
READ_AHEAD = 2
READ_THREADS = 2


@dataclasses.dataclass(frozen=True)
class Part:
    """One row group of one file, with the id range its footer records."""

    fragment: Any  # pyarrow.dataset.ParquetFileFragment of a single row group
    file: str
    row_group: int
    rows: int
    first: Any = None
    last: Any = None

    @property
    def where(self) -> str:
        return f"{self.file} (row group {self.row_group})"


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """The row groups in the order to read them, or why the source cannot be streamed."""

    parts: tuple[Part, ...]
    whole_because: Optional[str]  # None when the parts can be streamed


def stream_order(files: SourceFiles, config: PipelineConfig) -> StreamOrder:
    """Orders the row groups of `files` by sequence id, from the footers alone."""
    id_name = config.source.id_column
    parts = []
    for fragment in files.dataset.get_fragments():
        for piece in fragment.split_by_row_group():
            info = piece.row_groups[0]
            stats = (info.statistics or {}).get(id_name) if id_name else None
            first, last = (stats["min"], stats["max"]) if stats else (None, None)
            parts.append(Part(piece, fragment.path, info.id, info.num_rows, first, last))
    if not id_name:
        return StreamOrder(tuple(parts), None)
    unknown = next((p for p in parts if p.first is None and p.rows), None)
    if unknown is not None:
        return StreamOrder(tuple(parts), f"{unknown.where} records no statistics for "
                                         f"source.id_column {id_name!r}")
    parts = sorted((p for p in parts if p.rows), key=lambda p: (p.first, p.last))
    for before, after in zip(parts, parts[1:]):
        shared = after.first < before.last or (
            after.first == before.last and config.source.layout == "nested")
        if shared:
            return StreamOrder(tuple(parts), (
                f"rows of the same sequences are spread over row groups: {before.where} "
                f"holds ids {before.first!r} to {before.last!r} and {after.where} holds ids "
                f"{after.first!r} to {after.last!r}"))
    return StreamOrder(tuple(parts), None)


def stream_chunks(order: StreamOrder, config: PipelineConfig,
                  schema: pa.Schema) -> Iterator[SourceTable]:
    """Yields the source as tables of whole sequences, in id order, reading ahead.

    Args:
      order: a streamable `StreamOrder`.
      config: the pipeline config.
      schema: the columns to read and the types to cast them to.
    """
    parts = order.parts
    long_layout = config.source.layout == "long"
    id_name = config.source.id_column
    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        pending = collections.deque(pool.submit(_read, p, schema) for p in parts[:READ_AHEAD])
        waiting = None
        for k, part in enumerate(parts):
            table = pending.popleft().result()
            if k + READ_AHEAD < len(parts):
                pending.append(pool.submit(_read, parts[k + READ_AHEAD], schema))
            if waiting is not None:
                table = pa.concat_tables([waiting, table])
                waiting = None
            following = parts[k + 1] if k + 1 < len(parts) else None
            if long_layout and following is not None and following.first == part.last:
                # The last sequence goes on in the next row group: hold its rows back.
                last = pc.equal(table[id_name], pa.scalar(part.last, table[id_name].type))
                waiting, table = table.filter(last), table.filter(pc.invert(last))
            if table.num_rows:
                yield SourceTable(table, part.where, (part.file,))


def _read(part: Part, schema: pa.Schema) -> pa.Table:
    try:
        return part.fragment.to_table(schema=schema, columns=list(schema.names))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"could not read {part.where}: {e}") from e
