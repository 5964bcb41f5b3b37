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
from collections.abc import Generator, Iterator, Mapping
from typing import Any, Optional, Union

import numpy as np

from seqpipe.assemble import Assembler, Block
from seqpipe.batching import (
    EpochPlan,
    auto_boundaries,
    batch_shapes,
    batch_sizes,
    bucket_of,
    in_multiples,
    padded_lengths,
    padding_waste,
    plan_epoch,
    truncate,
    unbucketed_waste,
)
from seqpipe.config import (
    BatchingConfig,
    PipelineConfig,
    ShuffleConfig,
    WindowsConfig,
    leaked_labels,
    load_config,
)
from seqpipe.errors import ConfigError, DataError
from seqpipe.index import SequenceSource, missing_labels, open_sequences
from seqpipe.report import Report, WindowCounts
from seqpipe.sequences import Sequences, show_id
from seqpipe.shard import Shard, hash_mask
from seqpipe.split import PARTS, check_part, part_of
from seqpipe.statistics import (
    Statistics,
    StatisticsLike,
    as_statistics,
    categorical_names,
    compute,
    needed,
)
from seqpipe.transform import Transform, changes_values
from seqpipe.windows import (
    WindowAssembler,
    Windows,
    batches_per_epoch,
    padded_history,
    part_windows,
    plan_blocks,
    valid_targets,
)

logger = logging.getLogger("seqpipe")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch: the Keras triple plus which sequences it holds.

    Attributes:
      x, y, sample_weight: the arrays `model.fit` takes, by input and output name.
      ids: the ids of the batch's sequences, in row order; rows past them (a batch padded
        to a fixed size) are empty.
      lengths: each sequence's real timesteps after truncation: row i's real values are
        `[:lengths[i]]` with `padding.side: post`, the last `lengths[i]` with `pre`. With
        windows, each window's sequence's timesteps.
      ends: with windows, the position of each window's last target in its sequence
        (its targets are the `horizon` positions up to it); None for whole sequences.
    """

    x: dict
    y: dict
    sample_weight: dict
    ids: np.ndarray
    lengths: np.ndarray
    ends: Optional[np.ndarray] = None  # windows: each row's last target position


def batch_structure(config: PipelineConfig) -> Any:
    """One batch's structure as plain data: `{"shape": [...], "dtype": ...}` leaves in the
    `(x, y, sample_weight)` tuple (x alone without outputs). No TensorFlow.

    Numeric inputs and labels are float32, categorical ones int32 ids without a last axis
    (inputs) or with one (labels, as Keras's sparse losses take them), the
    `padding.mask` input bool. With windows, the time axes are static: `windows.history`,
    or `windows.horizon` for future inputs and labels. With `batching.static_shapes`, the
    batch axis is `batch_size` (unless `max_timesteps` sizes batches per bucket), and
    the time axis of whole sequences is `padding.maxlen` when there is one bucket."""
    axes, batching = config.axes, config.batching
    static = batching.static_shapes and batching.max_timesteps is None
    rows = batching.batch_size if static else None

    def spec(name, tail, dtype="float32"):
        axis = axes[name]
        lead = [rows] if axis == "sequence" else [rows, config.steps(axis)]
        return {"shape": lead + list(tail), "dtype": dtype}

    x = {name: spec(name, s.tail, s.dtype) for name, s in config.inputs.items()}
    if config.padding.mask:
        x[config.padding.mask] = spec(config.padding.mask, (), "bool")
    if not config.outputs:
        return x
    y = {name: spec(name, (s.width,), s.dtype) for name, s in config.outputs.items()}
    weights = {name: spec(name, ()) for name in config.outputs}
    return x, y, weights


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
      statistics: `seqpipe.Statistics` to scale and encode with (saved from another run,
        say), the path of the file `Statistics.save` wrote, or its mapping; None computes
        them from the train part (see `seqpipe.statistics`).

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
                 shard: Optional[Shard] = None, same_shape_first: int = 0,
                 statistics: Optional[StatisticsLike] = None) -> None:
        config = config if isinstance(config, PipelineConfig) else load_config(config)
        _check_replicas(config, same_shape_first)
        self._build(config, open_sequences(config, data, shard), split, shard,
                    same_shape_first, statistics)

    @classmethod
    def from_source(cls, source: SequenceSource, split: Optional[str] = None, *,
                    config: Optional[PipelineConfig] = None, shard: Optional[Shard] = None,
                    same_shape_first: int = 0,
                    statistics: Optional[StatisticsLike] = None) -> Pipeline:
        """The pipeline of any `SequenceSource` (see `seqpipe.index`). `config` may change
        what the source's config leaves to batching (batch size, shuffle, weights)."""
        config = config or source.config
        _check_replicas(config, same_shape_first)
        pipeline = cls.__new__(cls)
        pipeline._build(config, source, split, shard, same_shape_first, statistics)
        return pipeline

    def _build(self, config: PipelineConfig, source: SequenceSource, split: Optional[str],
               shard: Optional[Shard], same_shape_first: int,
               statistics: Optional[StatisticsLike]) -> None:
        """Source -> index -> split and shard -> truncation and buckets -> statistics -> the
        first plan."""
        self.config, self.source, self.shard = config, source, shard
        self.same_shape_first = same_shape_first
        _warn_leaked_labels(self.config)
        self.split = check_part(split, self.config.split)
        # A streamed source counts filled values and missing labels while an epoch reads
        # it: the first epoch to finish hands its counts over here, once.
        self._epoch_counts: concurrent.futures.Future = concurrent.futures.Future()
        self._unlabelled: set[str] = set()  # outputs already said to have no label at all
        self._warn_unlabelled(source.unlabelled)
        self.kept_steps = truncate(source.index.offsets, self.config.padding)
        self._in_part = self._part_mask()
        self._windows: Optional[Windows] = None
        if config.windows is not None:
            self._windows, self._window_counts = self._cut_windows(self._in_part, self.split)
            self._in_part = np.zeros_like(self._in_part)
            self._in_part[self._windows.members] = True
        # Plans are made over the part's sequences alone (`_members` maps them back to the
        # source's index), so a part's batches do not depend on the other parts.
        self._members = np.flatnonzero(self._in_part)
        kept = self.kept_steps.length[self._members]
        static = config.batching.static_shapes and self._windows is None
        self.bucket_boundaries = (() if self._windows is not None else _boundaries(
            kept, config.batching, config.padding.maxlen if static else None))
        self._buckets = bucket_of(kept, self.bucket_boundaries)
        # static_shapes: the timesteps every batch of each bucket pads to.
        self._padded = (padded_lengths(self.bucket_boundaries, typing.cast(
            int, config.padding.maxlen)) if static else None)
        self._sizes = self._batch_sizes(self._buckets)
        self.seed = _seed(self.config.shuffle)
        self.statistics = self._statistics(statistics)
        self._transform = (Transform(config, self.statistics, self._skipped(), self._in_part)
                           if source.statistics is None and changes_values(config) else None)
        self._valid_counts = {name: self._valid_labels(name) for name in self.config.outputs
                              if self.config.weight_mode(name) == "global_mean"}
        self._first_plan: Optional[EpochPlan] = None
        if self._windows is None:
            self._first_plan = self.plan(0)
        elif same_shape_first > 1:
            self._check_window_replicas()
        self._report = self._make_report()
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
        and encode them (categorical columns as `sequences.Categories`). For a streamed
        source this reads it all into memory."""
        return self.source.sequences()

    def plan(self, epoch: int = 0) -> EpochPlan:
        """The batches of one epoch; the same (seed, epoch) always gives the same plan."""
        if epoch == 0 and self._first_plan is not None:
            return self._first_plan
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        plan = plan_epoch(self.kept_steps.length[self._members], self._buckets, self._sizes,
                          self.config.batching, self.config.shuffle, rng)
        if self.same_shape_first > 1:  # local replicas: every step a batch for each
            plan = in_multiples(plan, self.same_shape_first)
        if len(self._members) == len(self.kept_steps.length):
            return plan
        return dataclasses.replace(plan, batches=[self._members[b] for b in plan.batches])

    def blocks(self, epoch: int = 0) -> Iterator[Block]:
        """Yields the epoch's batches in assembly blocks: padded batches end to end."""
        chunks = self.chunks()  # a streamed source is read from now on, while we plan
        if self._windows is not None:
            yield from self._window_blocks(epoch, chunks)
            return
        plan = self.plan(epoch)
        mean_valid = {name: self._mean_valid_per_batch(name, plan)
                      for name in self.config.outputs}
        assembler = Assembler(self.config, plan, self.source.index.lengths,
                              self.kept_steps.length, mean_valid, self._shapes(plan),
                              self.same_shape_first)
        yield from assembler.blocks(chunks)

    def _shapes(self, plan: EpochPlan) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """With `static_shapes`, each batch's rows and timesteps: its bucket's."""
        if self._padded is None:
            return None
        bucket = np.zeros(len(self.kept_steps.length), dtype=np.int64)
        bucket[self._members] = self._buckets
        return batch_shapes(plan.batches, bucket, self._sizes, self._padded)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        """Yields the padded, weighted batches of one epoch."""
        ids, kept = self.source.index.ids, self.kept_steps.length
        for block in self.blocks(epoch):
            for j, members in enumerate(block.members):
                x, y, weights = block.batch_view(j, self.config)
                yield Batch(x, y, weights, ids[members], kept[members],
                            None if block.ends is None else block.ends[j])

    def _window_plan(self, epoch: int) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
        windows, batching = typing.cast(Windows, self._windows), self.config.batching
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        return plan_blocks(len(windows), batching.batch_size, self.config.shuffle.buffer_size,
                           rng, batching.drop_remainder, self.same_shape_first)

    def _check_window_replicas(self) -> None:
        """Plans epoch 0 up to its first batch of every replica, so that too few windows
        for the replicas is an error now rather than in the first epoch."""
        batches = 0
        for _, _, rows in self._window_plan(0):
            batches += len(rows)
            if batches >= self.same_shape_first:
                return

    def _window_blocks(self, epoch: int, chunks: Iterator[tuple[int, Sequences]]
                       ) -> Iterator[Block]:
        windows = typing.cast(Windows, self._windows)
        plan = self._window_plan(epoch)
        mean_valid = {name: self._mean_valid_per_batch(name, None)
                      for name in self.config.outputs}
        assembler = WindowAssembler(self.config, windows, plan, self.source.index.lengths,
                                    mean_valid)
        yield from assembler.blocks(chunks)

    def _cut_windows(self, in_part: np.ndarray,
                     part: Optional[str]) -> tuple[Windows, WindowCounts]:
        """The windows of a part (see `seqpipe.windows`), or a clear error when it has none."""
        index, config = self.source.index, self.config
        w = typing.cast(WindowsConfig, config.windows)
        windows, counts = part_windows(index.lengths, w, in_part, part, index.before_cutoff)
        if not len(windows):
            what = f"split {part!r} of " if part else ""
            cutoff = (f" with split.time_cutoff={config.split.time_cutoff!r}"
                      if config.split.time_cutoff is not None else "")
            raise DataError(
                f"no windows: {what}{self.source.where}{cutoff} has none of at least "
                f"windows.min_history + windows.horizon = {w.shortest + w.horizon} "
                f"timesteps ({int(in_part.sum()):,} sequences, the longest "
                f"{int(index.lengths[in_part].max(initial=0)):,} timesteps). Lower "
                f"windows.history, min_history or horizon, or use longer sequences.")
        batching = config.batching
        dropped = len(windows) % batching.batch_size if batching.drop_remainder else 0
        return windows, dataclasses.replace(counts, dropped_per_epoch=dropped)

    def chunks(self) -> Iterator[tuple[int, Sequences]]:
        """Every sequence of the source (all parts), grouped, in index order, a chunk at a
        time, with the index of the chunk's first sequence. Untruncated: `kept_steps` says
        which timesteps each sequence keeps. A streamed source's first row groups are read
        from the moment this is called."""
        return self._handing_over(self.source.chunks(self._in_part))

    def _handing_over(self, chunks: Generator[tuple[int, Sequences], None, Any]
                      ) -> Iterator[tuple[int, Sequences]]:
        unseen: collections.Counter = collections.Counter()
        counts = dict((yield from self._transformed(chunks, unseen)) or {})
        if self._transform is not None and categorical_names(self.config):
            counts["unseen_categories"] = dict(unseen)
        if counts:
            self._hand_over(counts)

    def _transformed(self, chunks: Generator[tuple[int, Sequences], None, Any],
                     unseen: collections.Counter) -> Generator[tuple[int, Sequences], None, Any]:
        """The chunks prepared for the model (`seqpipe.transform`), counting unseen
        categories; returns what the source's chunks return."""
        if self._transform is None:
            return (yield from chunks)
        while True:
            try:
                first, chunk = next(chunks)
            except StopIteration as end:
                return end.value
            chunk, found = self._transform.apply(first, chunk)
            unseen.update(found)
            yield first, chunk

    def _statistics(self, given: Optional[StatisticsLike]) -> Statistics:
        """The statistics this pipeline prepares its chunks with: the source's own (a
        materialized part), the given ones, or computed now in one pass over the train
        part (every sequence without a split), whichever part this pipeline reads."""
        source, config = self.source, self.config
        given = None if given is None else as_statistics(given)
        if source.statistics is not None:
            if given is not None and given != source.statistics:
                raise ConfigError(
                    f"{source.where} was written with its own statistics, and its records "
                    f"hold values prepared with them; statistics= cannot change them. Pass "
                    f"none, or materialize again with these statistics.")
            return source.statistics
        if given is not None:
            given.check(config)
            return given
        if not needed(config):
            return Statistics(computed_on="no sequences: the config scales no column and has "
                              "no categorical input or output")
        ids = source.index.ids
        counted = (part_of(ids, config.split) == PARTS.index("train") if config.split.enabled
                   else np.ones(len(ids), dtype=bool))
        what = "the train part" if config.split.enabled else "every sequence"
        skipped, kept = self._skipped(), self.kept_steps.length
        if config.windows is not None:  # the timesteps of the train part's windows
            train, _ = self._cut_windows(counted, "train" if config.split.enabled else None)
            skipped, kept = train.spans(len(ids))
            counted = kept > 0
            what = "the train part's windows" if config.split.enabled else "every window"
        if not counted.any():
            raise ConfigError(
                f"the statistics ({_scaled_and_encoded(config)}) would be computed from "
                f"{what} of {source.where}, which holds none: every value would be scaled "
                f"with mean 0 and std 1 and every category would become id 1. Pass the "
                f"training run's statistics (statistics=Statistics.load('stats.json'), saved "
                f"from Pipeline(config, split='train').statistics), or data that holds the "
                f"train part.")
        if source.shared and self.shard is not None:
            what += f" of input pipeline {self.shard.index} of {self.shard.count}'s share"
            logger.warning(
                "seqpipe: input pipeline %d computes statistics over its own share of the "
                "sequences; compute them once (Pipeline(config).statistics.save(path)) and "
                "pass statistics= to every pipeline to scale them all alike",
                self.shard.index)
        return compute(config, source.chunks(counted), skipped, kept, counted,
                       f"{what} of {source.where}")

    def _skipped(self) -> np.ndarray:
        """(n,) timesteps truncation cuts from the start of each sequence."""
        return self.kept_steps.start - self.source.index.offsets[:-1]

    def _hand_over(self, counts: Mapping[str, Any]) -> None:
        try:
            self._epoch_counts.set_result(dict(counts))
        except concurrent.futures.InvalidStateError:
            return  # another epoch finished first, with the same counts
        self._warn_changes(fills_only=True)  # the rest was said when building

    def _part_mask(self) -> np.ndarray:
        """(n,) True for the sequences of the part (and shard) this pipeline reads."""
        ids, where = self.source.index.ids, self.source.where
        mask = np.ones(len(ids), dtype=bool)
        if self.split is not None and self.config.split.by_id:  # a time split: by window
            mask = part_of(ids, self.config.split) == PARTS.index(self.split)
            if not mask.any():
                raise DataError(
                    f"split {self.split!r} holds none of the {len(ids):,} sequences in "
                    f"{where}; raise split."
                    f"{self.split if self.split != 'train' else 'validation or test'} "
                    f"or use more data")
        if self.shard is not None and not self.source.shared:
            mask &= hash_mask(ids, self.shard)
        if self.shard is not None and not mask.any():
            raise DataError(
                f"input pipeline {self.shard.index} of {self.shard.count} gets none of the "
                f"{len(ids):,} sequences it reads from {where}: there are too few sequences "
                f"for {self.shard.count} input pipelines. Use fewer workers or more data.")
        return mask

    def _batch_sizes(self, buckets: np.ndarray) -> np.ndarray:
        kept = self.kept_steps.length[self._members]
        sizes = batch_sizes(kept, buckets, len(self.bucket_boundaries) + 1,
                            self.config.batching, self._padded)
        budget = self.config.batching.max_timesteps
        if budget is not None and kept.max() > budget:
            longest = int(self._members[np.argmax(kept)])
            raise DataError(
                f"sequence {show_id(self.source.index.ids[longest])} keeps "
                f"{self.kept_steps.length[longest]:,} timesteps, more than "
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

    def _mean_valid_per_batch(self, output: str, plan: Optional[EpochPlan]) -> float:
        if output not in self._valid_counts:
            return 0.0
        if plan is None:  # windows: every epoch has the same windows
            return self._valid_counts[output] / max(self._window_batches(), 1)
        if not plan.batches:
            return 0.0
        total = self._valid_counts[output][np.concatenate(plan.batches)].sum()
        return float(total) / len(plan.batches)

    def _window_batches(self) -> int:
        batching = self.config.batching
        return batches_per_epoch(len(typing.cast(Windows, self._windows)),
                                 batching.batch_size, batching.drop_remainder,
                                 self.same_shape_first)

    def _valid_labels(self, output: str) -> Any:
        """For global_mean: present labels per sequence inside its kept timesteps; with
        windows, over every window's targets."""
        if self._windows is None:
            return self.source.valid_labels(output, self.kept_steps)
        index = self.source.index
        present = index.present.get(output)
        if present is None:  # a source that does not index labels: one pass reads them
            present = np.concatenate([chunk.present[output] for _, chunk
                                      in self.source.chunks(self._in_part)])
        return valid_targets(self._windows, present, index.offsets, self.config.levels[output])

    def _make_report(self) -> Report:
        index, source = self.source.index, self.source
        lengths = index.lengths[self._members]
        batching = self._window_fields() if self._windows is not None else self._bucket_fields()
        report = Report(
            source=source.where, files=source.file_count, rows=index.rows,
            sequences=len(lengths), timesteps=int(lengths.sum()),
            empty_sequences_dropped=index.empty_sequences_dropped, filled_values=None,
            missing_labels=(missing_labels(index.present, self._in_part, index.lengths,
                                           self.config.levels) if index.present else None),
            seed=self.seed, streamed=source.streamed, split=self.split,
            source_sequences=len(index.ids), statistics=self.statistics, **batching)
        return dataclasses.replace(report, **source.report_fields)

    def _bucket_fields(self) -> dict:
        """The report's truncation and batching figures for whole sequences."""
        members = self._members
        kept, lengths = self.kept_steps.length[members], self.source.index.lengths[members]
        plan = self.plan(0)  # made and kept by _build
        if not plan.batches:
            raise DataError(
                f"batching.drop_remainder leaves no batch: no bucket holds "
                f"batching.batch_size={self.config.batching.batch_size} of the "
                f"{len(members):,} sequences. Lower batch_size, use fewer buckets, "
                f"or set drop_remainder: false.")
        order = (np.random.default_rng(0).permutation(len(kept))
                 if self.config.shuffle.buffer_size else np.arange(len(kept)))
        maxlen = None if self._padded is None else int(self._padded[-1])
        shapes = self._shapes(plan)
        return dict(
            static_shapes=None if shapes is None else len(set(zip(*shapes))),
            truncated_sequences=int((kept < lengths).sum()),
            truncated_timesteps=int((lengths - kept).sum()),
            bucket_boundaries=self.bucket_boundaries, batches_per_epoch=len(plan.batches),
            sequences_dropped_per_epoch=plan.dropped_sequences,
            padding_waste=padding_waste(self.kept_steps.length, plan.batches, shapes),
            padding_waste_unbucketed=unbucketed_waste(kept, order, self.config.batching,
                                                      maxlen))

    def _window_fields(self) -> dict:
        """The report's batching figures for windows, and what cutting them did."""
        windows = typing.cast(Windows, self._windows)
        if not self._window_batches():
            raise DataError(
                f"batching.drop_remainder leaves no batch: the {len(windows):,} windows do "
                f"not fill one batch of batching.batch_size="
                f"{self.config.batching.batch_size}. Lower batch_size or set "
                f"drop_remainder: false.")
        history, batching = typing.cast(WindowsConfig, self.config.windows).history, \
            self.config.batching
        static = batching.static_shapes and not batching.drop_remainder
        # static shapes: the empty rows of the last batch (or of halved ones) count too.
        rows = self._window_batches() * batching.batch_size if static else len(windows)
        waste = 1 - (len(windows) * history - padded_history(windows)) / (rows * history)
        return dict(truncated_sequences=0, truncated_timesteps=0, bucket_boundaries=(),
                    batches_per_epoch=self._window_batches(), sequences_dropped_per_epoch=0,
                    padding_waste=waste, padding_waste_unbucketed=waste,
                    windows=self._window_counts,
                    static_shapes=1 if self.config.batching.static_shapes else None)


def _check_replicas(config: PipelineConfig, same_shape_first: int) -> None:
    if same_shape_first and config.padding.maxlen is None and config.windows is None:
        raise ConfigError(
            "training on several replicas needs padding.maxlen: Keras 3 averages the "
            "first batch of every replica to build the model, so seqpipe pads those to "
            "batch_size x maxlen. Set padding.maxlen (the longest sequence you keep).")


def _warn_leaked_labels(config: PipelineConfig) -> None:
    for name in leaked_labels(config):
        logger.warning(
            "seqpipe: outputs.%s.column %r also feeds an input (outputs.%s.also_input: "
            "true): the model sees the labels it predicts", name,
            config.outputs[name].column, name)


def _boundaries(kept: np.ndarray, batching: BatchingConfig,
                last: Optional[int]) -> tuple[int, ...]:
    if batching.bucket_boundaries == "auto":
        return auto_boundaries(kept, last, batching.batch_size if last else 0)
    return tuple(batching.bucket_boundaries or ())


def _seed(shuffle: ShuffleConfig) -> Optional[int]:
    """The configured seed; a fresh one when shuffling without one."""
    if shuffle.seed is None and shuffle.buffer_size:
        return int(typing.cast(int, np.random.SeedSequence().entropy) % 2**31)
    return shuffle.seed


def _scaled_and_encoded(config: PipelineConfig) -> str:
    """What the statistics are for, in the config's keys."""
    scaled = [f"inputs.{name}.normalize" for name, spec in config.inputs.items()
              if spec.normalize]
    return ", ".join(scaled + [f"the vocabulary of {name}" for name in categorical_names(config)])
