"""Pipeline: source -> sequences -> truncation and buckets -> padded, weighted NumPy batches.

Everything up to the finished `(x, y, sample_weight)` batch happens here in NumPy, without
TensorFlow. Building reads the index (every sequence's id and length); each epoch plans its
batches from the index and assembles them as the source streams in. `seqpipe.dataset` wraps
this in tf.data.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import typing
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any, Optional, Union

import numpy as np

from seqpipe.batches.accumulate import accumulated
from seqpipe.batches.assembler import skipping
from seqpipe.batches.block import Batch, Block
from seqpipe.batches.kind import BatchKind
from seqpipe.batches.kinds import kind_of
from seqpipe.config import PipelineConfig, ShuffleConfig, leaked_labels, load_config
from seqpipe.errors import ConfigError
from seqpipe.index import SequenceSource, missing_labels, open_sequences, truncate
from seqpipe.lockstep import Lockstep, parts
from seqpipe.memory import MB, Memory, describe, prepared_bytes
from seqpipe.parquet.sequences import Sequences
from seqpipe.report import Report
from seqpipe.scaling import Scales, columns_of, dataset_scales, per_series
from seqpipe.split import PARTS, check_part, held_back, part_mask, parts_of
from seqpipe.statistics import (
    Statistics,
    StatisticsLike,
    categorical_names,
    choose,
    compute,
    nothing_to_count,
)
from seqpipe.transform import Transform, changes_values

logger = logging.getLogger("seqpipe")


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where a dataset's first pass starts: batch `batch` (0-based) of epoch `epoch`."""

    epoch: int
    batch: int

    def start(self, epoch: int) -> int:
        """The first batch a pass over `epoch` reads."""
        return self.batch if epoch == self.epoch else 0


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
      lockstep: `seqpipe.lockstep.Lockstep`: make this process's (and its replicas') parts
        of every global batch of `batching.batch_size`; None: the whole batches.
      statistics: `seqpipe.Statistics` to scale and encode with (saved from another run,
        say), the path of the file `Statistics.save` wrote, or its mapping; None computes
        them from the train part (see `seqpipe.statistics`).

    Attributes:
      kind: the kind of batch it makes (`seqpipe.experimental.BatchKind`: whole sequences
        or windows), planned over its part.
      report, statistics, kept_steps, seed: see each.

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
                 data: Any = None, split: Optional[str] = None, *,
                 lockstep: Optional[Lockstep] = None,
                 statistics: Optional[StatisticsLike] = None) -> None:
        config = config if isinstance(config, PipelineConfig) else load_config(config)
        self._build(config, open_sequences(config, data), split, lockstep, statistics)

    @classmethod
    def from_source(cls, source: SequenceSource, split: Optional[str] = None, *,
                    config: Optional[PipelineConfig] = None,
                    lockstep: Optional[Lockstep] = None,
                    statistics: Optional[StatisticsLike] = None) -> Pipeline:
        """The pipeline of any `SequenceSource` (see `seqpipe.index`). `config` may change
        what the source's config leaves to batching (batch size, shuffle, weights)."""
        config = config or source.config
        pipeline = cls.__new__(cls)
        pipeline._build(config, source, split, lockstep, statistics)
        return pipeline

    def _build(self, config: PipelineConfig, source: SequenceSource, split: Optional[str],
               lockstep: Optional[Lockstep], statistics: Optional[StatisticsLike]) -> None:
        """Source -> index -> split -> truncation -> the kind of batch, planned over the
        part's global batches -> statistics -> the report."""
        kind = kind_of(config)
        self.lockstep = lockstep or Lockstep()
        # The kind plans global batches; this pipeline hands on its parts of them, whose
        # config (what outputs describe their batches by) has the part's batch_size.
        self.config, self.source = self.lockstep.local(config), source
        _warn_leaked_labels(self.config)
        self.split = check_part(split, self.config.split)
        # A streamed source counts filled values and missing labels while an epoch reads
        # it: the first epoch to finish hands its counts over here, once.
        self._epoch_counts: concurrent.futures.Future = concurrent.futures.Future()
        self._unlabelled: set[str] = set()  # outputs already said to have no label at all
        self._warn_unlabelled(source.unlabelled)
        self.kept_steps = truncate(source.index.offsets, self.config.padding)
        self.seed = _seed(self.config.shuffle)
        in_part = part_mask(source.index.ids, source.where, config.split, self.split,
                            source.index.parts)
        self.kind: BatchKind = kind(config, source, self.kept_steps, in_part, self.split,
                                    self.seed, self.lockstep.slices)
        self._in_part = np.zeros(len(source.index.ids), dtype=bool)
        self._in_part[self.kind.members] = True
        self.statistics = self._statistics(statistics)
        self._transform = (Transform(config, self.statistics, self._skipped(), self._in_part,
                                     self._own_spans())
                           if source.statistics is None and changes_values(config) else None)
        self._report = self._make_report()
        index = source.index
        self._memory = Memory(config.source.memory_mb * MB,
                              prepared_bytes(config, int(index.offsets[-1]), len(index.ids)),
                              source.where)
        logger.info("seqpipe pipeline ready:\n%s", self.report)
        self._warn_changes()

    @property
    def report(self) -> Report:
        """What was read, kept, dropped and filled; see `Report`."""
        if not self._epoch_counts.done():
            return self._report
        return dataclasses.replace(self._report, **self._epoch_counts.result())

    @property
    def sequences(self) -> Sequences:
        """All sequences, grouped whole, as the source holds them: before `statistics` scale
        and encode them (categorical columns as `sequences.Categories`), each numeric input
        as one `(timesteps, k)` or `(sequences, k)` matrix. For a streamed source this reads
        it all into memory."""
        return self.source.sequences().with_matrices()

    def blocks(self, epoch: int = 0, start: int = 0) -> Iterator[Block]:
        """Yields the epoch's batches in assembly blocks: padded batches end to end. From
        its batch `start` on (0-based): the same batches as an epoch read from its start
        yields there, made without making the ones before (only the sequences from the
        block that holds batch `start` on are read).

        The kind makes global batches; each run of `batching.accumulation_steps` of them
        is weighed as one (`batches.accumulate`), and this pipeline's parts of each are
        handed on (`seqpipe.lockstep`)."""
        count = self.report.batches_per_epoch
        if not 0 <= start < max(count, 1):
            raise ConfigError(f"resume: batch {start} is not a batch of the epoch, which has "
                              f"{count:,} (0 to {count - 1:,}); pass a batch from 0 to "
                              f"{count - 1:,}, or the next epoch with batch 0")
        steps = self.config.batching.accumulation_steps
        first = start // self.lockstep.replicas // steps * steps  # where its run starts
        logger.info("seqpipe: epoch %d %s", epoch, describe(self._memory))
        if first:
            made = self.kind.blocks(epoch, self.chunks, first)
        else:
            chunks = self.chunks()  # a whole epoch: reading starts now, while the kind plans
            made = self.kind.blocks(epoch, lambda needed: chunks)
        weighed = accumulated(made, steps, self.config, self.kind.units)
        return skipping(parts(weighed, self.lockstep),
                        start - first * self.lockstep.replicas)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yields the padded, weighted batches of one epoch, from its batch `start` on (see
        `blocks`)."""
        ids, kept = self.source.index.ids, self.kept_steps.length
        for block in self.blocks(epoch, start):
            for j in range(len(block.members)):
                yield block.batch(j, self.config, ids, kept)

    def chunks(self, needed: Optional[np.ndarray] = None) -> Iterable[tuple[int, Sequences]]:
        """Every sequence of the source (all parts), grouped, in index order, a chunk at a
        time, with the index of the chunk's first sequence. Untruncated: `kept_steps` says
        which timesteps each sequence keeps. A streamed source's first row groups are read
        from the moment this is called. `needed`: (n,) bool, read only the pieces of the
        source that hold these sequences (an epoch resumed part way); its chunks then
        count nothing for the report. Once an epoch kept the prepared chunks in memory
        (`seqpipe.memory`), they come from there."""
        if self._memory.kept is not None:
            return self._memory.chunks(needed)
        if needed is None:
            return self._memory.keeping(self._handing_over(self.source.chunks(self._in_part)))
        chunks = self.source.chunks(self._in_part, needed & self._in_part)
        return chunks if self._transform is None else self._transform.stream(
            chunks, collections.defaultdict(collections.Counter))

    def _handing_over(self, chunks: Generator[tuple[int, Sequences], None, Any]
                      ) -> Generator[tuple[int, Sequences], None, None]:
        changed: dict = collections.defaultdict(collections.Counter)
        prepared = (chunks if self._transform is None
                    else self._transform.stream(chunks, changed))
        counts = dict((yield from prepared) or {})
        if self._transform is not None and categorical_names(self.config):
            counts["unseen_categories"] = dict(changed["unseen_categories"])
        if self._transform is not None and any(map(per_series, self._scaled())):
            counts["unscaled_series"] = dict(changed["unscaled_series"])
        if counts:
            self._hand_over(counts)

    def _statistics(self, given: Optional[StatisticsLike]) -> Statistics:
        """The statistics this pipeline prepares its chunks with: the source's own (a
        materialized part), the given ones, or computed now in one pass over the train
        part (every sequence without a split), whichever part this pipeline reads."""
        source, config = self.source, self.config
        chosen = choose(config, given, source.statistics, source.where)
        if chosen is not None:
            return chosen
        ids = source.index.ids
        train = (parts_of(config.split, ids, source.index.parts) == PARTS.index("train")
                 if config.split.enabled
                 else np.ones(len(ids), dtype=bool))
        steps = self.kind.counted(config, source.index.offsets, train,
                                  held_back(config.split, source.index.lengths,
                                            source.index.before_cutoff))
        counted, what = steps.counted, self.kind.statistics_over(config)
        if not counted.any():
            raise nothing_to_count(config, f"{what} of {source.where}")
        return compute(config, source.chunks(counted), steps.skipped, steps.length, counted,
                       f"{what} of {source.where}")

    def scales(self, name: str) -> Scales:
        """How input or output `name` was scaled (see `seqpipe.scaling`): per dataset one
        shift and divisor per column; per series one per column and sequence of the source's
        index (read in one pass over this pipeline's part; 0 and 1 elsewhere), so that
        `seqpipe.predict` can put predictions back in the data's units.

        Raises:
          ConfigError: `name` is not scaled, or its values were scaled per series before
            they were stored (a materialized source), so their scales are not known here.
        """
        spec = self.config.inputs.get(name) or self.config.outputs.get(name)
        if spec is None or not spec.scaling:
            raise ConfigError(f"{name!r} is not a scaled input or output of this config")
        if spec.scaling.per == "window":
            raise ConfigError(f"{name!r} is scaled per window: each batch carries its "
                              f"windows' scales (Batch.scales)")
        if not per_series(spec):
            return dataset_scales(name, spec, self.statistics)
        if self._transform is None:
            raise ConfigError(
                f"{self.source.where} holds {name!r} already scaled per series, and the "
                f"scales of each series are not stored with it; read the Parquet source "
                f"with the same config instead (seqpipe.predict(model, 'config.yaml', "
                f"...)) to get predictions in the data's units.")
        n = len(self.source.index.ids)
        width = len(columns_of(spec))
        shift, divisor = np.zeros((width, n)), np.ones((width, n))
        for first, chunk in self.source.chunks(self._in_part):
            index = np.arange(first, first + len(chunk))
            found = self._transform.scales(name, chunk, index)
            shift[:, index], divisor[:, index] = found.shift, found.divisor
        return Scales(tuple(shift), tuple(divisor), np.zeros(n, dtype=bool))

    def _scaled(self) -> list:
        return [spec for specs in (self.config.inputs, self.config.outputs)
                for spec in specs.values() if spec.scaling]

    def _own_spans(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """For scaling per series: the timesteps each sequence's own statistics come from,
        those a batch of the train part would hold of it (every sequence counted as if in
        it: a validation series by id has only its own)."""
        if not any(map(per_series, self._scaled())):
            return None
        index = self.source.index
        spans = self.kind.counted(self.config, index.offsets,
                                  np.ones(len(index.ids), dtype=bool),
                                  held_back(self.config.split, index.lengths,
                                            index.before_cutoff))
        return spans.skipped, spans.length

    def _skipped(self) -> np.ndarray:
        """(n,) timesteps truncation cuts from the start of each sequence."""
        return self.kept_steps.start - self.source.index.offsets[:-1]

    def _hand_over(self, counts: Mapping[str, Any]) -> None:
        try:
            self._epoch_counts.set_result(dict(counts))
        except concurrent.futures.InvalidStateError:
            return  # another epoch finished first, with the same counts
        self._warn_changes(while_reading=True)  # the rest was said when building

    def _warn_changes(self, while_reading: bool = False) -> None:
        """Logs what seqpipe changed; `while_reading`: only what an epoch counts as it reads
        (filled values, series kept unscaled)."""
        changes = [c for c in self.report.changes()
                   if not while_reading or c.startswith(("filled", "kept"))]
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

    def _make_report(self) -> Report:
        index, source = self.source.index, self.source
        lengths = index.lengths[self.kind.members]
        report = Report(
            source=source.where, files=source.file_count, rows=index.rows,
            sequences=len(lengths), timesteps=int(lengths.sum()),
            empty_sequences_dropped=index.empty_sequences_dropped, filled_values=None,
            missing_labels=(missing_labels(index.present, self._in_part, index.lengths,
                                           self.config.levels) if index.present else None),
            seed=self.seed, streamed=source.streamed, split=self.split,
            source_sequences=len(index.ids), statistics=self.statistics,
            **self.kind.report_fields())
        lockstep = self.lockstep
        if lockstep.slices > 1:  # this pipeline's parts of every global batch
            report = dataclasses.replace(
                report, batches_per_epoch=report.batches_per_epoch * lockstep.replicas,
                lockstep=(f"process {lockstep.process} of {lockstep.processes}, "
                          f"{lockstep.replicas} replica{'s' if lockstep.replicas > 1 else ''}"
                          f": parts {lockstep.first} to "
                          f"{lockstep.first + lockstep.replicas - 1} of {lockstep.slices} of "
                          f"every global batch of {self.kind.config.batching.batch_size}, "
                          f"{report.batches_per_epoch:,} global batches per epoch"))
        return dataclasses.replace(report, **source.report_fields)


def _warn_leaked_labels(config: PipelineConfig) -> None:
    for name in leaked_labels(config):
        logger.warning(
            "seqpipe: outputs.%s.column %r also feeds an input (outputs.%s.also_input: "
            "true): the model sees the labels it predicts", name,
            config.outputs[name].column, name)


def _seed(shuffle: ShuffleConfig) -> Optional[int]:
    """The configured seed; a fresh one when shuffling without one."""
    if shuffle.seed is None and shuffle.buffer_size:
        return int(typing.cast(int, np.random.SeedSequence().entropy) % 2**31)
    return shuffle.seed
