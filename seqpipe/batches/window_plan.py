"""Window plans: cuts every sequence into forecasting windows and plans an epoch of them.

A window is a sequence and an end: the position of its last target. Its targets are the
`horizon` timesteps up to the end (with horizon 0, its history's own), its history the
`history` timesteps before them, padded at the front where the sequence starts later. A
sequence's last window ends at its last timestep, earlier ones every `stride` before, while
at least `min_history` real history timesteps remain, so no window crosses into another
sequence.

Windows are never materialized: an epoch is a plan of window numbers, made a shuffle
buffer at a time (`plan_blocks`). Memory is bounded by the shuffle buffer, not by the
number of windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Optional

import numpy as np

from seqpipe import tuning
from seqpipe.config import WindowsConfig
from seqpipe.errors import DataError

# Window numbers planned at a time when the windows are not shuffled.
_UNSHUFFLED_BUFFER = 1 << 16


@dataclasses.dataclass(frozen=True)
class WindowCounts:
    """What cutting sequences into windows made, dropped and padded ."""

    windows: int  # windows per epoch (before drop_remainder)
    padded: int  # windows whose history starts before their sequence: padded at the front
    too_short_sequences: int  # sequences with no window: fewer than min_history + horizon
    too_short_timesteps: int  # their timesteps
    across_cutoff: int = 0  # windows in neither part of a time split: targets on both sides
    dropped_per_epoch: int = 0  # by batching.drop_remainder

    def changes(self) -> list[str]:
        changes = []
        if self.too_short_sequences:
            changes.append(f"dropped {self.too_short_sequences:,} sequences "
                           f"({self.too_short_timesteps:,} timesteps) too short for one "
                           f"window (windows.min_history + windows.horizon)")
        if self.across_cutoff:
            changes.append(f"left out {self.across_cutoff:,} windows whose targets straddle "
                           f"the split by time (split.time_cutoff or split.holdout_last)")
        if self.dropped_per_epoch:
            changes.append(f"drop_remainder leaves out {self.dropped_per_epoch:,} windows "
                           f"per epoch")
        return changes

    def __str__(self) -> str:
        line = (f"windows per epoch: {self.windows:,} ({self.padded:,} padded at the front, "
                f"history shorter than windows.history)")
        return "\n".join([line] + [f"windows: {c}" for c in self.changes()])


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
                      multiple: int = 1) -> int:
    """Batches of an epoch, made a multiple of `multiple` (see `plan_blocks`)."""
    batches = windows // batch_size + int(bool(windows % batch_size) and not drop_remainder)
    return batches + (-batches) % max(multiple, 1)


def plan_blocks(count: int, batch_size: int, buffer_size: int,
                rng: Optional[np.random.Generator], drop_remainder: bool,
                multiple: int = 1) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """The window numbers of each block of an epoch's batches, in the order they go out,
    each with the lowest window number a later block of the epoch may still need and the
    rows of each of the block's batches.

    Unshuffled, windows go out in order. Shuffled, the window numbers are cut into
    buffers of `buffer_size` rounded up to a multiple of `batch_size` (the grid moves by a
    random multiple of `batch_size` each epoch); each buffer's windows are permuted and cut
    into batches, so only the last batch of the epoch is smaller, and a block only draws on
    the sequences of one buffer. With `drop_remainder`, that last batch is left out.

    With a `multiple` (`batching.accumulation_steps`: the optimizer applies gradients every
    that many batches), the largest batches of the epoch's last buffer are halved until
    the batch count is a multiple of it; a last buffer shorter than `multiple` batches
    joins the one before it, so there is something to halve.

    Raises:
      DataError: too few windows to make a multiple of `multiple` batches.

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
    if multiple > 1 and len(edges) > 2 and edges[-1] - edges[-2] < multiple * batch_size:
        del edges[-2]
    extra = (-batches_per_epoch(count, batch_size, drop_remainder)) % max(multiple, 1)
    for a, b in zip(edges[:-1], edges[1:]):
        order = np.arange(a, b) if rng is None or not buffer_size else a + rng.permutation(b - a)
        if b == count and drop_remainder:
            order = order[:keep - a]
        rows = _batch_rows(len(order), batch_size, extra if b == edges[-1] else 0)
        yield from _blocks(order, rows, a if buffer_size and rng is not None else None)


def _batch_rows(windows: int, batch_size: int, extra: int) -> np.ndarray:
    """Rows of each batch of `windows` windows: full batches and the rest, then `extra`
    times the largest halved (the halves go last)."""
    rows = [batch_size] * (windows // batch_size) + ([windows % batch_size]
                                                     if windows % batch_size else [])
    for _ in range(extra):
        largest = max(range(len(rows)), key=lambda j: (rows[j], j)) if rows else None
        if largest is None or rows[largest] < 2:
            raise DataError(f"{windows:,} windows in the epoch's last shuffle buffer cannot be "
                            f"cut into {extra} more batches to make the batches per epoch a "
                            f"multiple of batching.accumulation_steps; use more data or "
                            f"fewer accumulation steps")
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


