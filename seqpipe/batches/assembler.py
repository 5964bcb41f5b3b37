"""Assembly: writes each chunk of sequences straight into the padded batches it belongs to.

An epoch's layout (a kind's plan made concrete: `WholeLayout` from the buckets' plan, or
packed rows') says where every kept timestep lands: batch, row and column. The batches of
one assembly block lie end to end in flat arrays (one per input and output), so a chunk of
sequences, as it arrives from the source, is copied into them run by run
(`seqpipe._internal.runs`): each timestep is read once and written once, and no batch is
copied again. A block goes out when its last sequence has arrived; until then only the
chunk in hand and the blocks being filled are in memory.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Optional

import numpy as np

from seqpipe import tuning
from seqpipe._internal.buffers import ALIGNMENT, SHARED, BufferPool
from seqpipe.batches.block import (
    BatchPlaces,
    Block,
    empty_scales,
    pad_at,
    put_per_sequence,
    weigh,
)
from seqpipe.batches.buckets import EpochPlan
from seqpipe.batches.kind import BatchSpec
from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.sequences import HeldChunks, Sequences, offsets_of, ranges, take
from seqpipe.scaling import scale_inputs


@dataclasses.dataclass
class Layout:
    """Where each sequence of an epoch's batches goes in its block's flat arrays: a kind's
    plan, made concrete. `Assembler` writes any layout; `WholeLayout` is one sequence per
    row, `seqpipe.batches.packed` lays several end to end in a row.

    Attributes:
      batches: the sequence indices of each batch, in the order they fill it.
      blocks: (batches,) the assembly block of each batch, non-decreasing.
      places: each block's `BatchPlaces`, positions counted from the block's start.
      block_of: (n,) every sequence's block, -1 for sequences in no batch.
      time_dest: (n,) where each member's first kept timestep goes on the timestep axis.
      sequence_dest: (n,) where its per-sequence values go, on the axis that holds them.
      member_rows: where a row holds several sequences (packed rows), the row of each
        sequence of each batch; None: sequence i of a batch fills row i.
    """

    batches: list
    blocks: np.ndarray
    places: list
    block_of: np.ndarray
    time_dest: np.ndarray
    sequence_dest: np.ndarray
    member_rows: Optional[list] = None

    def padding(self, g: int) -> dict:
        """Axis -> the runs `(start, count)` of positions of block g that no sequence
        fills."""
        raise NotImplementedError

    def inputs(self, g: int, rows: Mapping[str, int]) -> dict:
        """Extra inputs of block g that the layout alone decides (`rows`: positions per
        axis); none unless a kind adds them."""
        return {}


class WholeLayout(Layout):
    """One sequence per batch row, padded after (or before) it to the batch's timesteps."""

    def __init__(self, config: PipelineConfig, plan: EpochPlan, kept: np.ndarray,
                 shapes: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 slices: int = 1) -> None:
        counts = np.array([len(b) for b in plan.batches], dtype=np.int64)
        members = np.concatenate(plan.batches) if plan.batches else np.empty(0, np.int64)
        first = np.cumsum(counts) - counts
        steps = (np.maximum.reduceat(kept[members], first) if len(members)
                 else np.empty(0, np.int64))
        sizes = counts.copy()  # rows of each batch: its sequences, and empty rows
        if shapes is not None:
            sizes, steps = shapes[0].astype(np.int64), shapes[1].astype(np.int64)
        sizes = -(-sizes // slices) * slices  # lockstep: rows a multiple of the parts
        batch_rows = np.repeat(np.arange(len(counts)), counts)
        row = np.arange(len(members)) - first[batch_rows]
        # Every batch starts on an ALIGNMENT-byte boundary of each flat array: TensorFlow's
        # slice hands an aligned batch on as a view, and copies one that is not.
        t0 = exclusive_cumsum_within(aligned_rows(sizes * steps), plan.blocks)
        s0 = exclusive_cumsum_within(aligned_rows(sizes), plan.blocks)
        every = BatchPlaces({"timestep": t0, "sequence": s0}, sizes, {"timestep": steps})
        n = len(kept)
        block_of = np.full(n, -1, dtype=np.int64)
        block_of[members] = plan.blocks[batch_rows]
        lead = steps[batch_rows] - kept[members] if config.padding.side == "pre" else 0
        time_dest = np.zeros(n, dtype=np.int64)
        time_dest[members] = t0[batch_rows] + row * steps[batch_rows] + lead
        sequence_dest = np.zeros(n, dtype=np.int64)
        sequence_dest[members] = s0[batch_rows] + row
        super().__init__(plan.batches, plan.blocks, blocks_of(every, plan.blocks), block_of,
                         time_dest, sequence_dest)
        self.kept, self.post = kept, config.padding.side == "post"

    def padding(self, g: int) -> dict:
        """The padded timesteps after (or before) every sequence of block g, and the rows
        past each batch's members (`static_shapes`, lockstep `slices`)."""
        places = self.places[g]
        batches = [self.batches[k] for k in np.flatnonzero(self.blocks == g)]
        filled = np.array([len(b) for b in batches], dtype=np.int64)
        steps = places.steps["timestep"]
        members = np.concatenate(batches)
        kept = self.kept[members]
        missing = np.repeat(steps, filled) - kept
        start = self.time_dest[members] + (kept if self.post else -missing)
        empty = places.rows - filled
        return {"timestep": (np.concatenate([start, places.start["timestep"] + filled * steps]),
                             np.concatenate([missing, empty * steps])),
                "sequence": (places.start["sequence"] + filled, empty)}


class Assembler:
    """Turns chunks of sequences, in source order, into the blocks of an epoch's layout.

    Args:
      config: the pipeline config.
      spec: its batch spec (the kind's).
      layout: where every sequence of the epoch goes.
      lengths: (n,) every sequence's timesteps before truncation.
      kept: (n,) timesteps kept by truncation.
      mean_valid: output -> valid labels per batch over the epoch (for global_mean).
      weigh: how a block's weights of one output are made (the default: `block.weigh`).
      buffers: where the blocks' arrays come from: by default the process's pool, so that
        an epoch reuses the memory of the batches the last one is done with.
      first_block: the first block to make (an epoch resumed part way); the sequences of
        the blocks before it are not expected.
    """

    def __init__(self, config: PipelineConfig, spec: BatchSpec, layout: Layout,
                 lengths: np.ndarray, kept: np.ndarray, mean_valid: Mapping[str, float],
                 weigh: Callable = weigh, buffers: BufferPool = SHARED,
                 first_block: int = 0) -> None:
        self.config, self.layout, self.mean_valid = config, layout, mean_valid
        self.axes = spec.axes
        self._scale_inputs = list(scale_inputs(config))
        self.buffers, self.weigh = buffers, weigh
        self.lengths, self.kept = lengths, kept
        self.places = layout.places
        members = (np.concatenate(layout.batches) if layout.batches
                   else np.empty(0, np.int64))
        self.block_of = np.where(layout.block_of >= first_block, layout.block_of, -1)
        self.time_dest, self.sequence_dest = layout.time_dest, layout.sequence_dest
        self.skip = lengths - kept if config.padding.truncating == "pre" else np.zeros_like(
            lengths)
        self.members_per_block = np.bincount(layout.block_of[members],
                                             minlength=len(self.places))
        self._batch_blocks = [np.flatnonzero(layout.blocks == g)
                              for g in range(len(self.places))]
        self._members = members
        self._parked: dict[int, list] = {}
        self._open: dict[int, Block] = {}
        self._next = first_block

    @functools.cached_property
    def open_at(self) -> np.ndarray:
        """The sequence whose arrival opens each block, when chunks stream in.

        A block's store is allocated once the stream reaches its first members, past the
        few (`Tuning.parked_share`) that come much earlier: sequences that waited several
        shuffle buffers for a batch of their bucket to fill. Those are parked unpadded until
        then, so a block that waits does not hold a whole store, and little is copied
        twice. (Chunks held in memory need none of this.)"""
        members = self._members
        by_block = np.lexsort((members, self.layout.block_of[members]))
        ordered, counts = members[by_block], self.members_per_block
        early = (counts * tuning.TUNING.parked_share).astype(np.int64)
        return ordered[np.cumsum(counts) - counts + early] if len(members) else members

    def blocks(self, chunks: Iterable[tuple[int, Sequences]]) -> Iterator[Block]:
        """Yields the finished blocks, in plan order, as the chunks arrive; chunks all held
        in memory (`HeldChunks`), one block after the other."""
        if isinstance(chunks, HeldChunks):
            yield from self._from_held(chunks)
            return
        for first, chunk in chunks:
            self._add(first, chunk)
            yield from self._finished()
        if self._next < len(self.places):
            raise DataError(f"the source ended with {self._missing():,} sequences of the epoch "
                            f"still to arrive; it changed since the pipeline was built. Build "
                            f"the pipeline again.")

    def _from_held(self, held: HeldChunks) -> Iterator[Block]:
        """Each block made whole from the chunks that hold its sequences, in plan order:
        its first batch is ready as soon as it is made, not when the chunks that complete
        several blocks at once come round."""
        firsts = np.array([first for first, _ in held], dtype=np.int64)
        for g in range(self._next, len(self.places)):
            members = np.concatenate([self.layout.batches[k] for k in self._batch_blocks[g]])
            which = np.searchsorted(firsts, members, side="right") - 1
            block = self._allocate(g)
            for c in np.unique(which).tolist():
                index = np.sort(members[which == c])  # the chunk read in order
                first, chunk = held[max(c, 0)]
                if c < 0 or index.max() - first >= len(chunk):
                    raise DataError(f"a sequence of block {g} of the epoch is in none of the "
                                    f"chunks held in memory (a seqpipe bug; please report "
                                    f"it)")
                self._scatter(block, chunk, index - first, index)
            self._weigh(block)
            self._next = g + 1
            yield block

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
        config, axes = self.config, self.axes
        # Every real position is written by a chunk later; only the padding is set here.
        x = {name: self.buffers.empty((rows[axes[name]], *spec.tail), spec.dtype)
             for name, spec in config.inputs.items()}
        y = {name: self.buffers.empty((rows[axes[name]],) + ((spec.width,) if spec.width > 1
                                                             else ()), spec.dtype)
             for name, spec in config.outputs.items()}
        valid = {name: np.zeros(rows[axes[name]], dtype=bool) for name in config.outputs}
        members = [self.layout.batches[k] for k in self._batch_blocks[g]]
        if config.padding.mask:  # every position a sequence does not fill is padding
            x[config.padding.mask] = np.ones(rows["timestep"], dtype=bool)
        if self._scale_inputs:  # all on one axis: the rows' sequences
            x.update(empty_scales(config, rows[axes[self._scale_inputs[0]]]))
        x.update(self.layout.inputs(g, rows))
        member_rows = (None if self.layout.member_rows is None else
                       [self.layout.member_rows[k] for k in self._batch_blocks[g]])
        block = Block(places, members, x, y, valid, {}, int(self.members_per_block[g]),
                      self.axes, member_rows=member_rows)
        pad_at(block, config, self.layout.padding(g))
        return block

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
        for name in self._scale_inputs:  # each sequence's own scales, as transform made them
            put_per_sequence(chunk.features[name], local, block.x[name], sequence_dest)
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
            block.sample_weight[name] = self.weigh(block, name, self.config,
                                                   self.mean_valid[name], self.buffers)


def resumed(layout: Layout, start: int, read: Callable) -> tuple[int, int, Iterator]:
    """Where an epoch resumed at batch `start` begins: (its block, the batches of that
    block before `start`, the chunks the blocks from there on need, from `read(needed)`).

    The chunks come in two reads: first those from the first block's earliest sequence on
    (every sequence the first block needs, and the later blocks' there), then the few
    sequences of later blocks that lie before it (a last batch's left-overs, say), so that
    the first block does not wait for row groups only a later one needs. The assembler
    takes chunks in any order."""
    if not start:
        return 0, 0, read(None)
    g = int(layout.blocks[start])  # `Pipeline.blocks` checked that the epoch has it
    needed = layout.block_of >= g
    first = int(np.flatnonzero(layout.block_of == g)[0])
    later = needed.copy()
    needed[:first] = False
    later[first:] = False
    return g, start - int(np.searchsorted(layout.blocks, g)), _reads(read, needed, later)


def _reads(read: Callable, *masks: np.ndarray) -> Iterator:
    """The chunks of `read(mask)` for each mask that needs any, one read after the other
    (a read starts only when the one before has ended)."""
    for mask in masks:
        if mask.any():
            yield from read(mask)


def skipping(blocks: Iterable[Block], batches: int) -> Iterator[Block]:
    """`blocks` with their first `batches` batches left out."""
    for block in blocks:
        if batches >= len(block.places):
            batches -= len(block.places)
            continue
        yield block.from_batch(batches)
        batches = 0


def aligned_rows(rows: np.ndarray) -> np.ndarray:
    """`rows` rounded up so that as many float32 rows, of any width, fill whole
    `ALIGNMENT`-byte blocks."""
    step = ALIGNMENT // 4
    return -(-rows // step) * step


def _take(chunk: Sequences, local: np.ndarray, config: PipelineConfig) -> Sequences:
    """A copy of the sequences `local` of a chunk, end to end."""
    lengths = chunk.lengths[local]
    rows = ranges(chunk.offsets[local], lengths)
    levels = config.levels

    def taken(arrays):  # scale inputs, not in the config: one row per sequence
        return {name: take(values, rows if levels.get(name) == "timestep" else local)
                for name, values in arrays.items()}

    return Sequences(chunk.ids[local], offsets_of(lengths),
                     taken(chunk.features), taken(chunk.labels), taken(chunk.present))


def blocks_of(every: BatchPlaces, blocks: np.ndarray) -> list:
    """`every` batch's places cut into one `BatchPlaces` per block."""
    count = int(blocks.max()) + 1 if len(blocks) else 0
    return [every.select(blocks == g) for g in range(count)]


def exclusive_cumsum_within(values: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Running total of `values` before each position, restarting at each new block."""
    total = np.cumsum(values) - values
    if not len(values):
        return total
    starts = np.flatnonzero(np.concatenate([[True], blocks[1:] != blocks[:-1]]))
    return total - np.repeat(total[starts], np.diff(np.append(starts, len(values))))
