"""Windows: cuts every sequence into forecasting windows, plans an epoch of them and
gathers their batches from the chunks as they stream in.

A window is a sequence and an end: the position of its last target. Its targets are the
`horizon` timesteps up to the end (with horizon 0, its history's own), its history the
`history` timesteps before them, padded at the front where the sequence starts later. A
sequence's last window ends at its last timestep, earlier ones every `stride` before, while
at least `min_history` real history timesteps remain, so no window crosses into another
sequence.

Windows are never materialized: an epoch is a plan of window numbers, made a shuffle
buffer at a time, and each block of batches is gathered from the few chunks of sequences its
windows lie in: a window's history and targets are runs of a chunk's flat arrays, copied by
the compiled `copy_runs`. Memory is bounded by the shuffle buffer and the row groups, not
by the number of windows.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional

import numpy as np

from seqpipe import tuning
from seqpipe._internal.buffers import SHARED, BufferPool
from seqpipe.assemble import BatchPlaces, Block, pad_at, put_per_sequence, weigh
from seqpipe.config import PipelineConfig, WindowsConfig
from seqpipe.errors import DataError
from seqpipe.report import WindowCounts
from seqpipe.sequences import Sequences, ranges

# Window numbers planned at a time when the windows are not shuffled.
_UNSHUFFLED_BUFFER = 1 << 16


@dataclasses.dataclass(frozen=True)
class Windows:
    """The windows of one part, numbered 0..len-1 by sequence, then by end.

    Attributes:
      members: (m,) index (into the source's index) of each sequence with windows in the
        part, ascending.
      first_end: (m,) the end of each member's first window in the part.
      offsets: (m + 1,) member i has windows `offsets[i]:offsets[i + 1]`.
      config: the windows section.
    """

    members: np.ndarray
    first_end: np.ndarray
    offsets: np.ndarray
    config: WindowsConfig

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sequence index, end) of each window number."""
        member = np.searchsorted(self.offsets, numbers, side="right") - 1
        ends = self.first_end[member] + (numbers - self.offsets[member]) * self.config.stride
        return self.members[member], ends

    def counts(self) -> np.ndarray:
        """(m,) windows of each member."""
        return np.diff(self.offsets)

    def spans(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) per sequence of the index (n of them) of the timesteps the part's
        windows cover, from the first window's first history timestep to the last window's
        end; 0 for sequences without windows."""
        w = self.config
        last_end = self.first_end + (self.counts() - 1) * w.stride
        first = np.maximum(self.first_end - w.horizon - w.history + 1, 0)
        start, length = np.zeros(n, np.int64), np.zeros(n, np.int64)
        start[self.members], length[self.members] = first, last_end + 1 - first
        return start, length


def all_windows(lengths: np.ndarray, w: WindowsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(count, first end) of every sequence's windows, anchored at its end.

    Example:
      >>> count, first = all_windows(np.array([3, 10]), WindowsConfig(history=4, horizon=2))
      >>> count.tolist(), first.tolist()
      ([0, 5], [2, 5])
    """
    lowest_end = w.shortest + w.horizon - 1  # the first end with min_history real steps
    last = lengths.astype(np.int64) - 1
    count = np.where(last >= lowest_end, (last - lowest_end) // w.stride + 1, 0)
    return count, last - (np.maximum(count, 1) - 1) * w.stride


def part_windows(lengths: np.ndarray, w: WindowsConfig, in_part: np.ndarray,
                 part: Optional[str] = None,
                 before: Optional[np.ndarray] = None) -> tuple[Windows, WindowCounts]:
    """The windows of a part and what was dropped or padded on the way.

    Args:
      lengths: (n,) every sequence's timesteps.
      w: the windows section.
      in_part: (n,) the sequences the part may take windows from (its id split and shard).
      part: 'train' or 'validation' with `before`; else unused.
      before: (n,) timesteps before `split.time_cutoff` in each sequence: train keeps the
        windows whose every target is before the cutoff, validation those whose first
        target is at or after it.
    """
    count, first_end = all_windows(lengths, w)
    low, high, across = np.zeros_like(count), count, 0
    if before is not None:
        train_high, validation_low = _cutoff_ranges(count, first_end, before, w)
        low, high = ((low, train_high) if part == "train" else (validation_low, count))
        across = int(np.where(in_part, np.maximum(validation_low - train_high, 0), 0).sum())
    taken = np.where(in_part, np.maximum(high - low, 0), 0)
    members = np.flatnonzero(taken)
    windows = Windows(members, (first_end + low * w.stride)[members],
                      np.concatenate([[0], np.cumsum(taken[members])]).astype(np.int64), w)
    too_short = in_part & (count == 0)
    return windows, WindowCounts(
        windows=len(windows), padded=_padded(windows, w),
        too_short_sequences=int(too_short.sum()),
        too_short_timesteps=int(lengths[too_short].sum()), across_cutoff=across)


def _cutoff_ranges(count: np.ndarray, first_end: np.ndarray, before: np.ndarray,
                   w: WindowsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence, the train windows `0:train_high` (every target before the cutoff: end
    <= before - 1) and the validation windows `validation_low:count` (the first target, the
    first real one with horizon 0, at or after it)."""
    train_high = np.clip((before - 1 - first_end) // w.stride + 1, 0, count)
    threshold = np.where(before > 0, before + w.targets - 1, np.iinfo(np.int64).min // 4)
    validation_low = np.clip(-((first_end - threshold) // w.stride), 0, count)
    return train_high, validation_low


def _padded(windows: Windows, w: WindowsConfig) -> int:
    """Windows whose history starts before their sequence: ends below history + horizon - 1."""
    full = w.history + w.horizon - 1
    below = np.clip(-((windows.first_end - full) // w.stride), 0, windows.counts())
    return int(below.sum())


def padded_history(windows: Windows) -> int:
    """History timesteps of every window that lie before its sequence: padding."""
    w = windows.config
    return sum(int(np.maximum(w.history + w.horizon - 1 - end, 0).sum())
               for _, end in _every_window(windows))


def _every_window(windows: Windows) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sequence, end) of every window, a slice at a time, so that a pass over millions
    of windows holds a few MB."""
    step = 1 << 20
    for a in range(0, len(windows), step):
        yield windows.locate(np.arange(a, min(a + step, len(windows))))


def batches_per_epoch(windows: int, batch_size: int, drop_remainder: bool,
                      replicas: int = 1) -> int:
    """Batches of an epoch; with several replicas, a multiple of them (see `plan_blocks`)."""
    batches = windows // batch_size + int(bool(windows % batch_size) and not drop_remainder)
    return batches + (-batches) % max(replicas, 1)


def plan_blocks(count: int, batch_size: int, buffer_size: int,
                rng: Optional[np.random.Generator], drop_remainder: bool,
                replicas: int = 1) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """The window numbers of each block of an epoch's batches, in the order they go out,
    each with the lowest window number a later block of the epoch may still need and the
    rows of each of the block's batches.

    Unshuffled, windows go out in order. Shuffled, the window numbers are cut into
    buffers of `buffer_size` rounded up to a multiple of `batch_size` (the grid moves by a
    random multiple of `batch_size` each epoch); each buffer's windows are permuted and cut
    into batches, so only the last batch of the epoch is smaller, and a block only draws on
    the sequences of one buffer. With `drop_remainder`, that last batch is left out.

    With several `replicas` (tf.distribute hands each one batch per step, and cannot share
    out a step it cannot fill), the largest batches of the epoch's last buffer are halved
    until the batch count is a multiple of the replicas; a last buffer shorter than
    `replicas` batches joins the one before it, so there is something to halve.

    Raises:
      DataError: too few windows for that many replicas to start on full batches.

    Example:
      >>> [b.tolist() for b, _, _ in plan_blocks(5, 2, 0, None, drop_remainder=True)]
      [[0, 1, 2, 3]]
    """
    keep = count - (count % batch_size if drop_remainder else 0)
    if rng is None or not buffer_size:
        per_block = batch_size * tuning.TUNING.batches_per_block
        step = per_block * max(1, _UNSHUFFLED_BUFFER // per_block)  # whole batches
        edges = list(range(0, keep, step)) + [keep]
    else:
        buffer = -(-buffer_size // batch_size) * batch_size
        offset = batch_size * int(rng.integers(buffer // batch_size)) if buffer < count else 0
        edges = np.unique(np.concatenate([[0], np.arange(offset, count, buffer), [count]])
                          ).tolist()
    if replicas > 1 and len(edges) > 2 and edges[-1] - edges[-2] < replicas * batch_size:
        del edges[-2]
    extra = (-batches_per_epoch(count, batch_size, drop_remainder)) % max(replicas, 1)
    leading: list = []  # the rows of the epoch's first `replicas` batches
    for a, b in zip(edges[:-1], edges[1:]):
        order = np.arange(a, b) if rng is None or not buffer_size else a + rng.permutation(b - a)
        if b == count and drop_remainder:
            order = order[:keep - a]
        rows = _batch_rows(len(order), batch_size, extra if b == edges[-1] else 0)
        if replicas > 1 and len(leading) < replicas:
            leading += rows[:replicas - len(leading)].tolist()
            if b == edges[-1] or len(leading) == replicas:
                _check_leading(leading, replicas, batch_size, count)
        yield from _blocks(order, rows, a if buffer_size and rng is not None else None)


def _check_leading(leading: list, replicas: int, batch_size: int, count: int) -> None:
    if len(leading) < replicas or any(r != batch_size for r in leading):
        raise DataError(
            f"{count:,} windows cannot start {replicas} replicas on full batches of "
            f"{batch_size}: Keras builds the model from the first batch of every replica, "
            f"which must share one shape. Use more data or a smaller batch_size.")


def _batch_rows(windows: int, batch_size: int, extra: int) -> np.ndarray:
    """Rows of each batch of `windows` windows: full batches and the rest, then `extra`
    times the largest halved (the halves go last)."""
    rows = [batch_size] * (windows // batch_size) + ([windows % batch_size]
                                                     if windows % batch_size else [])
    for _ in range(extra):
        largest = max(range(len(rows)), key=lambda j: (rows[j], j)) if rows else None
        if largest is None or rows[largest] < 2:
            raise DataError(f"{windows:,} windows in the epoch's last shuffle buffer cannot be "
                            f"cut into {extra} more batches for the replicas; use more data")
        half = rows.pop(largest)
        rows += [(half + 1) // 2, half // 2]
    return np.asarray(rows, dtype=np.int64)


def _blocks(order: np.ndarray, rows: np.ndarray,
            low: Optional[int]) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """`order` cut into blocks of `Tuning.batches_per_block` batches of `rows` each."""
    per_block = tuning.TUNING.batches_per_block
    ends = np.cumsum(rows)
    for i in range(0, len(rows), per_block):
        a = int(ends[i - 1]) if i else 0
        b = int(ends[min(i + per_block, len(rows)) - 1])
        block = order[a:b]
        yield block, (int(block[0]) if low is None else low), rows[i:i + per_block]


def valid_targets(windows: Windows, present: np.ndarray, offsets: np.ndarray,
                  level: str) -> int:
    """Present labels of one output over every window's targets (a label in several windows
    counts in each): `global_mean`'s numerator."""
    if level == "sequence":
        return int((windows.counts() * present[windows.members]).sum())
    targets = windows.config.targets
    cumulative = np.concatenate([[0], np.cumsum(present, dtype=np.int64)])
    total = 0
    for sequence, end in _every_window(windows):
        base = offsets[sequence]
        total += int((cumulative[base + end + 1]
                      - cumulative[base + np.maximum(end - targets + 1, 0)]).sum())
    return total


class WindowAssembler:
    """Gathers the planned blocks of window batches from chunks of sequences, in source
    order. Holds the chunks the current shuffle buffer's windows lie in, no more.

    Args:
      config: the pipeline config (with a windows section).
      windows: the part's windows.
      plan: `plan_blocks` of the epoch: each block's window numbers, the lowest window a
        later block needs, and the rows of each batch.
      lengths: (n,) every sequence's timesteps, to notice a source that changed.
      mean_valid: output -> valid labels per batch over the epoch (for global_mean).
      buffers: where the blocks' arrays come from.
    """

    def __init__(self, config: PipelineConfig, windows: Windows,
                 plan: Iterable[tuple[np.ndarray, int, np.ndarray]], lengths: np.ndarray,
                 mean_valid: Mapping[str, float], buffers: BufferPool = SHARED) -> None:
        self.config, self.windows, self.plan = config, windows, plan
        self.lengths, self.mean_valid, self.buffers = lengths, mean_valid, buffers
        w = _windows_of(config)
        self.history, self.horizon = w.history, w.horizon

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
        # static_shapes: every batch has batch_size rows, those past its windows empty.
        shape_rows = (np.full_like(batch_rows, self.config.batching.batch_size)
                      if self.config.batching.static_shapes else batch_rows)
        empty = shape_rows - batch_rows
        dest = np.arange(len(sequence)) + np.repeat(np.cumsum(empty) - empty, batch_rows)
        block = self._allocate(sequence, end, batch_rows, shape_rows)
        firsts = np.array([first for first, _ in held])
        where = np.searchsorted(firsts, sequence, side="right") - 1
        for c in np.unique(where).tolist():
            first, chunk = held[c]
            rows = (np.arange(len(sequence)) if len(held) == 1
                    else np.flatnonzero(where == c))
            self._copy(block, chunk, sequence[rows] - first, end[rows], dest[rows])
        self._pad(block, end, dest)
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
        axes = config.axes

        def positions(name):
            return rows if axes[name] == "sequence" else rows * steps[axes[name]]

        x = {name: self.buffers.empty((positions(name), *spec.tail), spec.dtype)
             for name, spec in config.inputs.items()}
        if config.padding.mask:
            x[config.padding.mask] = np.empty(rows * self.history, dtype=bool)
        y = {name: self.buffers.empty((positions(name),) + ((spec.width,) if spec.width > 1
                                                            else ()), spec.dtype)
             for name, spec in config.outputs.items()}
        valid = {name: np.empty(positions(name), dtype=bool) for name in config.outputs}
        cut = (np.cumsum(batch_rows) - batch_rows)[1:]
        return Block(places, np.split(sequence, cut), x, y, valid, {}, 0, config.levels,
                     ends=np.split(end, cut))

    def _copy(self, block: Block, chunk: Sequences, local: np.ndarray, end: np.ndarray,
              rows: np.ndarray) -> None:
        """Writes the windows `rows` of a block, whose sequences are `local` in `chunk`:
        each window's real history and its targets are runs of the chunk's flat arrays."""
        from seqpipe._internal.runs import copy_runs  # numba, imported with the first batch

        config, axes = self.config, self.config.axes
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
        for name in config.outputs:
            if axes[name] == "sequence":
                put_per_sequence(chunk.labels[name], local, block.y[name], rows)
                block.valid[name][rows] = chunk.present[name][local]
                continue
            source, dest, count = runs[axes[name]]
            copy_runs(chunk.labels[name], source, block.y[name], dest, count)
            copy_runs(chunk.present[name], source, block.valid[name], dest, count)

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
            pad_at(block, config, {"timestep": ranges(dest[padded] * self.history,
                                                      lead[padded])})

    def _empty(self, block: Block, rows: np.ndarray) -> None:
        """Rows of no window (`static_shapes`): padding everywhere, no label, no mask."""
        steps = {"timestep": self.history, "future": self.horizon, "sequence": 1}
        pad_at(block, self.config,
               {a: ranges(rows * t, np.full(len(rows), t)) for a, t in steps.items()})


def _windows_of(config: PipelineConfig) -> WindowsConfig:
    if config.windows is None:
        raise ValueError("a window pipeline needs a config with a windows section")
    return config.windows
