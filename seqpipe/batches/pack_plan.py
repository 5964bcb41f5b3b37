"""Packing: the rows and batches of an epoch of packed rows.

The sequences are taken in windows of consecutive sequences (the shuffle buffer; the grid
moves by a random offset each epoch, as for buckets). Within a window they are packed
first fit decreasing: longest first (random ties), each into the first row with room for
it and fewer than `max_segments` sequences (`seqpipe._internal.runs.first_fit`). The
window's rows, after the few rows the last window left over, are cut into batches of
`batch_size` rows, which go out in random order; the rows that do not fill a batch go out
first in the next window's batches. A batch therefore draws on two windows at most, which
is what bounds memory when the source is streamed. What is left at the end is one batch of
fewer rows (filled with empty rows by the assembler), or dropped with `drop_remainder`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from seqpipe.batches.buckets import split_blocks

# Sequences packed together when the shuffle buffer is smaller (or off): first fit
# decreasing leaves little room over in rows once it has this many sequences to choose from.
PACKING_WINDOW = 1024


@dataclasses.dataclass(frozen=True)
class PackedPlan:
    """An epoch of packed rows. Item i is one sequence in a row; items are in batch, row
    and slot order.

    Attributes:
      sequence: (m,) each item's sequence (an index into the lengths planned over).
      batch, row, slot, offset: (m,) its batch, its row in the batch, its place among the
        row's sequences (segment id - 1) and its first timestep in the row.
      batches: batches in the epoch, empty ones included.
      blocks: (batches,) the assembly block of each batch, non-decreasing.
      rows: rows that hold a sequence.
      dropped_sequences: left out by `drop_remainder`.
    """

    sequence: np.ndarray
    batch: np.ndarray
    row: np.ndarray
    slot: np.ndarray
    offset: np.ndarray
    batches: int
    blocks: np.ndarray
    rows: int
    dropped_sequences: int

    def members(self) -> list:
        """The sequences of each batch, in row and slot order."""
        return np.split(self.sequence, self._batch_ends())

    def member_rows(self) -> list:
        """The row of each of `members`, batch by batch."""
        return np.split(self.row, self._batch_ends())

    def _batch_ends(self) -> np.ndarray:
        return np.cumsum(np.bincount(self.batch, minlength=self.batches))[:-1]

    def segments_per_row(self) -> np.ndarray:
        """(rows,) the sequences in each row that holds one."""
        counts = np.bincount(self.batch * (int(self.row.max(initial=0)) + 1) + self.row)
        return counts[counts > 0]


def plan_packed(lengths: np.ndarray, length: int, max_segments: int, batch_size: int,
                buffer: int, rng: Optional[np.random.Generator], drop_remainder: bool,
                batch_multiple: int = 1) -> PackedPlan:
    """Packs sequences of `lengths` (truncated, each at most `length`) into rows and cuts
    the rows into batches (see the module's docstring).

    Args:
      buffer: the shuffle buffer (sequences); the window is at least `PACKING_WINDOW`.
      rng: the epoch's random generator; None: no shuffle (windows from the first
        sequence, batches in the order packed).
      batch_multiple: the batches per epoch are made a multiple of it with empty batches
        (`batching.accumulation_steps`).
    """
    n = len(lengths)
    window = max(buffer, PACKING_WINDOW)
    offset = int(rng.integers(window)) if rng is not None and window < n else 0
    edges = np.unique(np.concatenate([[0], np.arange(window - offset, n, window), [n]]))
    tie = rng.random(n) if rng is not None else np.arange(n, dtype=np.float64)
    items: list = []  # per window: (sequence, row, slot, offset), rows numbered globally
    out: list = []  # rows in the order they go out
    block_of_batch: list = []
    waiting = np.empty(0, dtype=np.int64)
    opened = 0
    for block, (a, b) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
        from seqpipe._internal.runs import first_fit  # numba, imported with the first plan

        window_items = np.arange(a, b)
        window_items = window_items[np.lexsort((tie[window_items], -lengths[window_items]))]
        row, slot, start = first_fit(lengths[window_items], length, max_segments)
        items.append((window_items, row + opened, slot, start))
        rows = int(row.max(initial=-1)) + 1
        fresh = opened + (rng.permutation(rows) if rng is not None else np.arange(rows))
        opened += rows
        pool = np.concatenate([waiting, fresh])
        full = len(pool) // batch_size
        cut = pool[:full * batch_size].reshape(full, batch_size)
        if rng is not None:
            cut = cut[rng.permutation(full)]
        out.append(cut.reshape(-1))
        block_of_batch += [block] * full
        waiting = pool[full * batch_size:]
    if items:
        sequence, row, slot, start = (np.concatenate(part) for part in zip(*items))
    else:
        sequence = row = slot = start = np.empty(0, dtype=np.int64)
    dropped = 0
    if len(waiting) and drop_remainder:
        dropped = int(np.isin(row, waiting).sum())
    elif len(waiting):
        out.append(waiting)
        block_of_batch.append(block_of_batch[-1] if block_of_batch else 0)
    order = np.concatenate(out) if out else np.empty(0, np.int64)
    batches = -(-len(order) // batch_size)
    empty = -batches % batch_multiple
    block_of_batch += [block_of_batch[-1] if block_of_batch else 0] * empty
    place = np.full(opened, -1, dtype=np.int64)  # each row's place in the epoch's rows
    place[order] = np.arange(len(order))
    at = place[row]
    kept = at >= 0
    batch, in_batch = np.divmod(at[kept], batch_size)
    by = np.lexsort((slot[kept], in_batch, batch))
    return PackedPlan(sequence[kept][by], batch[by], in_batch[by], slot[kept][by],
                      start[kept][by], batches + empty,
                      split_blocks(np.asarray(block_of_batch, dtype=np.int64)),
                      len(order), dropped)


def packing_waste(plan: PackedPlan, lengths: np.ndarray, length: int,
                  batch_size: int) -> float:
    """Padded timesteps / all timesteps of the plan's batches, empty rows included."""
    total = plan.batches * batch_size * length
    return 1.0 - float(lengths[plan.sequence].sum()) / total if total else 0.0
