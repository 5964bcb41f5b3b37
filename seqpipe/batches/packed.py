"""Packed rows: whole sequences end to end in rows of `batching.packing.length` timesteps,
every batch one shape, `(batch_size, length)`.

`seqpipe.batches.pack_plan` packs each shuffle window's sequences into rows and cuts the
rows into batches; `PackedLayout` says where each sequence lands and the `Assembler`
writes it there, as it writes whole sequences. Each row's sequences are its segments:
the extra inputs `segment_ids` (1..k, 0 at padding) and `positions` (0..n-1 within each
sequence) say which timestep is whose. Per-sequence inputs, outputs and weights go on a
segment axis of `max_segments` slots, slot j holding segment j + 1.

The weights keep each mode's meaning over segments: `sequence_mean` counts every sequence
of the batch once, whatever row it shares (see `segment_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Optional

import numpy as np

from seqpipe._internal.buffers import BufferPool
from seqpipe.batches.assembler import (
    Assembler,
    Layout,
    aligned_rows,
    blocks_of,
    exclusive_cumsum_within,
    resumed,
    skipping,
)
from seqpipe.batches.block import Batch, BatchPlaces, Block, weigh
from seqpipe.batches.buckets import unbucketed_waste
from seqpipe.batches.kind import (
    BatchKind,
    BatchSpec,
    Counted,
    Preview,
    Reader,
    Targets,
    extra_inputs,
)
from seqpipe.batches.pack_plan import PACKING_WINDOW, PackedPlan, packing_waste, plan_packed
from seqpipe.batches.whole import WholeSequences
from seqpipe.config import PackingConfig, PipelineConfig
from seqpipe.errors import DataError
from seqpipe.index import KeptSteps, SequenceSource, truncate
from seqpipe.parquet.sequences import offsets_of, ranges, runs_of
from seqpipe.weights import batch_weights


class PackedRows(BatchKind):
    """Each batch row holds whole sequences end to end (`batching.packing`)."""

    name = "packed rows"

    def __init__(self, config: PipelineConfig, source: SequenceSource, kept: KeptSteps,
                 in_part: np.ndarray, part: Optional[str], seed: Optional[int],
                 slices: int = 1) -> None:
        super().__init__(config, source, kept, in_part, part, seed, slices)
        self._members = np.flatnonzero(in_part)
        self._valid = {name: source.valid_labels(name, kept) for name in config.outputs
                       if config.weight_mode(name) == "global_mean"}
        self._first: Optional[PackedPlan] = None
        self._first = self.plan(0)

    @classmethod
    def applies(cls, config: PipelineConfig) -> bool:
        return config.batching.packing is not None

    @classmethod
    def spec(cls, config: PipelineConfig) -> BatchSpec:
        """Every batch: `batch_size` rows of `packing.length` timesteps; per-sequence
        arrays on the "segment" axis of `max_segments` slots."""
        packing = _packing(config)
        extra, extra_axes = extra_inputs(config)
        extra[packing.segment_ids] = extra[packing.positions] = ("int32", ())
        axes = {**config.levels, **extra_axes, packing.segment_ids: "timestep",
                packing.positions: "timestep"}
        axes = {name: "segment" if axis == "sequence" else axis for name, axis in axes.items()}
        return BatchSpec(axes, {"timestep": packing.length, "segment": packing.max_segments},
                         config.batching.batch_size, extra)

    @classmethod
    def counted(cls, config: PipelineConfig, offsets: np.ndarray, counted: np.ndarray,
                before: Optional[np.ndarray]) -> Counted:
        return WholeSequences.counted(config, offsets, counted, before)

    @classmethod
    def statistics_over(cls, config: PipelineConfig) -> str:
        return WholeSequences.statistics_over(config)

    @classmethod
    def preview(cls, config: PipelineConfig, lengths: np.ndarray, ids: Any,
                before: Optional[np.ndarray], from_file: bool) -> Preview:
        """The rows an epoch packs, their padding and segments, against one sequence per
        row padded to maxlen (the other way to one shape)."""
        kept = truncate(offsets_of(lengths), config.padding).length
        seed = config.shuffle.seed if config.shuffle.seed is not None else 0
        rng = np.random.default_rng([seed, 0]) if config.shuffle.buffer_size else None
        plan = _plan(config, kept, rng, 1)
        return Preview(tuple(_lines(config, plan, kept)))

    @property
    def members(self) -> np.ndarray:
        return self._members

    def plan(self, epoch: int) -> PackedPlan:
        """The rows and batches of one epoch, as indices into the source's index; the same
        (seed, epoch) always gives the same plan."""
        if epoch == 0 and self._first is not None:
            return self._first
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        plan = _plan(self.config, self.kept.length[self._members], rng,
                     self.config.batching.accumulation_steps)
        if not plan.batches:
            raise DataError(
                f"batching.drop_remainder leaves no batch: the {len(self._members):,} "
                f"sequences fill {plan.rows:,} packed rows, fewer than "
                f"batching.batch_size={self.config.batching.batch_size}. Lower batch_size, "
                f"shorten packing.length or set drop_remainder: false.")
        return PackedPlan(self._members[plan.sequence], plan.batch, plan.row, plan.slot,
                          plan.offset, plan.batches, plan.blocks, plan.rows,
                          plan.dropped_sequences)

    def batches_per_epoch(self) -> int:
        return self.plan(0).batches

    def blocks(self, epoch: int, read: Reader, start: int = 0) -> Iterator[Block]:
        plan = self.plan(epoch)
        mean_valid = {name: float(self._valid[name][plan.sequence].sum()) / plan.batches
                      if name in self._valid else 0.0 for name in self.config.outputs}
        spec = self.spec(self.config)
        layout = PackedLayout(self.config, plan, self.kept.length)
        segment_ids = _packing(self.config).segment_ids

        def weigh_segments(block, output, config, mean_valid, buffers):
            return segment_weights(block, output, config, mean_valid, buffers, segment_ids)

        first, skipped, chunks = resumed(layout, start, read)
        assembler = Assembler(self.config, spec, layout, self.source.index.lengths,
                              self.kept.length, mean_valid, weigh_segments,
                              first_block=first)
        yield from skipping(assembler.blocks(chunks), skipped)

    def units(self, block: Block, output: str) -> np.ndarray:
        """`sequence_mean` on the timestep axis averages over segments: those with a
        present label, per batch."""
        if (self.config.weight_mode(output) != "sequence_mean"
                or self.config.levels[output] == "sequence"):
            return super().units(block, output)
        p, valid = block.places, block.valid[output]
        segments = block.x[_packing(self.config).segment_ids]
        found = []
        for a, rows, steps in zip(p.start["timestep"].tolist(), p.rows.tolist(),
                                  p.steps["timestep"].tolist()):
            size = rows * steps
            here = valid[a:a + size]
            row = np.repeat(np.arange(rows), steps)[here]
            found.append(len(np.unique(row * (int(segments.max(initial=0)) + 1)
                                       + segments[a:a + size][here])))
        return np.asarray(found, dtype=np.int64)

    def report_fields(self) -> dict[str, Any]:
        """Truncation, the rows packed and their padding."""
        members = self._members
        kept, lengths = self.kept.length[members], self.source.index.lengths[members]
        plan = self.plan(0)
        config = self.config
        waste = packing_waste(plan, self.kept.length, _packing(config).length,
                              config.batching.batch_size)
        one_per_row = unbucketed_waste(kept, np.arange(len(kept)), config.batching,
                                       config.padding.maxlen)
        segments = plan.segments_per_row()
        return dict(
            static_shapes=1, lockstep_empty_rows=0,
            truncated_sequences=int((kept < lengths).sum()),
            truncated_timesteps=int((lengths - kept).sum()), bucket_boundaries=(),
            batches_per_epoch=plan.batches,
            sequences_dropped_per_epoch=plan.dropped_sequences, padding_waste=waste,
            padding_waste_unbucketed=one_per_row,
            segments_per_row=float(segments.mean()) if len(segments) else 0.0,
            batching=tuple(_lines(config, _in_part(plan, members), kept)))

    def targets(self, batch: Batch, level: str, steps: int) -> Targets:
        """Every real timestep of the batch's sequences (each sequence, per-sequence) at
        its row and place in the row: the time there, or `step`, its place among the
        sequence's kept timesteps."""
        packing = _packing(self.config)
        segment_ids = np.asarray(batch.x[packing.segment_ids])
        per_row = segment_ids.max(axis=1)  # segments fill 1..k in order
        first = np.cumsum(per_row) - per_row
        sequence = np.searchsorted(self.source.index.ids, batch.ids)  # ids are ascending
        if level == "sequence":
            rows = np.repeat(np.arange(len(per_row)), per_row)
            return Targets(rows, ranges(np.zeros(len(per_row), np.int64), per_row), sequence,
                           {})
        rows, at = np.nonzero(segment_ids)
        member = sequence[first[rows] + segment_ids[rows, at] - 1]
        step = np.asarray(batch.x[packing.positions])[rows, at].astype(np.int64)
        time = self.config.source.time_column
        skipped = (self.kept.start - self.source.index.offsets[:-1])[member]
        positions = {time: step + skipped} if time else {"step": step}
        return Targets(rows, at, member, positions)


class PackedLayout(Layout):
    """Where each sequence of a packed epoch lands: its row's timesteps from its offset,
    and its slot on the segment axis."""

    def __init__(self, config: PipelineConfig, plan: PackedPlan, kept: np.ndarray) -> None:
        packing = _packing(config)
        length, slots, rows = packing.length, packing.max_segments, config.batching.batch_size
        count = plan.batches
        t0 = exclusive_cumsum_within(aligned_rows(np.full(count, rows * length)), plan.blocks)
        s0 = exclusive_cumsum_within(aligned_rows(np.full(count, rows * slots)), plan.blocks)
        every = BatchPlaces({"timestep": t0, "segment": s0}, np.full(count, rows),
                            {"timestep": np.full(count, length),
                             "segment": np.full(count, slots)})
        n, members = len(kept), plan.sequence
        block_of = np.full(n, -1, dtype=np.int64)
        block_of[members] = plan.blocks[plan.batch]
        time_dest = np.zeros(n, dtype=np.int64)
        time_dest[members] = t0[plan.batch] + plan.row * length + plan.offset
        sequence_dest = np.zeros(n, dtype=np.int64)
        sequence_dest[members] = s0[plan.batch] + plan.row * slots + plan.slot
        super().__init__(plan.members(), plan.blocks, blocks_of(every, plan.blocks), block_of,
                         time_dest, sequence_dest, plan.member_rows())
        self.kept, self.plan, self.packing = kept, plan, packing

    def _block_members(self, g: int) -> np.ndarray:
        return self.plan.sequence[self.plan.blocks[self.plan.batch] == g]

    def padding(self, g: int) -> dict:
        """Every position of the block that no sequence fills: the end of each row, empty
        rows, and the segment slots past each row's sequences."""
        places, members = self.places[g], self._block_members(g)
        found = {}
        for axis, first, count in (("timestep", self.time_dest[members], self.kept[members]),
                                   ("segment", self.sequence_dest[members],
                                    np.ones(len(members), np.int64))):
            filled = np.zeros(places.ends()[axis], dtype=bool)
            filled[ranges(first, count)] = True
            found[axis] = runs_of(~filled)
        return found

    def inputs(self, g: int, rows: Mapping[str, int]) -> dict:
        """The block's segment ids and positions."""
        plan, members = self.plan, self._block_members(g)
        in_block = plan.blocks[plan.batch] == g
        kept = self.kept[members]
        at = ranges(self.time_dest[members], kept)
        segment_ids = np.zeros(rows["timestep"], dtype=np.int32)
        positions = np.zeros(rows["timestep"], dtype=np.int32)
        segment_ids[at] = np.repeat(plan.slot[in_block] + 1, kept)
        positions[at] = ranges(np.zeros(len(kept), np.int64), kept)
        return {self.packing.segment_ids: segment_ids, self.packing.positions: positions}


def segment_weights(block: Block, output: str, config: PipelineConfig, mean_valid: float,
                    buffers: BufferPool, segment_ids: str) -> np.ndarray:
    """The weights of one output for every batch of a packed block: each mode as for whole
    sequences, with a batch's sequences being its segments. `sequence_mean` on a
    per-timestep output gives each valid label N / (S_valid * n_s), where N is the batch's
    B * L positions, S_valid its sequences with a valid label and n_s the valid labels of
    the label's own sequence, so Keras's default reduction reports the mean over the
    batch's sequences of each one's own mean. On the segment axis it is `batch_mean`."""
    mode, axis = config.weight_mode(output), block.axes[output]
    if mode != "sequence_mean":
        return weigh(block, output, config, mean_valid, buffers)
    p, valid = block.places, block.valid[output]
    out = buffers.empty(valid.shape)
    if axis == "segment":
        return batch_weights("batch_mean", valid, p.start[axis], p.rows * p.steps[axis],
                             None, mean_valid, out)
    segments = block.x[segment_ids]
    for a, rows, steps in zip(p.start[axis].tolist(), p.rows.tolist(), p.steps[axis].tolist()):
        size = rows * steps
        here, ids = valid[a:a + size], segments[a:a + size].astype(np.int64)
        key = np.repeat(np.arange(rows), steps) * (int(ids.max(initial=0)) + 1) + ids
        per_segment = np.bincount(key[here], minlength=int(key.max(initial=0)) + 1)
        present = np.count_nonzero(per_segment)
        scale = np.zeros(len(per_segment), dtype=np.float64)
        np.divide(size, present * per_segment, out=scale, where=per_segment > 0)
        out[a:a + size] = np.where(here, scale[key], 0).astype(np.float32)
    return out


def _packing(config: PipelineConfig) -> PackingConfig:
    if config.batching.packing is None:
        raise ValueError("a packed pipeline needs a config with batching.packing")
    return config.batching.packing


def _plan(config: PipelineConfig, kept: np.ndarray, rng: Optional[np.random.Generator],
          batch_multiple: int) -> PackedPlan:
    packing, batching = _packing(config), config.batching
    return plan_packed(kept, packing.length, packing.max_segments, batching.batch_size,
                       config.shuffle.buffer_size, rng, batching.drop_remainder, batch_multiple)


def _in_part(plan: PackedPlan, members: np.ndarray) -> PackedPlan:
    """A plan over the source's index, as one over the part's sequences."""
    return PackedPlan(np.searchsorted(members, plan.sequence), plan.batch, plan.row,
                      plan.slot, plan.offset, plan.batches, plan.blocks, plan.rows,
                      plan.dropped_sequences)


def _lines(config: PipelineConfig, plan: PackedPlan, kept: np.ndarray) -> list[str]:
    """The packing's lines of `seqpipe inspect` and the report."""
    packing, batching = _packing(config), config.batching
    waste = packing_waste(plan, kept, packing.length, batching.batch_size)
    one_per_row = unbucketed_waste(kept, np.arange(len(kept)), batching, config.padding.maxlen)
    segments = plan.segments_per_row()
    full = int((segments == packing.max_segments).sum())
    window = max(config.shuffle.buffer_size, PACKING_WINDOW)
    lines = [f"packed rows: {plan.rows:,} rows of {packing.length} timesteps in "
             f"{plan.batches:,} batches of {batching.batch_size} per epoch (one shape), "
             f"packed within windows of {window:,} sequences; padding waste: {waste:.1%} "
             f"(one sequence per row padded to maxlen {config.padding.maxlen}: "
             f"{one_per_row:.1%})",
             f"segments per row: mean {segments.mean() if len(segments) else 0:.2f}, max "
             f"{int(segments.max(initial=0))} (max_segments {packing.max_segments}; "
             f"{full:,} rows reach it)"]
    if plan.dropped_sequences:
        lines.append(f"drop_remainder drops {plan.dropped_sequences:,} sequences per epoch "
                     f"(the rows of a last, smaller batch)")
    return lines
