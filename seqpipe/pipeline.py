"""Pipeline: source -> sequences -> truncation and buckets -> padded, weighted NumPy batches.

Everything up to the finished `(x, y, sample_weight)` batch happens here in NumPy, without
TensorFlow. Building reads the index (every sequence's id and length); each epoch plans its
batches from the index and assembles them as the source streams in. `seqpipe.dataset` wraps
this in tf.data.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa

from seqpipe import tuning
from seqpipe.assemble import Assembler, Group
from seqpipe.batching import (
    EpochPlan,
    Windows,
    auto_boundaries,
    batch_sizes,
    bucket_of,
    in_multiples,
    padding_waste,
    plan_epoch,
    truncate,
)
from seqpipe.config import PipelineConfig, leaked_labels, load_config
from seqpipe.errors import ConfigError, DataError
from seqpipe.sequences import Sequences, group_sequences, list_columns, sequence_lengths, show_id
from seqpipe.shard import Shard, hash_mask, shard_order
from seqpipe.source import SourceTable, column_roles, open_source, read_source
from seqpipe.split import PARTS, check_part, part_of
from seqpipe.stream import StreamOrder, ordered_map, stream_chunks, stream_order

logger = logging.getLogger("seqpipe")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch: the Keras triple plus which sequences it holds."""

    x: dict
    y: dict
    sample_weight: dict
    ids: np.ndarray  # the sequence ids, in batch order; rows past them are empty
    lengths: np.ndarray  # real timesteps per sequence, after truncation


@dataclasses.dataclass(frozen=True)
class Report:
    """What the pipeline read, kept, dropped and filled. `str(report)` is a readable summary."""

    source: str
    files: int
    rows: int
    sequences: int
    timesteps: int
    empty_sequences_dropped: int
    truncated_sequences: int
    truncated_timesteps: int
    filled_values: Optional[Mapping[str, int]]  # None until a streamed epoch has read them
    missing_labels: Optional[Mapping[str, tuple[int, int]]]  # output -> (missing, labels)
    bucket_boundaries: tuple[int, ...]
    batches_per_epoch: int
    sequences_dropped_per_epoch: int  # by batching.drop_remainder
    padding_waste: float  # padded / all timesteps in the first epoch's batches
    padding_waste_unbucketed: float  # batches cut with no regard to length, for comparison
    seed: Optional[int]
    streamed: bool = False  # read one row group at a time rather than grouped whole
    split: Optional[str] = None  # the part read: train, validation or test; None for all
    source_sequences: Optional[int] = None  # sequences in the source, all parts together

    def changes(self) -> list[str]:
        """What seqpipe dropped or changed, one phrase each; empty when nothing."""
        changes = []
        if self.truncated_timesteps:
            changes.append(f"truncated {self.truncated_timesteps:,} timesteps in "
                           f"{self.truncated_sequences:,} sequences (padding.maxlen)")
        if self.empty_sequences_dropped:
            changes.append(f"dropped {self.empty_sequences_dropped:,} empty sequences")
        if self.filled_values:
            changes.append(f"filled {sum(self.filled_values.values()):,} NaN/null/infinite "
                           f"feature values ({', '.join(self.filled_values)})")
        if self.sequences_dropped_per_epoch:
            changes.append(f"drop_remainder leaves out {self.sequences_dropped_per_epoch:,} "
                           f"sequences per epoch")
        return changes

    def __str__(self) -> str:
        lines = [
            f"source: {self.source} ({f'{self.files} files, ' if self.files else ''}"
            f"{self.rows:,} rows; "
            f"{'streamed by row group' if self.streamed else 'grouped whole, in memory'})",
            f"sequences: {self.sequences:,}, timesteps: {self.timesteps:,}"
            + (f" (split {self.split!r}: {self.sequences:,} of the source's "
               f"{self.source_sequences:,} sequences)" if self.split else ""),
            f"truncated: {self.truncated_timesteps:,} timesteps in "
            f"{self.truncated_sequences:,} sequences (padding.maxlen)",
        ]
        if self.empty_sequences_dropped:
            lines.append(f"dropped: {self.empty_sequences_dropped:,} empty sequences")
        if self.filled_values is None:
            lines.append("filled: counted as the features stream in, during the first "
                         "epoch")
        every = " (counted over every split)" if self.split else ""
        for key, count in (self.filled_values or {}).items():
            lines.append(f"filled: {count:,} NaN/null/infinite values in {key}{every}")
        if self.missing_labels is None:
            lines.append("missing labels: counted as the labels stream in, during the first "
                         "epoch")
        for name, (missing, total) in (self.missing_labels or {}).items():
            share = missing / total if total else 0.0
            lines.append(f"missing labels: {name}: {missing:,} of {total:,} ({share:.1%}), "
                         f"weight 0")
        lines.append(
            f"batches per epoch: {self.batches_per_epoch:,}, bucket boundaries: "
            f"{list(self.bucket_boundaries) or 'none'}, padding waste: "
            f"{self.padding_waste:.1%} (without buckets: {self.padding_waste_unbucketed:.1%})")
        if self.sequences_dropped_per_epoch:
            lines.append(f"dropped per epoch by drop_remainder: "
                         f"{self.sequences_dropped_per_epoch:,} sequences")
        lines.append(f"shuffle seed: {self.seed}" if self.seed is not None else "shuffle: off")
        return "\n".join(lines)


class Pipeline:
    """Reads the source's index once, then makes the batches of any epoch in NumPy.

    A Parquet source whose row groups hold disjoint id ranges (rows sorted by id) is
    streamed: building reads only ids, times and labels, and each epoch reads one row
    group at a time, so memory does not grow with the data. Otherwise (and for in-memory
    `data`) the sequences are grouped whole, in memory; a file source then logs a warning.

    Args:
      config: a `PipelineConfig`, a YAML path or a mapping (see `load_config`).
      data: a pandas DataFrame or pyarrow Table to use instead of `source.path`.
      split: 'train', 'validation' or 'test' when the config has a `split` section (it
        must then be given); None reads every sequence.
      shard: `Shard(index, count)`: read only this input pipeline's share of the sequences
        (see `seqpipe.shard`); None reads them all.
      same_shape_first: pad each epoch's first this many batches to `batch_size` rows of
        `padding.maxlen` timesteps (see `Assembler`); `build_dataset` sets it for several
        replicas.

    Raises:
      SeqpipeError: a bad config, schema or id, before the first batch. In a streamed
        source, bad times, labels and feature values are found when their row group is
        read; grouped whole, before the first batch.

    Example::

      pipeline = Pipeline("configs/train.yaml")
      print(pipeline.report)
      batch = next(pipeline.batches(epoch=0))  # batch.x, batch.y, batch.sample_weight, batch.ids
    """

    def __init__(self, config: Union[PipelineConfig, Mapping, str, os.PathLike],
                 data: Any = None, split: Optional[str] = None, *, records: Any = None,
                 shard: Optional[Shard] = None, same_shape_first: int = 0) -> None:
        self.config = config if isinstance(config, PipelineConfig) else load_config(config)
        if same_shape_first and self.config.padding.maxlen is None:
            raise ConfigError(
                "training on several replicas needs padding.maxlen: Keras 3 averages the "
                "first batch of every replica to build the model, so seqpipe pads those to "
                "batch_size x maxlen. Set padding.maxlen (the longest sequence you keep).")
        self.same_shape_first = same_shape_first
        for name in leaked_labels(self.config):
            logger.warning(
                "seqpipe: outputs.%s.column %r also feeds an input (outputs.%s.also_input: "
                "true): the model sees the labels it predicts", name,
                self.config.outputs[name].column, name)
        self.split = check_part(split, self.config.split)
        self.shard = shard
        self._shard_by_hash = shard is not None  # unless whole row groups can be shared out
        self._whole: Optional[Sequences] = None
        self._stream: Optional[StreamOrder] = None
        self._records = records  # a materialized part (`seqpipe.materialized`)
        # Filled features and missing labels. A streamed source counts them during its first
        # epoch, in whichever thread reads it (tf.data's producer): that epoch hands its
        # counts in under this lock, and `report` reads them under it.
        self._counted: Optional[dict] = None
        self._counted_lock = threading.Lock()
        self._first_plan: Optional[EpochPlan] = None
        self._unlabelled: set[str] = set()  # outputs already said to have no label at all
        if records is not None:
            share = records.share(shard) if shard is not None else None
            if share is not None:
                records, self._records, self._shard_by_hash = share, share, False
            self._index = _Index(records.ids, np.concatenate([[0], np.cumsum(records.lengths)])
                                 .astype(np.int64), {}, records.rows, 0)
            self._counted = dict(records.counted)
            where, files = records.where, len(records.files)
        elif data is not None:
            source = read_source(self.config, data)
            self._group_whole(source)
            where, files = source.where, 0
        else:
            self._files = open_source(self.config)
            where, files = self._files.where, len(self._files.files)
            self._warn_unlabelled(name for name, spec in self.config.outputs.items()
                                  if spec.column in self._files.null_labels)
            order = stream_order(self._files, self.config)
            if order.whole_because is None:
                if shard is not None:
                    ranged = shard_order(order, shard, self.config.source.layout)
                    order = ranged or order
                    self._shard_by_hash = ranged is None
                self._stream = order
                self._index = self._scan(order)
            else:
                logger.warning(
                    "seqpipe groups %s whole, in memory: %s. Sort the rows by %s (and write "
                    "the files in that order) to stream it with bounded memory.",
                    where, order.whole_because, self.config.source.id_column)
                self._group_whole(read_source(self.config))
        index = self._index
        self.windows = truncate(index.offsets, self.config.padding)
        self._in_part = self._part_mask(where)
        # Plans are made over the part's sequences alone (`_members` maps them back to the
        # source's index), so a part's batches do not depend on the other parts.
        self._members = np.flatnonzero(self._in_part)
        if self._whole is not None:
            self._counted["missing_labels"] = missing_labels(
                self._whole.present, self._in_part, index.lengths, self.config.levels)
        kept = self.windows.length[self._members]
        boundaries = self.config.batching.bucket_boundaries
        if boundaries == "auto":
            boundaries = auto_boundaries(kept)
        self.bucket_boundaries: tuple[int, ...] = tuple(boundaries or ())
        self._buckets = bucket_of(kept, self.bucket_boundaries)
        self._sizes = self._batch_sizes(self._buckets)
        self.seed = self.config.shuffle.seed
        if self.seed is None and self.config.shuffle.buffer_size:
            self.seed = int(typing.cast(int, np.random.SeedSequence().entropy) % 2**31)
        self._valid_counts = {
            name: records.valid[name] if records is not None else
            valid_per_sequence(index.present[name], spec.level, self.windows)
            for name, spec in self.config.outputs.items()
            if self.config.weight_mode(name) == "global_mean"}
        self._first_plan = self.plan(0)
        self._report = self._make_report(where, files)
        if records is not None:  # counted when the part was written, before truncation
            self._report = dataclasses.replace(self._report, **records.report_fields)
        if self._report.batches_per_epoch == 0:
            raise DataError(
                f"batching.drop_remainder leaves no batch: no bucket holds "
                f"batching.batch_size={self.config.batching.batch_size} of the "
                f"{self._report.sequences:,} sequences. Lower batch_size, use fewer buckets, "
                f"or set drop_remainder: false.")
        logger.info("seqpipe pipeline ready:\n%s", self.report)
        self._warn_changes()

    @property
    def report(self) -> Report:
        """What was read, kept, dropped and filled; see `Report`."""
        with self._counted_lock:
            counted = self._counted
        if counted is None:
            return self._report
        return dataclasses.replace(self._report, **counted)

    @property
    def sequences(self) -> Sequences:
        """All sequences, grouped whole. For a streamed source this reads it all into memory."""
        if self._whole is None:
            self._whole, _ = group_sequences(read_source(self.config), self.config)
        return self._whole

    def plan(self, epoch: int = 0) -> EpochPlan:
        """The batches of one epoch; the same (seed, epoch) always gives the same plan."""
        if epoch == 0 and self._first_plan is not None:
            return self._first_plan
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        plan = plan_epoch(self.windows.length[self._members], self._buckets, self._sizes,
                          self.config.batching, self.config.shuffle, rng)
        if self.same_shape_first > 1:  # local replicas: every step a batch for each
            plan = in_multiples(plan, self.same_shape_first)
        if len(self._members) == len(self.windows.length):
            return plan
        return dataclasses.replace(plan, batches=[self._members[b] for b in plan.batches])

    def groups(self, epoch: int = 0) -> Iterator[Group]:
        """Yields the epoch's batches in assembly groups: padded batches end to end."""
        chunks = self.chunks()  # a streamed source is read from now on, while we plan
        plan = self.plan(epoch)
        mean_valid = {name: self._mean_valid_per_batch(name, plan)
                      for name in self.config.outputs}
        assembler = Assembler(self.config, plan, self._index.lengths, self.windows.length,
                              mean_valid, self.same_shape_first)
        yield from assembler.groups(chunks)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        """Yields the padded, weighted batches of one epoch."""
        ids, kept = self._index.ids, self.windows.length
        for group in self.groups(epoch):
            for j, members in enumerate(group.members):
                x, y, weights = group.batch_view(j, self.config)
                yield Batch(x, y, weights, ids[members], kept[members])

    def _group_whole(self, source: SourceTable) -> None:
        self._whole, counts = group_sequences(source, self.config)
        self._counted = {"filled_values": dict(counts.filled_values)}  # labels: by part
        self._index = _Index.of(self._whole, counts.rows, counts.empty_sequences_dropped)

    def _scan(self, order: StreamOrder) -> _Index:
        """Reads the ids (and the labels, when needed up front), row group by row group."""
        config, roles = self.config, column_roles(self.config)
        labels = config.source.layout == "nested" or any(
            config.weight_mode(name) == "global_mean" for name in config.outputs)
        names = [r.column for r in roles if r.key.startswith("source.")
                 or (labels and r.key.startswith("outputs."))]
        if config.source.layout == "nested":
            names.append(list_columns(config)[0][0])
        schema = pa.schema([self._files.schema.field(n) for n in dict.fromkeys(names)])
        if not labels:  # the time column only orders rows, which lengths do not need
            schema = pa.schema([schema.field(config.source.id_column)])
        pieces, rows, dropped = [], 0, 0
        for table in stream_chunks(order, config, schema):
            if labels:
                sequences, counts = group_sequences(table, config, with_inputs=False,
                                                    chunk=True)
                dropped += counts.empty_sequences_dropped
            else:
                ids, lengths = sequence_lengths(table, config)
                sequences = Sequences(ids, np.concatenate([[0], np.cumsum(lengths)]), {}, {},
                                      {})
            pieces.append(sequences)
            rows += table.table.num_rows
        if not rows:
            raise DataError(f"no sequences: {self._files.where} has no rows")
        if not any(len(p) for p in pieces):
            raise DataError(f"no sequences: every sequence in {self._files.where} is empty")
        return _Index.concat(pieces, rows, dropped)

    def chunks(self) -> Iterator[tuple[int, Sequences]]:
        """Every sequence of the source (all parts), grouped, in index order, a chunk at a
        time, with the index of the chunk's first sequence. Untruncated: `windows` says
        which timesteps each sequence keeps. A streamed source's first row groups are read
        from the moment this is called."""
        if self._records is not None:
            return self._records.chunks()
        if self._stream is None:
            return _slices(self.sequences, self.config)  # grouped whole at build
        return self._streamed(stream_chunks(self._stream, self.config, self._files.schema,
                                            in_pieces=True))

    def _streamed(self, tables: Iterator[SourceTable]) -> Iterator[tuple[int, Sequences]]:
        first, filled = 0, collections.Counter[str]()
        missing = {name: np.zeros(2, dtype=np.int64) for name in self.config.outputs}
        for chunk, counts in ordered_map(self._group_chunk, tables, ahead=1):
            filled.update(counts.filled_values)
            mine = self._in_part[first:first + len(chunk)]
            for name, pair in missing_labels(chunk.present, mine, chunk.lengths,
                                             self.config.levels).items():
                missing[name] += pair
            yield first, chunk
            first += len(chunk)
        counted = {"filled_values": dict(filled), "missing_labels": {
            name: (int(m), int(t)) for name, (m, t) in missing.items()}}
        with self._counted_lock:
            first_epoch = self._counted is None
            if first_epoch:
                self._counted = counted
        if first_epoch:
            self._warn_changes(fills_only=True)  # the rest was said when building

    def _group_chunk(self, table: SourceTable):
        return group_sequences(table, self.config, chunk=True)

    def _part_mask(self, where: str) -> np.ndarray:
        """(n,) True for the sequences of the part (and shard) this pipeline reads."""
        n = len(self._index.ids)
        mask = np.ones(n, dtype=bool)
        if self.split is not None:
            mask = part_of(self._index.ids, self.config.split) == PARTS.index(self.split)
            if not mask.any():
                raise DataError(
                    f"split {self.split!r} holds none of the {n:,} sequences in {where}; raise "
                    f"split.{self.split if self.split != 'train' else 'validation or test'} "
                    f"or use more data")
        if self._shard_by_hash and self.shard is not None:
            mask &= hash_mask(self._index.ids, self.shard)
        if self.shard is not None and not mask.any():
            raise DataError(
                f"input pipeline {self.shard.index} of {self.shard.count} gets none of the "
                f"{n:,} sequences it reads from {where}: there are too few sequences for "
                f"{self.shard.count} input pipelines. Use fewer workers or more data.")
        return mask

    def _batch_sizes(self, buckets: np.ndarray) -> np.ndarray:
        kept = self.windows.length[self._members]
        sizes = batch_sizes(kept, buckets, len(self.bucket_boundaries) + 1,
                            self.config.batching)
        budget = self.config.batching.max_timesteps
        if budget is not None and kept.max() > budget:
            longest = int(self._members[np.argmax(kept)])
            raise DataError(
                f"sequence {show_id(self._index.ids[longest])} keeps "
                f"{self.windows.length[longest]:,} timesteps, more than "
                f"batching.max_timesteps={budget:,}, so it fits in no batch. Raise "
                f"max_timesteps or set padding.maxlen to at most {budget:,}.")
        return sizes

    def _warn_changes(self, fills_only: bool = False) -> None:
        changes = [c for c in self.report.changes() if not fills_only or c.startswith("filled")]
        if changes:
            logger.warning("seqpipe %s; see Pipeline.report", "; ".join(changes))
        self._warn_unlabelled(name for name, (missing, total) in
                              (self.report.missing_labels or {}).items()
                              if total and missing == total)

    def _warn_unlabelled(self, outputs) -> None:
        """Says once per output that none of its labels is present: all its weights are 0."""
        for name in outputs:
            if name not in self._unlabelled:
                self._unlabelled.add(name)
                logger.warning(
                    "seqpipe: outputs.%s: every label in column %r is missing (null or NaN), "
                    "so every weight of that output is 0 and it teaches the model nothing. "
                    "Check the column, or drop the output.", name,
                    self.config.outputs[name].column)

    def _mean_valid_per_batch(self, output: str, plan: EpochPlan) -> float:
        if output not in self._valid_counts or not plan.batches:
            return 0.0
        total = self._valid_counts[output][np.concatenate(plan.batches)].sum()
        return float(total) / len(plan.batches)

    def _make_report(self, where: str, files: int) -> Report:
        index, members = self._index, self._members
        kept, lengths = self.windows.length[members], index.lengths[members]
        plan = self.plan(0)  # made and kept by __init__
        # For comparison: batches cut with no regard to length, as a plain shuffle makes them.
        size = int(self._batch_sizes(np.zeros(len(kept), dtype=np.int64))[0])
        order = (np.random.default_rng(0).permutation(len(kept))
                 if self.config.shuffle.buffer_size else np.arange(len(kept)))
        blind = [order[i:i + size] for i in range(0, len(kept), size)]
        return Report(
            source=where, files=files, rows=index.rows, sequences=len(lengths),
            timesteps=int(lengths.sum()),
            empty_sequences_dropped=index.empty_sequences_dropped,
            truncated_sequences=int((kept < lengths).sum()),
            truncated_timesteps=int((lengths - kept).sum()),
            filled_values=None,
            missing_labels=(missing_labels(index.present, self._in_part, index.lengths,
                                            self.config.levels) if index.present else None),
            bucket_boundaries=self.bucket_boundaries, batches_per_epoch=len(plan.batches),
            sequences_dropped_per_epoch=plan.dropped_sequences,
            padding_waste=padding_waste(self.windows.length, plan.batches),
            padding_waste_unbucketed=padding_waste(kept, blind), seed=self.seed,
            streamed=self._stream is not None, split=self.split,
            source_sequences=len(index.ids))


@dataclasses.dataclass(frozen=True)
class _Index:
    """What building keeps of every sequence: id, length and where its labels are present."""

    ids: np.ndarray
    offsets: np.ndarray
    present: Mapping[str, np.ndarray]
    rows: int
    empty_sequences_dropped: int

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of(cls, sequences: Sequences, rows: int, dropped: int) -> _Index:
        return cls(sequences.ids, sequences.offsets, sequences.present, rows, dropped)

    @classmethod
    def concat(cls, pieces: list, rows: int, dropped: int) -> _Index:
        lengths = np.concatenate([p.lengths for p in pieces])
        return cls(np.concatenate([p.ids for p in pieces]),
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   {name: np.concatenate([p.present[name] for p in pieces])
                    for name in pieces[0].present}, rows, dropped)


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



def _slices(sequences: Sequences, config: PipelineConfig) -> Iterator[tuple[int, Sequences]]:
    offsets = sequences.offsets
    cuts = np.unique(np.searchsorted(offsets, np.arange(0, offsets[-1],
                                                        tuning.TUNING.slice_timesteps)))
    cuts = np.append(cuts[cuts < len(sequences)], len(sequences))
    levels = config.levels
    for a, b in zip(cuts[:-1], cuts[1:]):
        t0, t1 = offsets[a], offsets[b]

        def cut(arrays, steps=slice(t0, t1), rows=slice(a, b)):
            return {name: values[steps if levels[name] == "timestep" else rows]
                    for name, values in arrays.items()}

        yield int(a), Sequences(sequences.ids[a:b], offsets[a:b + 1] - t0,
                                cut(sequences.features), cut(sequences.labels),
                                cut(sequences.present))


def valid_per_sequence(present: np.ndarray, level: str, windows: Windows) -> np.ndarray:
    """Present labels of one output inside each sequence's kept window."""
    if level == "sequence":
        return present.astype(np.int64)
    cumulative = np.concatenate([[0], np.cumsum(present, dtype=np.int64)])
    return cumulative[windows.start + windows.length] - cumulative[windows.start]
