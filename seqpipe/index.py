"""Index: where a pipeline's sequences come from, and every sequence's id and length.

Every kind of source gives its sequences the same way (`SequenceSource`): an index read
when the pipeline is built, then chunks of grouped sequences in index order, once per
epoch. There are three kinds:

- `StreamedParquet`: Parquet whose row groups hold disjoint id ranges. Building reads only
  ids (and labels, when weights need them up front); each epoch reads one row group at a
  time, so memory does not grow with the data.
- `GroupedTable`: any other source, or an in-memory DataFrame or Table, grouped whole.
- `seqpipe.materialized.MaterializedPart`: records `seqpipe materialize` wrote.

`open_sequences` chooses between the first two. A new kind of source implements the
protocol and is handed to `Pipeline.from_source`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import typing
from collections.abc import Generator, Iterator, Mapping
from typing import Any, Optional, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe import tuning
from seqpipe._internal.threads import ordered_map
from seqpipe.config import PaddingConfig, PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.grouping import group_sequences, list_columns, sequence_lengths
from seqpipe.parquet.regroup import can_regroup, regrouped
from seqpipe.parquet.schema import column_roles
from seqpipe.parquet.sequences import Sequences, offsets_of, take
from seqpipe.parquet.source import SourceFiles, SourceTable, open_source, read_source
from seqpipe.parquet.stream import StreamOrder, stream_chunks, stream_order
from seqpipe.split import timesteps_before
from seqpipe.statistics import Statistics

logger = logging.getLogger("seqpipe")


@dataclasses.dataclass(frozen=True)
class KeptSteps:
    """Each sequence's kept timesteps: flat indices `start[i] : start[i] + length[i]`."""

    start: np.ndarray
    length: np.ndarray


def truncate(offsets: np.ndarray, padding: PaddingConfig) -> KeptSteps:
    """Keeps at most `padding.maxlen` timesteps per sequence, from the end `truncating` spares.

    Example:
      >>> w = truncate(np.array([0, 3, 8]), PaddingConfig(maxlen=4, truncating="pre"))
      >>> w.start.tolist(), w.length.tolist()
      ([0, 4], [3, 4])
    """
    lengths = np.diff(offsets)
    kept = lengths if padding.maxlen is None else np.minimum(lengths, padding.maxlen)
    start = offsets[:-1] + (lengths - kept if padding.truncating == "pre" else 0)
    return KeptSteps(start.astype(np.int64), kept.astype(np.int64))


@dataclasses.dataclass(frozen=True)
class Index:
    """What building keeps of every sequence: id, length and where its labels are present
    (`present` is empty when the source does not read labels up front)."""

    ids: np.ndarray
    offsets: np.ndarray
    present: Mapping[str, np.ndarray]
    rows: int
    empty_sequences_dropped: int = 0
    before_cutoff: Optional[np.ndarray] = None  # (n,) timesteps before split.time_cutoff
    parts: Optional[np.ndarray] = None  # (n,) each one's part, read from split.column

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of_lengths(cls, ids: np.ndarray, lengths: np.ndarray, rows: int) -> Index:
        return cls(ids, offsets_of(lengths), {}, rows)

    @classmethod
    def concat(cls, pieces: list, rows: int, dropped: int) -> Index:
        before, parts = (None if getattr(pieces[0], key) is None
                         else np.concatenate([getattr(p, key) for p in pieces])
                         for key in ("before_cutoff", "parts"))
        return cls(np.concatenate([p.ids for p in pieces]),
                   offsets_of(np.concatenate([p.lengths for p in pieces])),
                   {name: np.concatenate([p.present[name] for p in pieces])
                    for name in pieces[0].present}, rows, dropped, before, parts)


class SequenceSource(Protocol):
    """Where a pipeline's sequences come from.

    Attributes:
      config: the config the source was opened with.
      where: the source as messages and the report name it.
      file_count: how many files it reads (0 for data in memory).
      streamed: read a piece at a time (memory does not grow with the data).
      index: every sequence's id and length, in the order `chunks` gives them.
      report_fields: `Report` fields the source knows before any epoch (what grouping
        filled, what a materialized output counted when it was written).
      unlabelled: outputs known when opening to have no label at all.
      statistics: the `seqpipe.Statistics` its chunks were already prepared with (a
        materialized part holds model-ready values), or None: its chunks are raw, and the
        pipeline scales and encodes them (`seqpipe.transform`).
    """

    @property
    def config(self) -> PipelineConfig: ...

    @property
    def where(self) -> str: ...

    @property
    def file_count(self) -> int: ...

    @property
    def streamed(self) -> bool: ...

    @property
    def index(self) -> Index: ...

    @property
    def report_fields(self) -> Mapping[str, Any]: ...

    @property
    def unlabelled(self) -> tuple[str, ...]: ...

    @property
    def statistics(self) -> Optional[Statistics]: ...

    def chunks(self, in_part: np.ndarray, needed: Optional[np.ndarray] = None
               ) -> Generator[tuple[int, Sequences], None, Any]:
        """Every sequence of the index, grouped and untruncated, in index order, a chunk at
        a time with the index of its first sequence. A source that counts as it reads
        returns `Report` fields (filled values, missing labels of the `in_part` sequences)
        as the generator's return value.

        `needed`: (n,) bool, the sequences wanted (an epoch resumed part way): only the
        pieces of the source that hold one are read, the chunks then skip the others (and
        may hold some that are not needed), and nothing is counted."""
        ...

    def valid_labels(self, output: str, kept: KeptSteps) -> np.ndarray:
        """(n,) present labels of `output` inside each sequence's kept timesteps."""
        ...

    def sequences(self) -> Sequences:
        """Every sequence, grouped whole, in memory."""
        ...


def open_sequences(config: PipelineConfig, data: Any = None) -> SequenceSource:
    """The source of `config` (or `data`): streamed when its row groups allow, else grouped
    whole."""
    if data is not None:
        return GroupedTable(config, read_source(config, data))
    files = open_source(config)
    order = stream_order(files, config)
    if order.whole_because is not None and can_regroup(files, config):
        copy = regrouped(files, config)
        order = stream_order(copy, config, copy_of=str(files.where))
        if order.whole_because is None:
            return StreamedParquet(config, copy, order, copy_of=files)
        raise AssertionError(f"the regrouped copy of {files.where} does not stream: "
                             f"{order.whole_because} (a seqpipe bug; please report it)")
    if order.whole_because is not None:
        logger.warning(
            "seqpipe groups %s whole, in memory: %s. Sort the rows by %s (and write the files "
            "in that order) to stream it with bounded memory.", files.where,
            order.whole_because, config.source.id_column)
        return GroupedTable(config, read_source(config, files=files),
                            file_count=len(files.files))
    return StreamedParquet(config, files, order)


class GroupedTable:
    """A source table grouped into sequences whole, in memory, when it is opened."""

    streamed = False
    unlabelled: tuple[str, ...] = ()
    statistics = None

    def __init__(self, config: PipelineConfig, table: SourceTable, file_count: int = 0) -> None:
        self.config, self.where, self.file_count = config, table.where, file_count
        self._sequences, counts = group_sequences(table, config)
        self.index = Index(self._sequences.ids, self._sequences.offsets,
                           self._sequences.present, counts.rows, counts.empty_sequences_dropped,
                           _before_cutoff(self._sequences, config, self.where),
                           self._sequences.parts)
        self.report_fields = {"filled_values": dict(counts.filled_values)}

    def chunks(self, in_part: np.ndarray, needed: Optional[np.ndarray] = None
               ) -> Generator[tuple[int, Sequences], None, None]:
        """The sequences in slices of about `slice_timesteps`, so that assembly works on
        pieces the size of a streamed source's; with `needed`, only slices that hold a
        needed sequence."""
        sequences, levels = self._sequences, self.config.levels
        offsets = sequences.offsets
        cuts = np.unique(np.searchsorted(offsets, np.arange(0, offsets[-1],
                                                            tuning.TUNING.slice_timesteps)))
        cuts = np.append(cuts[cuts < len(sequences)], len(sequences))
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            if needed is None or needed[a:b].any():
                yield a, slice_sequences(sequences, a, b, levels)

    def valid_labels(self, output: str, kept: KeptSteps) -> np.ndarray:
        return valid_per_sequence(self.index.present[output], self.config.levels[output],
                                  kept)

    def sequences(self) -> Sequences:
        return self._sequences


class StreamedParquet:
    """Parquet files whose row groups hold disjoint id ranges, read one row group at a time.

    Opening reads the index: only the id column (with times and labels when the layout or
    the weights need them up front), row group by row group.
    """

    streamed = True
    statistics = None

    def __init__(self, config: PipelineConfig, files: SourceFiles, order: StreamOrder,
                 copy_of: Optional[SourceFiles] = None) -> None:
        """`copy_of`: the source `files` are a regrouped copy of (`seqpipe.parquet.regroup`)."""
        self.config, self._files, self._order = config, files, order
        shown = copy_of if copy_of is not None else files
        self.where, self.file_count = shown.where, len(shown.files)
        self.report_fields: Mapping[str, Any] = {} if copy_of is None else {
            "reading": f"streamed by row group from its regrouped copy, {files.where}"}
        self.unlabelled = tuple(name for name, spec in config.outputs.items()
                                if spec.column in files.null_labels)
        self.index = self._scan()
        self._whole: Optional[Sequences] = None

    def _scan(self) -> Index:
        config = self.config
        # Grouped, not only counted, when building needs more than ids and lengths.
        labels = (config.source.layout == "nested" or config.split.time_cutoff is not None
                  or config.split.column is not None
                  or any(config.weight_mode(name) == "global_mean" for name in config.outputs))
        pieces, rows, dropped = [], 0, 0
        for table in stream_chunks(self._order, config, self._index_schema(labels)):
            if labels:
                sequences, counts = group_sequences(table, config, with_inputs=False,
                                                    chunk=True)
                dropped += counts.empty_sequences_dropped
                pieces.append(Index(sequences.ids, sequences.offsets, sequences.present, 0,
                                    before_cutoff=_before_cutoff(sequences, config,
                                                                 self.where),
                                    parts=sequences.parts))
            else:  # the time column only orders rows, which lengths do not need
                pieces.append(Index.of_lengths(*sequence_lengths(table, config), 0))
            rows += table.table.num_rows
        if not rows:
            raise DataError(f"no sequences: {self.where} has no rows")
        if not any(len(p.ids) for p in pieces):
            raise DataError(f"no sequences: every sequence in {self.where} is empty")
        return Index.concat(pieces, rows, dropped)

    def _index_schema(self, labels: bool) -> pa.Schema:
        config = self.config
        if not labels:
            return pa.schema([self._files.schema.field(config.source.id_column)])
        names = [r.column for r in column_roles(config)
                 if r.key.startswith(("source.", "outputs.", "split."))]
        if config.source.layout == "nested":
            names.append(list_columns(config)[0][0])
        return pa.schema([self._files.schema.field(n) for n in dict.fromkeys(names)])

    def chunks(self, in_part: np.ndarray, needed: Optional[np.ndarray] = None
               ) -> Generator[tuple[int, Sequences], None, Any]:
        """Reads the row groups from the moment it is called, a few ahead; the generator
        returns what it filled and found missing. With `needed`, only the row groups that
        hold a needed sequence (and those a sequence of theirs spans into), uncounted."""
        order = self._order if needed is None else self._order_of(needed)
        if order is not self._order:
            tables = stream_chunks(order, self.config, self._files.schema, in_pieces=True)
            return self._located(ordered_map(self._group, tables, ahead=1))
        tables = stream_chunks(self._order, self.config, self._files.schema, in_pieces=True)
        return self._grouped(tables, in_part)

    def _order_of(self, needed: np.ndarray) -> StreamOrder:
        """The stream order cut down to the row groups that hold rows of a needed sequence
        (all of them, for one that spans several)."""
        row_groups = self._order.row_groups
        ids = pa.array(self.index.ids)
        if any(row_group.first is None for row_group in row_groups):
            return self._order  # no id statistics to place the sequences by: read all
        take = np.zeros(len(row_groups), dtype=bool)
        for k, row_group in enumerate(row_groups):
            low = pc.sum(pc.less(ids, pa.scalar(row_group.first, ids.type))).as_py() or 0
            high = pc.sum(pc.less_equal(ids, pa.scalar(row_group.last, ids.type))).as_py() or 0
            take[k] = bool(needed[low:high].any())
        return dataclasses.replace(self._order, row_groups=tuple(
            row_group for row_group, kept in zip(row_groups, take) if kept))

    def _located(self, grouped: Iterator[tuple[Sequences, Any]]
                 ) -> Generator[tuple[int, Sequences], None, None]:
        """Chunks of row groups read with gaps between them, each with the index of its
        first sequence, found by id. A sequence cut by a gap (its other rows are in a row
        group not read, so it is not needed) is left out."""
        ids, lengths = self.index.ids, self.index.lengths
        for chunk, _ in grouped:
            if not len(chunk):
                continue
            first = int(np.searchsorted(ids, chunk.ids[0]))
            at = first + np.arange(len(chunk))
            if at[-1] >= len(ids) or not np.array_equal(ids[at], chunk.ids):
                raise DataError(f"{self.where} changed since the pipeline was built: "
                                f"sequences {chunk.ids[0]!r} to {chunk.ids[-1]!r} are not "
                                f"as its index has them. Build the pipeline again.")
            whole = np.flatnonzero(chunk.lengths == lengths[at])
            if len(whole) == len(chunk):
                yield first, chunk
            elif len(whole):
                a, b = int(whole[0]), int(whole[-1]) + 1  # cut ones are at the edges
                yield first + a, slice_sequences(chunk, a, b, self.config.levels)

    def _grouped(self, tables: Iterator[SourceTable], in_part: np.ndarray):
        levels = self.config.levels
        first, filled = 0, collections.Counter[str]()
        missing = {name: np.zeros(2, dtype=np.int64) for name in self.config.outputs}
        for chunk, counts in ordered_map(self._group, tables, ahead=1):
            filled.update(counts.filled_values)
            mine = in_part[first:first + len(chunk)]
            for name, pair in missing_labels(chunk.present, mine, chunk.lengths,
                                             levels).items():
                missing[name] += pair
            yield first, chunk
            first += len(chunk)
        return {"filled_values": dict(filled),
                "missing_labels": {name: (int(m), int(t)) for name, (m, t) in missing.items()}}

    def _group(self, table: SourceTable):
        return group_sequences(table, self.config, chunk=True)

    def valid_labels(self, output: str, kept: KeptSteps) -> np.ndarray:
        return valid_per_sequence(self.index.present[output], self.config.levels[output],
                                  kept)

    def sequences(self) -> Sequences:
        """Reads the whole source (as it is at the first call), grouped, into memory."""
        if self._whole is None:
            self._whole = group_sequences(read_source(self.config), self.config)[0]
        return self._whole


def slice_sequences(sequences: Sequences, a: int, b: int,
                    levels: Mapping[str, str]) -> Sequences:
    """Sequences a to b (exclusive), as views where the arrays allow."""
    offsets = sequences.offsets
    t0, t1 = offsets[a], offsets[b]

    def cut(arrays):
        return {name: take(values, slice(t0, t1) if levels[name] == "timestep" else
                           slice(a, b))
                for name, values in arrays.items()}

    times = None if sequences.times is None else sequences.times[t0:t1]
    parts = None if sequences.parts is None else sequences.parts[a:b]
    return Sequences(sequences.ids[a:b], offsets[a:b + 1] - t0, cut(sequences.features),
                     cut(sequences.labels), cut(sequences.present), times, parts)


def _before_cutoff(sequences: Sequences, config: PipelineConfig,
                   where: str) -> Optional[np.ndarray]:
    split = config.split
    if split.time_cutoff is None or sequences.times is None:
        return None
    return timesteps_before(sequences.times, sequences.offsets, split,
                            typing.cast(str, config.source.time_column), where)


def missing_labels(present: Mapping[str, np.ndarray], in_part: Optional[np.ndarray] = None,
                   lengths: Optional[np.ndarray] = None,
                   levels: Optional[Mapping] = None) -> dict:
    """output -> (missing, all) labels, over the sequences `in_part` when given."""
    counts = {}
    for name, p in present.items():
        if in_part is not None and not in_part.all():
            if levels is not None and levels[name] == "sequence":
                p = p[in_part]
            elif lengths is not None:
                p = p[np.repeat(in_part, lengths)]
            else:
                raise ValueError("missing_labels of timestep labels needs the lengths")
        counts[name] = (int(p.size - np.count_nonzero(p)), int(p.size))
    return counts


def valid_per_sequence(present: np.ndarray, level: str, kept: KeptSteps) -> np.ndarray:
    """Present labels of one output inside each sequence's kept timesteps."""
    if level == "sequence":
        return present.astype(np.int64)
    cumulative = np.concatenate([[0], np.cumsum(present, dtype=np.int64)])
    return cumulative[kept.start + kept.length] - cumulative[kept.start]
