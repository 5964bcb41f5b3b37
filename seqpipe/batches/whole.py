"""Whole sequences: one sequence per batch row, truncated, sorted into buckets by length,
padded to the longest of its batch (or, with `static_shapes`, to its bucket's length).

`seqpipe.batches.buckets` chooses the buckets and plans each epoch;
`seqpipe.batches.assembler` writes the planned batches as the chunks stream in.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from seqpipe.batches.assembler import Assembler, WholeLayout, resumed, skipping
from seqpipe.batches.block import Batch, Block
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
from seqpipe.batches.kind import (
    BatchKind,
    BatchSpec,
    Counted,
    Padding,
    Preview,
    Reader,
    Targets,
    extra_inputs,
)
from seqpipe.config import BatchingConfig, PipelineConfig
from seqpipe.errors import DataError
from seqpipe.index import KeptSteps, SequenceSource, truncate
from seqpipe.parquet.sequences import offsets_of, ranges, show_id


class WholeSequences(BatchKind):
    """Each batch row holds one whole sequence (truncated to `padding.maxlen`)."""

    name = "whole sequences"

    def __init__(self, config: PipelineConfig, source: SequenceSource, kept: KeptSteps,
                 in_part: np.ndarray, part: Optional[str], seed: Optional[int],
                 slices: int = 1) -> None:
        super().__init__(config, source, kept, in_part, part, seed, slices)
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
        extra, extra_axes = extra_inputs(config)
        axes = {**config.levels, **extra_axes}
        one_bucket = batching.static_shapes and not batching.bucket_boundaries
        rows = (batching.batch_size if batching.static_shapes and batching.max_timesteps is None
                else None)
        return BatchSpec(axes, {"timestep": config.padding.maxlen if one_bucket else None},
                         rows, extra)

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
        steps = self.config.batching.accumulation_steps
        if steps > 1:  # the optimizer applies its gradients every `steps` batches
            plan = in_multiples(plan, steps)
        return EpochPlan([self._members[b] for b in plan.batches], plan.blocks,
                         plan.dropped_sequences)

    def batches_per_epoch(self) -> int:
        return len(self.plan(0).batches)

    def blocks(self, epoch: int, read: Reader, start: int = 0) -> Iterator[Block]:
        plan = self.plan(epoch)
        mean_valid = {name: self._mean_valid(name, plan) for name in self.config.outputs}
        layout = WholeLayout(self.config, plan, self.kept.length, self._shapes(plan),
                             self.slices)
        first, skipped, chunks = resumed(layout, start, read)
        assembler = Assembler(self.config, self.spec(self.config), layout,
                              self.source.index.lengths, self.kept.length, mean_valid,
                              first_block=first)
        yield from skipping(assembler.blocks(chunks), skipped)

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
        # Lockstep parts: every batch's rows a multiple of the slices (the global
        # batch_size is one; a token budget may not be).
        sizes = np.maximum(sizes // self.slices * self.slices, self.slices)
        budget = self.config.batching.max_timesteps
        # Each part of a global batch holds at least one row: its share of the budget.
        share = None if budget is None else budget // self.slices
        if share is not None and kept.max() > share:
            longest = int(self._members[np.argmax(kept)])
            parts = (f" over {self.slices} processes or replicas ({share:,} each)"
                     if self.slices > 1 else "")
            raise DataError(
                f"sequence {show_id(self.source.index.ids[longest])} keeps "
                f"{self.kept.length[longest]:,} timesteps, more than "
                f"batching.max_timesteps={budget:,}{parts}, so it fits in no batch. Raise "
                f"max_timesteps or set padding.maxlen to at most {share:,}.")
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
        counts = np.array([len(b) for b in plan.batches])
        topped_up = 0 if shapes is not None else int((-counts % self.slices).sum())
        return dict(
            lockstep_empty_rows=topped_up,
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
