"""Whole sequences: one sequence per batch row, truncated, sorted into buckets by length,
padded to the longest of its batch (or, with `static_shapes`, to its bucket's length).

An epoch's plan (`seqpipe.batches.buckets`) says where every kept timestep lands: batch,
row and column. The batches of one assembly block lie end to end in flat arrays (one per
input and output), so a chunk of sequences, as it arrives from the source, is copied into
them run by run (`seqpipe._internal.runs`): each timestep is read once and written once,
and no batch is copied again. A block goes out when its last sequence has arrived; until
then only the chunk in hand and the blocks being filled are in memory.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

import numpy as np

from seqpipe import tuning
from seqpipe._internal.buffers import ALIGNMENT, SHARED, BufferPool
from seqpipe.batches.block import Batch, BatchPlaces, Block, pad_at, put_per_sequence, weigh
from seqpipe.batches.buckets import (
    EpochPlan,
    auto_boundaries,
    batch_shapes,
    batch_sizes,
    bucket_of,
    in_multiples,
    padded_lengths,
    padding_waste,
    plan_epoch,
    unbucketed_waste,
)
from seqpipe.batches.kind import BatchKind, BatchSpec, Counted, Padding, Preview, Targets
from seqpipe.config import BatchingConfig, PipelineConfig
from seqpipe.errors import ConfigError, DataError
from seqpipe.index import KeptSteps, SequenceSource, truncate
from seqpipe.sequences import Sequences, offsets_of, ranges, show_id


class WholeSequences(BatchKind):
    """Each batch row holds one whole sequence (truncated to `padding.maxlen`)."""

    name = "whole sequences"

    def __init__(self, config: PipelineConfig, source: SequenceSource, kept: KeptSteps,
                 in_part: np.ndarray, part: Optional[str], seed: Optional[int],
                 same_shape_first: int) -> None:
        super().__init__(config, source, kept, in_part, part, seed, same_shape_first)
        # Plans are made over the part's sequences alone (`members` maps them back to the
        # source's index), so a part's batches do not depend on the other parts.
        self._members = np.flatnonzero(in_part)
        lengths = kept.length[self._members]
        batching, static = config.batching, config.batching.static_shapes
        self.bucket_boundaries = _boundaries(lengths, batching,
                                             config.padding.maxlen if static else None)
        self._buckets = bucket_of(lengths, self.bucket_boundaries)
        # static_shapes: the timesteps every batch of each bucket pads to.
        self._padded = (padded_lengths(self.bucket_boundaries, typing.cast(
            int, config.padding.maxlen)) if static else None)
        self._sizes = self._batch_sizes()
        self._valid = {name: source.valid_labels(name, kept) for name in config.outputs
                       if config.weight_mode(name) == "global_mean"}
        self._first_plan: Optional[EpochPlan] = None
        self._first_plan = self.plan(0)

    @classmethod
    def applies(cls, config: PipelineConfig) -> bool:
        return True  # the default: the kinds before it in `kinds.KINDS` did not apply

    @classmethod
    def spec(cls, config: PipelineConfig) -> BatchSpec:
        """With `static_shapes`, every batch has `batch_size` rows (unless `max_timesteps`
        sizes batches per bucket) and, over one bucket, `padding.maxlen` timesteps."""
        batching = config.batching
        axes = dict(config.levels)
        if config.padding.mask:
            axes[config.padding.mask] = "timestep"
        one_bucket = batching.static_shapes and not batching.bucket_boundaries
        rows = (batching.batch_size if batching.static_shapes and batching.max_timesteps is None
                else None)
        return BatchSpec(axes, {"timestep": config.padding.maxlen if one_bucket else None},
                         rows)

    @classmethod
    def counted(cls, config: PipelineConfig, offsets: np.ndarray, counted: np.ndarray,
                before: Optional[np.ndarray]) -> Counted:
        kept = truncate(offsets, config.padding)
        return Counted(kept.start - offsets[:-1], kept.length, counted)

    @classmethod
    def statistics_over(cls, config: PipelineConfig) -> str:
        return "the train part" if config.split.enabled else "every sequence"

    @classmethod
    def preview(cls, config: PipelineConfig, lengths: np.ndarray, ids: Any,
                before: Optional[np.ndarray], from_file: bool) -> Preview:
        """The padding waste of batches cut blindly, of the config's bucket boundaries and
        of `auto`'s, planned as an epoch is."""
        batching, shuffle = config.batching, config.shuffle
        kept = truncate(offsets_of(lengths), config.padding).length
        rng = np.random.default_rng(shuffle.seed if shuffle.seed is not None else 0)
        maxlen = config.padding.maxlen if batching.static_shapes else None
        found = [Padding("no buckets, batches cut in random order", None,
                         unbucketed_waste(kept, rng.permutation(len(kept)), batching, maxlen))]
        configured = batching.bucket_boundaries
        if configured != "auto" and from_file:
            boundaries = tuple(configured or ())
            found.append(Padding(f"the config's bucket_boundaries ({list(boundaries) or 'null'})",
                                 boundaries, _waste(kept, boundaries, config, rng)))
        auto = auto_boundaries(kept, maxlen, batching.batch_size if maxlen else 0)
        found.append(Padding(f"auto{' (the config)' if configured == 'auto' else ''}: "
                             f"{list(auto)}", auto, _waste(kept, auto, config, rng)))
        order = (f"sorted by length within shuffle buffers of {shuffle.buffer_size:,}"
                 if shuffle.buffer_size else "no shuffle: buckets fill in id order")
        static = (", static shapes (each bucket's batches padded to its boundary and full)"
                  if batching.static_shapes else "")
        maxlen_text = "" if config.padding.maxlen is None else f", maxlen {config.padding.maxlen}"
        lines = [f"padding waste (padded / all timesteps), batch_size {batching.batch_size}"
                 f"{maxlen_text}{static}, {order}:"]
        lines += [f"  {p.waste:6.1%}  {p.label}" for p in found]
        return Preview(tuple(lines), tuple(found))

    @classmethod
    def check(cls, config: PipelineConfig, same_shape_first: int) -> None:
        if same_shape_first and config.padding.maxlen is None:
            raise ConfigError(
                "training on several replicas needs padding.maxlen: Keras 3 averages the "
                "first batch of every replica to build the model, so seqpipe pads those to "
                "batch_size x maxlen. Set padding.maxlen (the longest sequence you keep).")

    @property
    def members(self) -> np.ndarray:
        return self._members

    def plan(self, epoch: int) -> EpochPlan:
        """The batches of one epoch; the same (seed, epoch) always gives the same plan."""
        if epoch == 0 and self._first_plan is not None:
            return self._first_plan
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        plan = plan_epoch(self.kept.length[self._members], self._buckets, self._sizes,
                          self.config.batching, self.config.shuffle, rng)
        if self.same_shape_first > 1:  # local replicas: every step a batch for each
            plan = in_multiples(plan, self.same_shape_first)
        return EpochPlan([self._members[b] for b in plan.batches], plan.blocks,
                         plan.dropped_sequences)

    def batches_per_epoch(self) -> int:
        return len(self.plan(0).batches)

    def blocks(self, epoch: int, chunks: Iterator[tuple[int, Sequences]]) -> Iterator[Block]:
        plan = self.plan(epoch)
        mean_valid = {name: self._mean_valid(name, plan) for name in self.config.outputs}
        assembler = Assembler(self.config, self.spec(self.config), plan,
                              self.source.index.lengths, self.kept.length, mean_valid,
                              self._shapes(plan), self.same_shape_first)
        yield from assembler.blocks(chunks)

    def _mean_valid(self, output: str, plan: EpochPlan) -> float:
        """global_mean: the present labels per batch over the epoch."""
        if output not in self._valid or not plan.batches:
            return 0.0
        return float(self._valid[output][np.concatenate(plan.batches)].sum()) / len(
            plan.batches)

    def _shapes(self, plan: EpochPlan) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """With `static_shapes`, each batch's rows and timesteps: its bucket's."""
        if self._padded is None:
            return None
        bucket = np.zeros(len(self.kept.length), dtype=np.int64)
        bucket[self._members] = self._buckets
        return batch_shapes(plan.batches, bucket, self._sizes, self._padded)

    def _batch_sizes(self) -> np.ndarray:
        kept = self.kept.length[self._members]
        sizes = batch_sizes(kept, self._buckets, len(self.bucket_boundaries) + 1,
                            self.config.batching, self._padded)
        budget = self.config.batching.max_timesteps
        if budget is not None and kept.max() > budget:
            longest = int(self._members[np.argmax(kept)])
            raise DataError(
                f"sequence {show_id(self.source.index.ids[longest])} keeps "
                f"{self.kept.length[longest]:,} timesteps, more than "
                f"batching.max_timesteps={budget:,}, so it fits in no batch. Raise "
                f"max_timesteps or set padding.maxlen to at most {budget:,}.")
        return sizes

    def report_fields(self) -> dict[str, Any]:
        """Truncation, buckets and padding waste."""
        members, batching = self._members, self.config.batching
        kept, lengths = self.kept.length[members], self.source.index.lengths[members]
        plan = self.plan(0)
        if not plan.batches:
            raise DataError(
                f"batching.drop_remainder leaves no batch: no bucket holds "
                f"batching.batch_size={batching.batch_size} of the {len(members):,} "
                f"sequences. Lower batch_size, use fewer buckets, or set drop_remainder: "
                f"false.")
        order = (np.random.default_rng(0).permutation(len(kept))
                 if self.config.shuffle.buffer_size else np.arange(len(kept)))
        maxlen = None if self._padded is None else int(self._padded[-1])
        shapes = self._shapes(plan)
        truncated = (int((kept < lengths).sum()), int((lengths - kept).sum()))
        waste = padding_waste(self.kept.length, plan.batches, shapes)
        unbucketed = unbucketed_waste(kept, order, batching, maxlen)
        static = ("" if shapes is None else
                  f", static shapes: {len(set(zip(*shapes)))} per epoch")
        line = (f"batches per epoch: {len(plan.batches):,}, bucket boundaries: "
                f"{list(self.bucket_boundaries) or 'none'}, padding waste: {waste:.1%} "
                f"(without buckets: {unbucketed:.1%}){static}")
        return dict(
            static_shapes=None if shapes is None else len(set(zip(*shapes))),
            truncated_sequences=truncated[0], truncated_timesteps=truncated[1],
            bucket_boundaries=self.bucket_boundaries, batches_per_epoch=len(plan.batches),
            sequences_dropped_per_epoch=plan.dropped_sequences, padding_waste=waste,
            padding_waste_unbucketed=unbucketed, batching=(line,))

    def targets(self, batch: Batch, level: str, steps: int) -> Targets:
        """Every real timestep of the batch's sequences (each sequence, per-sequence):
        the time there, or `step`, its place among the kept timesteps."""
        n = len(batch.ids)
        sequence = np.searchsorted(self.source.index.ids, batch.ids)  # ids are ascending
        if level == "sequence":
            return Targets(np.arange(n), None, sequence, {})
        lead = steps - batch.lengths if self.config.padding.side == "pre" else np.zeros(
            n, np.int64)
        rows = np.repeat(np.arange(n), batch.lengths)
        step = ranges(np.zeros(n, np.int64), batch.lengths)
        time = self.config.source.time_column
        skipped = (self.kept.start - self.source.index.offsets[:-1])[sequence]
        positions = ({time: step + skipped[rows]} if time else {"step": step})
        return Targets(rows, step + lead[rows], sequence[rows], positions)


def _waste(kept: np.ndarray, boundaries: tuple, config: PipelineConfig, rng) -> float:
    buckets = bucket_of(kept, boundaries)
    maxlen = config.padding.maxlen if config.batching.static_shapes else None
    padded = None if maxlen is None else padded_lengths(boundaries, maxlen)
    sizes = batch_sizes(kept, buckets, len(boundaries) + 1, config.batching, padded)
    shuffled = rng if config.shuffle.buffer_size else None
    plan = plan_epoch(kept, buckets, sizes, config.batching, config.shuffle, shuffled)
    shapes = None if padded is None else batch_shapes(plan.batches, buckets, sizes, padded)
    return padding_waste(kept, plan.batches, shapes)


def _boundaries(kept: np.ndarray, batching: BatchingConfig,
                last: Optional[int]) -> tuple[int, ...]:
    if batching.bucket_boundaries == "auto":
        return auto_boundaries(kept, last, batching.batch_size if last else 0)
    return tuple(batching.bucket_boundaries or ())


class Assembler:
    """Turns chunks of sequences, in source order, into the planned epoch's blocks.

    Args:
      config: the pipeline config.
      spec: its batch spec (`WholeSequences.spec`).
      plan: the epoch's plan.
      lengths: (n,) every sequence's timesteps before truncation.
      kept: (n,) timesteps kept by truncation.
      mean_valid: output -> valid labels per batch over the epoch (for global_mean).
      shapes: each batch's rows and timesteps (`batching.static_shapes`), instead of its
        sequences and their longest; rows past the sequences are left empty (all padding,
        weight 0).
      same_shape_first: pad the epoch's first this many batches to `batching.batch_size`
        rows of `padding.maxlen` timesteps, rows past their sequences left empty (all
        padding, weight 0). For several replicas: Keras 3 averages the first batch of every
        replica to build the model, which needs them all the same shape.
      buffers: where the blocks' arrays come from: by default the process's pool, so that
        an epoch reuses the memory of the batches the last one is done with.
    """

    def __init__(self, config: PipelineConfig, spec: BatchSpec, plan: EpochPlan,
                 lengths: np.ndarray,
                 kept: np.ndarray, mean_valid: Mapping[str, float],
                 shapes: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 same_shape_first: int = 0, buffers: BufferPool = SHARED) -> None:
        self.config, self.plan, self.mean_valid = config, plan, mean_valid
        self.axes = spec.axes
        self.buffers = buffers
        self.lengths, self.kept = lengths, kept
        counts = np.array([len(b) for b in plan.batches], dtype=np.int64)
        members = np.concatenate(plan.batches) if plan.batches else np.empty(0, np.int64)
        first = np.cumsum(counts) - counts
        steps = (np.maximum.reduceat(kept[members], first) if len(members)
                 else np.empty(0, np.int64))
        sizes = counts.copy()  # rows of each batch: its sequences, and empty rows
        if shapes is not None:
            sizes, steps = shapes[0].astype(np.int64), shapes[1].astype(np.int64)
        if same_shape_first:
            sizes[:same_shape_first] = config.batching.batch_size
            steps[:same_shape_first] = config.padding.maxlen or 0  # required with replicas
        batch_rows = np.repeat(np.arange(len(counts)), counts)
        row = np.arange(len(members)) - first[batch_rows]
        # Every batch starts on an ALIGNMENT-byte boundary of each flat array: TensorFlow's
        # slice hands an aligned batch on as a view, and copies one that is not.
        t0 = _exclusive_cumsum_within(_aligned_rows(sizes * steps), plan.blocks)
        s0 = _exclusive_cumsum_within(_aligned_rows(sizes), plan.blocks)
        every = BatchPlaces({"timestep": t0, "sequence": s0}, sizes, {"timestep": steps})
        self.places = [every.select(plan.blocks == g)
                       for g in range(int(plan.blocks.max()) + 1 if len(sizes) else 0)]
        n = len(lengths)
        self.block_of = np.full(n, -1, dtype=np.int64)
        self.block_of[members] = plan.blocks[batch_rows]
        lead = steps[batch_rows] - kept[members] if config.padding.side == "pre" else 0
        self.time_dest = np.zeros(n, dtype=np.int64)
        self.time_dest[members] = t0[batch_rows] + row * steps[batch_rows] + lead
        self.sequence_dest = np.zeros(n, dtype=np.int64)
        self.sequence_dest[members] = s0[batch_rows] + row
        self.skip = lengths - kept if config.padding.truncating == "pre" else np.zeros_like(
            lengths)
        self.members_per_block = np.bincount(self.block_of[members],
                                             minlength=len(self.places))
        self._batch_blocks = [np.flatnonzero(plan.blocks == g) for g in range(len(self.places))]
        # A block's store is allocated once the stream reaches its first members, past the
        # few (`Tuning.parked_share`) that come much earlier: sequences that waited several
        # shuffle buffers for a batch of their bucket to fill. Those are parked unpadded until
        # then, so a block that waits does not hold a whole store, and little is copied twice.
        by_block = np.lexsort((members, self.block_of[members]))
        ordered, counts = members[by_block], self.members_per_block
        early = (counts * tuning.TUNING.parked_share).astype(np.int64)
        self.open_at = ordered[np.cumsum(counts) - counts + early] if len(members) else []
        self._parked: dict[int, list] = {}
        self._open: dict[int, Block] = {}
        self._next = 0

    def blocks(self, chunks: Iterable[tuple[int, Sequences]]) -> Iterator[Block]:
        """Yields the finished blocks, in plan order, as the chunks arrive."""
        for first, chunk in chunks:
            self._add(first, chunk)
            yield from self._finished()
        if self._next < len(self.places):
            raise DataError(f"the source ended with {self._missing():,} sequences of the epoch "
                            f"still to arrive; it changed since the pipeline was built. Build "
                            f"the pipeline again.")

    def _finished(self) -> Iterator[Block]:
        while self._next in self._open and self._open[self._next].remaining == 0:
            block = self._open.pop(self._next)
            self._weigh(block)
            self._next += 1
            yield block

    def _missing(self) -> int:
        waiting = range(self._next, len(self.places))
        return sum(self._open[g].remaining if g in self._open else
                   int(self.members_per_block[g]) for g in waiting)

    def _add(self, first: int, chunk: Sequences) -> None:
        index = np.arange(first, first + len(chunk))
        if index[-1] >= len(self.lengths) or not np.array_equal(chunk.lengths,
                                                                self.lengths[index]):
            raise DataError("the source changed since the pipeline was built (sequence "
                            "lengths differ); build the pipeline again")
        block_of = self.block_of[index]
        for g in np.unique(block_of[block_of >= 0]).tolist():
            local = np.flatnonzero(block_of == g)
            if g not in self._open and index[-1] < self.open_at[g]:
                self._parked.setdefault(g, []).append(
                    (_take(chunk, local, self.config), index[local]))
                continue
            if g not in self._open:
                self._open[g] = self._allocate(g)
                for parked, parked_index in self._parked.pop(g, []):
                    self._scatter(self._open[g], parked, np.arange(len(parked)), parked_index)
            self._scatter(self._open[g], chunk, local, index[local])

    def _allocate(self, g: int) -> Block:
        places = self.places[g]
        rows = places.ends()
        config = self.config
        # Every real position is written by a chunk later; only the padding is set here.
        x = {name: self.buffers.empty((rows[spec.level], *spec.tail), spec.dtype)
             for name, spec in config.inputs.items()}
        y = {name: self.buffers.empty((rows[spec.level],) + ((spec.width,) if spec.width > 1
                                                             else ()), spec.dtype)
             for name, spec in config.outputs.items()}
        valid = {name: np.zeros(rows[spec.level], dtype=bool)
                 for name, spec in config.outputs.items()}
        members = [self.plan.batches[k] for k in self._batch_blocks[g]]
        empty = _empty_rows(members, places)
        padding = np.concatenate([self._padding_positions(members, places),
                                  empty["timestep"]])
        if config.padding.mask:  # every position a sequence does not fill is padding
            x[config.padding.mask] = np.ones(rows["timestep"], dtype=bool)
        block = Block(places, members, x, y, valid, {}, int(self.members_per_block[g]),
                      self.axes)
        pad_at(block, config, {"timestep": padding, "sequence": empty["sequence"]})
        return block

    def _padding_positions(self, batches: list, places: BatchPlaces) -> np.ndarray:
        """The padded timestep rows after (or before) every sequence of a block, given each
        batch's members."""
        steps = np.repeat(places.steps["timestep"], [len(m) for m in batches])
        members = np.concatenate(batches)
        kept = self.kept[members]
        missing = steps - kept
        start = self.time_dest[members] + (kept if self.config.padding.side == "post"
                                           else -missing)
        return ranges(start, missing)

    def _scatter(self, block: Block, chunk: Sequences, local: np.ndarray,
                 index: np.ndarray) -> None:
        from seqpipe._internal.runs import copy_runs  # numba, imported when batches are first made

        kept, dest = self.kept[index], self.time_dest[index]
        source = chunk.offsets[local] + self.skip[index]
        sequence_dest = self.sequence_dest[index]
        for name, spec in self.config.inputs.items():
            values = chunk.features[name]
            if spec.level == "timestep":
                copy_runs(values, source, block.x[name], dest, kept)
            else:  # one row per sequence: few, NumPy is enough
                put_per_sequence(values, local, block.x[name], sequence_dest)
        for name, output in self.config.outputs.items():
            labels, present = chunk.labels[name], chunk.present[name]
            if output.level == "timestep":
                copy_runs(labels, source, block.y[name], dest, kept)
                copy_runs(present, source, block.valid[name], dest, kept)
            else:
                block.y[name][sequence_dest] = labels[local]
                block.valid[name][sequence_dest] = present[local]
        block.remaining -= len(index)

    def _weigh(self, block: Block) -> None:
        for name in self.config.outputs:
            block.sample_weight[name] = weigh(block, name, self.config, self.mean_valid[name],
                                              self.buffers)


def _aligned_rows(rows: np.ndarray) -> np.ndarray:
    """`rows` rounded up so that as many float32 rows, of any width, fill whole
    `ALIGNMENT`-byte blocks."""
    step = ALIGNMENT // 4
    return -(-rows // step) * step


def _take(chunk: Sequences, local: np.ndarray, config: PipelineConfig) -> Sequences:
    """A copy of the sequences `local` of a chunk, end to end."""
    lengths = chunk.lengths[local]
    rows = ranges(chunk.offsets[local], lengths)
    levels = config.levels

    def take(arrays):
        taken = {}
        for name, values in arrays.items():
            at = rows if levels[name] == "timestep" else local
            taken[name] = (tuple(v[at] for v in values) if isinstance(values, tuple)
                           else values[at])
        return taken

    return Sequences(chunk.ids[local], offsets_of(lengths),
                     take(chunk.features), take(chunk.labels), take(chunk.present))


def _empty_rows(batches: list, places: BatchPlaces) -> dict:
    """Per level, the positions of the rows of a block that no sequence fills: the rows past
    each batch's members (`same_shape_first`)."""
    filled = np.array([len(b) for b in batches], dtype=np.int64)
    empty = places.rows - filled
    steps = places.steps["timestep"]
    return {"timestep": ranges(places.start["timestep"] + filled * steps, empty * steps),
            "sequence": ranges(places.start["sequence"] + filled, empty)}


def _exclusive_cumsum_within(values: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Running total of `values` before each position, restarting at each new block."""
    total = np.cumsum(values) - values
    if not len(values):
        return total
    starts = np.flatnonzero(np.concatenate([[True], blocks[1:] != blocks[:-1]]))
    return total - np.repeat(total[starts], np.diff(np.append(starts, len(values))))
