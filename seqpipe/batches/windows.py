"""Windows: every sequence cut into forecasting windows, one window per batch row.

`seqpipe.batches.window_plan` cuts the windows and plans an epoch of them; here each
block of batches is gathered from the few chunks of sequences its windows lie in: a
window's history and targets are runs of a chunk's flat arrays, copied by the compiled
`copy_runs`. Memory is bounded by the shuffle buffer and the row groups, not by the number
of windows.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

import numpy as np

from seqpipe._internal.buffers import SHARED, BufferPool
from seqpipe.batches.assembler import skipping
from seqpipe.batches.block import (
    Batch,
    BatchPlaces,
    Block,
    empty_scales,
    pad_at,
    put_per_sequence,
    weigh,
)
from seqpipe.batches.kind import (
    BatchKind,
    BatchSpec,
    Counted,
    Preview,
    Reader,
    Targets,
    extra_inputs,
)
from seqpipe.batches.window_plan import (
    WindowCounts,
    Windows,
    batches_per_epoch,
    padded_history,
    part_windows,
    plan_blocks,
    valid_targets,
)
from seqpipe.config import PipelineConfig, WindowsConfig
from seqpipe.errors import DataError
from seqpipe.index import KeptSteps, SequenceSource
from seqpipe.parquet.sequences import Sequences, ranges
from seqpipe.scaling import Spec, per_window, scale_columns, scale_input, window_scales
from seqpipe.split import PARTS, held_back, part_of


class WindowBatches(BatchKind):
    """Each batch row holds one window: `windows.history` timesteps of a sequence and the
    `windows.horizon` after them."""

    name = "windows"

    def __init__(self, config: PipelineConfig, source: SequenceSource, kept: KeptSteps,
                 in_part: np.ndarray, part: Optional[str], seed: Optional[int],
                 slices: int = 1) -> None:
        super().__init__(config, source, kept, in_part, part, seed, slices)
        self.windows, self.counts = self._cut(in_part, part)
        self._valid = {name: self._valid_labels(name, in_part) for name in config.outputs
                       if config.weight_mode(name) == "global_mean"}
        if config.batching.accumulation_steps > 1:
            # Planned once now: too few windows to cut into a multiple of the steps is an
            # error when building, not in the first epoch.
            collections.deque(self._plan(0), maxlen=0)

    @classmethod
    def applies(cls, config: PipelineConfig) -> bool:
        return config.windows is not None

    @classmethod
    def spec(cls, config: PipelineConfig) -> BatchSpec:
        """Every batch has `windows.history` timesteps, and `windows.horizon` on the
        "future" axis (future inputs, and per-timestep labels when the horizon is not 0);
        with `static_shapes`, `batch_size` rows."""
        w = _windows_of(config)
        extra, extra_axes = extra_inputs(config)
        axes = {**config.levels, **extra_axes}
        for name, spec in config.inputs.items():
            if spec.window == "future":
                axes[name] = "future"
        for name, output in config.outputs.items():
            if output.level == "timestep" and w.horizon:
                axes[name] = "future"
        batching = config.batching
        rows = (batching.batch_size if batching.static_shapes and batching.max_timesteps is None
                else None)
        return BatchSpec(axes, {"timestep": w.history, "future": w.horizon}, rows, extra)

    @classmethod
    def counted(cls, config: PipelineConfig, offsets: np.ndarray, counted: np.ndarray,
                before: Optional[np.ndarray]) -> Counted:
        """The timesteps of the train part's windows."""
        part = "train" if before is not None else None
        windows, _ = part_windows(np.diff(offsets), _windows_of(config), counted, part, before)
        skipped, length = windows.spans(len(counted))
        return Counted(skipped, length, length > 0)

    @classmethod
    def statistics_over(cls, config: PipelineConfig) -> str:
        return "the train part's windows" if config.split.enabled else "every window"

    @classmethod
    def preview(cls, config: PipelineConfig, lengths: np.ndarray, ids: Any,
                before: Optional[np.ndarray], from_file: bool) -> Preview:
        """The windows of every part, and what they drop and pad."""
        w, batching = _windows_of(config), config.batching
        everything = np.ones(len(lengths), dtype=bool)
        parts: dict[str, tuple[np.ndarray, Optional[str]]]
        if before is not None:
            parts = {part: (everything, part) for part in ("train", "validation")}
        elif ids is None or not config.split.by_id:
            parts = {"all": (everything, None)}
        else:
            of = part_of(ids, config.split)
            parts = {part: (of == k, None) for k, part in enumerate(PARTS) if (of == k).any()}
        lines = []
        for name, (in_part, part) in parts.items():
            counts = part_windows(lengths, w, in_part, part, before)[1]
            kept = counts.windows - (counts.windows % batching.batch_size
                                     if batching.drop_remainder else 0)
            if batching.drop_remainder:
                counts = dataclasses.replace(counts, dropped_per_epoch=counts.windows - kept)
            lines.append(f"windows: {name}: {counts.windows:,} per epoch "
                         f"({-(-kept // batching.batch_size):,} batches of "
                         f"{batching.batch_size}), {counts.padded:,} padded at the front")
            lines += [f"  {change}" for change in counts.changes()]
        return Preview(tuple(lines))

    @property
    def members(self) -> np.ndarray:
        return self.windows.members

    def batches_per_epoch(self) -> int:
        batching = self.config.batching
        return batches_per_epoch(len(self.windows), batching.batch_size,
                                 batching.drop_remainder, batching.accumulation_steps)

    def blocks(self, epoch: int, read: Reader, start: int = 0) -> Iterator[Block]:
        batches = max(self.batches_per_epoch(), 1)  # every epoch has the same windows
        mean_valid = {name: self._valid.get(name, 0) / batches for name in self.config.outputs}
        plan, skipped, needed = self._resumed(self._plan(epoch), start)
        assembler = WindowAssembler(self.config, self.spec(self.config), self.windows,
                                    plan, self.source.index.lengths, mean_valid,
                                    slices=self.slices)
        yield from skipping(assembler.blocks(read(needed)), skipped)

    def _resumed(self, plan: Iterator[tuple[np.ndarray, int, np.ndarray]], start: int
                 ) -> tuple[Iterator, int, Optional[np.ndarray]]:
        """The plan from the block that holds batch `start` on (the blocks before it only
        planned), the batches of that block before `start`, and the sequences from there
        on: those of the block's windows and of every later one's."""
        if not start:
            return plan, 0, None
        seen = 0
        for numbers, low, rows in plan:
            if seen + len(rows) > start:
                oldest = int(self.windows.locate(np.array([min(low, int(numbers.min()))]))[0][0])
                needed = np.zeros(len(self.source.index.ids), dtype=bool)
                needed[oldest:] = True
                return (itertools.chain([(numbers, low, rows)], plan), start - seen,
                        needed)
            seen += len(rows)
        raise AssertionError(f"batch {start} is past the epoch's {seen} batches, which "
                             f"Pipeline.blocks checks (a seqpipe bug; please report it)")

    def _plan(self, epoch: int) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
        batching = self.config.batching
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        return plan_blocks(len(self.windows), batching.batch_size,
                           self.config.shuffle.buffer_size, rng, batching.drop_remainder,
                           batching.accumulation_steps)

    def _cut(self, in_part: np.ndarray, part: Optional[str]) -> tuple[Windows, WindowCounts]:
        """The windows of a part, or a clear error when it has none."""
        index, config = self.source.index, self.config
        w = _windows_of(config)
        windows, counts = part_windows(index.lengths, w, in_part, part,
                                       held_back(config.split, index.lengths,
                                                 index.before_cutoff))
        if not len(windows):
            what = f"split {part!r} of " if part else ""
            cutoff = f" with {config.split.held_out}" if config.split.by_time else ""
            raise DataError(
                f"no windows: {what}{self.source.where}{cutoff} has none of at least "
                f"windows.min_history + windows.horizon = {w.shortest + w.horizon} "
                f"timesteps ({int(in_part.sum()):,} sequences, the longest "
                f"{int(index.lengths[in_part].max(initial=0)):,} timesteps). Lower "
                f"windows.history, min_history or horizon, or use longer sequences.")
        batching = config.batching
        dropped = len(windows) % batching.batch_size if batching.drop_remainder else 0
        return windows, dataclasses.replace(counts, dropped_per_epoch=dropped)

    def _valid_labels(self, output: str, in_part: np.ndarray) -> int:
        """For global_mean: present labels over every window's targets."""
        index = self.source.index
        present = index.present.get(output)
        if present is None:  # a source that does not index labels: one pass reads them
            present = np.concatenate([chunk.present[output] for _, chunk
                                      in self.source.chunks(in_part)])
        return valid_targets(self.windows, present, index.offsets, self.config.levels[output])

    def report_fields(self) -> dict[str, Any]:
        """What cutting the windows made and dropped, and the padding of their batches."""
        windows, batching = self.windows, self.config.batching
        batches = self.batches_per_epoch()
        if not batches:
            raise DataError(
                f"batching.drop_remainder leaves no batch: the {len(windows):,} windows do "
                f"not fill one batch of batching.batch_size={batching.batch_size}. Lower "
                f"batch_size or set drop_remainder: false.")
        history = _windows_of(self.config).history
        static = batching.static_shapes and not batching.drop_remainder
        # static shapes: the empty rows of the last batch (or of halved ones) count too.
        rows = batches * batching.batch_size if static else len(windows)
        waste = 1 - (len(windows) * history - padded_history(windows)) / (rows * history)
        shapes = ", static shapes: 1 per epoch" if batching.static_shapes else ""
        topped_up = 0 if static or self.slices == 1 else sum(
            int((-rows % self.slices).sum()) for _, _, rows in self._plan(0))
        return dict(truncated_sequences=None, truncated_timesteps=None, bucket_boundaries=(),
                    lockstep_empty_rows=topped_up,
                    batches_per_epoch=batches, sequences_dropped_per_epoch=0,
                    padding_waste=waste, padding_waste_unbucketed=waste, windows=self.counts,
                    static_shapes=1 if batching.static_shapes else None,
                    batching=(str(self.counts), f"batches per epoch: {batches:,}, padding "
                                                f"waste: {waste:.1%}{shapes}"),
                    batching_changes=tuple(self.counts.changes()))

    def targets(self, batch: Batch, level: str, steps: int) -> Targets:
        """Every target of the batch's windows: `window_end` (the window's last target)
        and, per timestep, the target's own time and `horizon_step` (1 is the first step
        after the history; absent with horizon 0). Per sequence, one entry per window."""
        n, ends = len(batch.ids), typing.cast(np.ndarray, batch.ends)
        sequence = np.searchsorted(self.source.index.ids, batch.ids)
        if level == "sequence":
            return Targets(np.arange(n), None, sequence, {"window_end": ends})
        step = np.arange(steps)
        position = ends[:, None] - steps + 1 + step
        real = position >= 0  # horizon 0: the history's padded front has no target
        rows = np.broadcast_to(np.arange(n)[:, None], real.shape)[real]
        at = np.broadcast_to(step, real.shape)[real]
        positions = {"window_end": ends[rows],
                     self.config.source.time_column or "step": position[real]}
        horizon = _windows_of(self.config).horizon
        numbers = {"horizon_step": position[real] - ends[rows] + horizon} if horizon else {}
        return Targets(rows, at, sequence[rows], positions, numbers)


class WindowAssembler:
    """Gathers the planned blocks of window batches from chunks of sequences, in source
    order. Holds the chunks the current shuffle buffer's windows lie in, no more.

    Args:
      config: the pipeline config (with a windows section).
      spec: its batch spec (`WindowBatches.spec`).
      windows: the part's windows.
      plan: `plan_blocks` of the epoch: each block's window numbers, the lowest window a
        later block needs, and the rows of each batch.
      lengths: (n,) every sequence's timesteps, to notice a source that changed.
      mean_valid: output -> valid labels per batch over the epoch (for global_mean).
      buffers: where the blocks' arrays come from.
      slices: every batch's rows are made a multiple of it (`seqpipe.lockstep`).
    """

    def __init__(self, config: PipelineConfig, spec: BatchSpec, windows: Windows,
                 plan: Iterable[tuple[np.ndarray, int, np.ndarray]], lengths: np.ndarray,
                 mean_valid: Mapping[str, float], buffers: BufferPool = SHARED,
                 slices: int = 1) -> None:
        self.config, self.windows, self.plan, self.slices = config, windows, plan, slices
        self.axes = spec.axes
        self.lengths, self.mean_valid, self.buffers = lengths, mean_valid, buffers
        w = _windows_of(config)
        self.history, self.horizon = w.history, w.horizon
        specs: dict[str, Spec] = {**config.inputs, **config.outputs}
        self._by_window = {kind: [name for name, spec in group.items() if per_window(spec)]
                           for kind, group in (("inputs", config.inputs),
                                               ("outputs", config.outputs))}
        # Scale inputs: per series, made by transform and copied; per window, made here.
        self._series_scales = [n for n in (scale_input(s, "series") for s in specs.values())
                               if n]
        self._window_scales = {name: scale_input(spec, "window") for name, spec in specs.items()
                               if scale_input(spec, "window")}

    def blocks(self, chunks: Iterable[tuple[int, Sequences]]) -> Iterator[Block]:
        """Yields the epoch's blocks in plan order, reading chunks as they are needed, and
        reads the rest of the stream at the end (so that a source's counts come in)."""
        held: collections.deque = collections.deque()
        stream = iter(chunks)
        for numbers, low, rows in self.plan:
            sequence, end = self.windows.locate(numbers)
            oldest = int(self.windows.locate(np.array([low]))[0][0])
            while held and held[0][0] + len(held[0][1]) <= oldest:
                held.popleft()
            while not held or held[-1][0] + len(held[-1][1]) <= sequence.max():
                first, chunk = self._next(stream)
                if first + len(chunk) > oldest:
                    held.append((first, chunk))
            yield self._gather(held, sequence, end, rows)
        for _ in stream:
            pass

    def _next(self, stream: Iterator[tuple[int, Sequences]]) -> tuple[int, Sequences]:
        try:
            first, chunk = next(stream)
        except StopIteration:
            raise DataError("the source ended before every window of the epoch was read; "
                            "it changed since the pipeline was built. Build the pipeline "
                            "again.") from None
        if not np.array_equal(chunk.lengths, self.lengths[first:first + len(chunk)]):
            raise DataError("the source changed since the pipeline was built (sequence "
                            "lengths differ); build the pipeline again")
        return first, chunk

    def _gather(self, held: collections.deque, sequence: np.ndarray, end: np.ndarray,
                batch_rows: np.ndarray) -> Block:
        # static_shapes: every batch has batch_size rows, those past its windows empty;
        # lockstep parts: rows a multiple of the slices.
        shape_rows = (np.full_like(batch_rows, self.config.batching.batch_size)
                      if self.config.batching.static_shapes
                      else -(-batch_rows // self.slices) * self.slices)
        empty = shape_rows - batch_rows
        dest = np.arange(len(sequence)) + np.repeat(np.cumsum(empty) - empty, batch_rows)
        block = self._allocate(sequence, end, batch_rows, shape_rows)
        # The labels of outputs scaled per window, at the history timesteps, with present.
        positions = int(shape_rows.sum()) * self.history
        history = {name: (np.zeros(positions, dtype=np.float32),
                          np.zeros(positions, dtype=bool))
                   for name in self._by_window["outputs"]}
        firsts = np.array([first for first, _ in held])
        where = np.searchsorted(firsts, sequence, side="right") - 1
        for c in np.unique(where).tolist():
            first, chunk = held[c]
            rows = (np.arange(len(sequence)) if len(held) == 1
                    else np.flatnonzero(where == c))
            self._copy(block, chunk, sequence[rows] - first, end[rows], dest[rows], history)
        self._pad(block, end, dest)
        if self._by_window["inputs"] or self._by_window["outputs"]:
            self._scale(block, end, dest, history)
        if empty.any():
            first_row = block.places.start["sequence"]
            self._empty(block, ranges(first_row + batch_rows, empty))
        for name in self.config.outputs:
            block.sample_weight[name] = weigh(block, name, self.config, self.mean_valid[name],
                                              self.buffers)
        return block

    def _allocate(self, sequence: np.ndarray, end: np.ndarray, batch_rows: np.ndarray,
                  shape_rows: np.ndarray) -> Block:
        config, rows = self.config, int(shape_rows.sum())
        count = len(batch_rows)
        steps = {"timestep": self.history, "future": self.horizon}
        first_row = np.cumsum(shape_rows) - shape_rows
        places = BatchPlaces({"sequence": first_row,
                              **{a: first_row * t for a, t in steps.items()}},
                             shape_rows, {a: np.full(count, t) for a, t in steps.items()})
        axes = self.axes

        def positions(name):
            return rows if axes[name] == "sequence" else rows * steps[axes[name]]

        x = {name: self.buffers.empty((positions(name), *spec.tail), spec.dtype)
             for name, spec in config.inputs.items()}
        if config.padding.mask:
            x[config.padding.mask] = np.empty(rows * self.history, dtype=bool)
        x.update(empty_scales(config, rows))
        y = {name: self.buffers.empty((positions(name),) + ((spec.width,) if spec.width > 1
                                                            else ()), spec.dtype)
             for name, spec in config.outputs.items()}
        valid = {name: np.empty(positions(name), dtype=bool) for name in config.outputs}
        cut = (np.cumsum(batch_rows) - batch_rows)[1:]
        return Block(places, np.split(sequence, cut), x, y, valid, {}, 0, axes,
                     ends=np.split(end, cut))

    def _copy(self, block: Block, chunk: Sequences, local: np.ndarray, end: np.ndarray,
              rows: np.ndarray, history: Mapping[str, tuple]) -> None:
        """Writes the windows `rows` of a block, whose sequences are `local` in `chunk`:
        each window's real history and its targets are runs of the chunk's flat arrays.
        `history` gets the history's labels of outputs scaled per window."""
        from seqpipe._internal.runs import copy_runs  # numba, imported with the first batch

        config, axes = self.config, self.axes
        base = chunk.offsets[local]
        start = end - self.horizon - self.history + 1  # of the history; < 0: padded
        lead = np.maximum(-start, 0)
        runs = {"timestep": (base + start + lead, rows * self.history + lead,
                             self.history - lead),
                "future": (base + end - self.horizon + 1, rows * self.horizon,
                           np.full(len(rows), self.horizon))}
        for name in config.inputs:
            values, out = chunk.features[name], block.x[name]
            if axes[name] == "sequence":
                put_per_sequence(values, local, out, rows)
            else:
                source, dest, count = runs[axes[name]]
                copy_runs(values, source, out, dest, count)
        for name in self._series_scales:
            put_per_sequence(chunk.features[name], local, block.x[name], rows)
        for name in config.outputs:
            if axes[name] == "sequence":
                put_per_sequence(chunk.labels[name], local, block.y[name], rows)
                block.valid[name][rows] = chunk.present[name][local]
                continue
            source, dest, count = runs[axes[name]]
            copy_runs(chunk.labels[name], source, block.y[name], dest, count)
            copy_runs(chunk.present[name], source, block.valid[name], dest, count)
        source, dest, count = runs["timestep"]
        for name, (labels, present) in history.items():
            copy_runs(chunk.labels[name], source, labels, dest, count)
            copy_runs(chunk.present[name], source, present, dest, count)

    def _scale(self, block: Block, end: np.ndarray, dest: np.ndarray,
               history: Mapping[str, tuple]) -> None:
        """Scales the inputs and labels scaled per window by each window's history (see
        `seqpipe.scaling`), and fills the inputs' missing values after scaling."""
        config, rows = self.config, int(block.places.rows.sum())
        real = np.zeros((rows, self.history), dtype=bool)  # empty rows: none
        lead = np.maximum(self.horizon + self.history - 1 - end, 0)
        real[dest] = np.arange(self.history)[None, :] >= lead[:, None]
        for name in self._by_window["inputs"]:
            spec = config.inputs[name]
            k = len(spec.columns)
            values = block.x[name].reshape(rows, self.history, spec.width)
            scales = window_scales(spec, values[:, :, :k], real)
            if name in self._window_scales:
                block.x[self._window_scales[name]][:] = np.stack(scale_columns(scales), axis=1)
            for j, column in enumerate(spec.columns):
                raw = values[:, :, j].astype(np.float64)
                scaled = (raw - scales.shift[j][:, None]) / scales.divisor[j][:, None]
                filled = np.where(np.isfinite(raw), scaled, spec.fill_for(column) or 0.0)
                values[:, :, j] = np.where(real, filled, config.padding.value)
        for name in self._by_window["outputs"]:
            output = config.outputs[name]
            labels, present = history[name]
            scales = window_scales(output, labels.reshape(rows, self.history, output.width),
                                   real & present.reshape(rows, self.history))
            y = block.y[name].reshape(rows, self.horizon, output.width)
            valid = block.valid[name].reshape(rows, self.horizon)
            for j in range(output.width):
                scaled = (y[:, :, j] - scales.shift[j][:, None]) / scales.divisor[j][:, None]
                y[:, :, j] = np.where(valid, scaled, y[:, :, j])
            block.scales[name] = (np.stack(scales.shift, axis=1),
                                  np.stack(scales.divisor, axis=1))
            if name in self._window_scales:
                block.x[self._window_scales[name]][:] = np.stack(scale_columns(scales), axis=1)

    def _pad(self, block: Block, end: np.ndarray, dest: np.ndarray) -> None:
        """Padding values (and weight 0) at the history timesteps before a sequence, and
        the mask, for the windows at rows `dest` of the block."""
        config = self.config
        lead = np.maximum(self.horizon + self.history - 1 - end, 0)
        if config.padding.mask:
            real = np.arange(self.history)[None, :] >= lead[:, None]
            block.x[config.padding.mask].reshape(-1, self.history)[dest] = real
        padded = np.flatnonzero(lead)
        if len(padded):
            pad_at(block, config, {"timestep": (dest[padded] * self.history, lead[padded])})

    def _empty(self, block: Block, rows: np.ndarray) -> None:
        """Rows of no window (`static_shapes`): padding everywhere, no label, no mask."""
        steps = {"timestep": self.history, "future": self.horizon, "sequence": 1}
        pad_at(block, self.config,
               {a: (rows * t, np.full(len(rows), t)) for a, t in steps.items()})


def _windows_of(config: PipelineConfig) -> WindowsConfig:
    if config.windows is None:
        raise ValueError("a window pipeline needs a config with a windows section")
    return config.windows
