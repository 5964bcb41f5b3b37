"""Batching: truncates, buckets, plans the batches of an epoch and pads them.

Truncation moves no data: it only narrows each sequence to a window `(start, length)` of
the flat timestep arrays. Padding gathers a whole batch at once with index arithmetic, so
each padded batch is written exactly once. Truncation and padding follow
`keras.utils.pad_sequences` (`maxlen`, `padding` = `side`, `truncating`, `value`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from seqpipe.config import BatchingConfig, PaddingConfig, ShuffleConfig

MAX_AUTO_BUCKETS = 8
# "auto" stops adding buckets once one more would cut padding by less than this share of
# the padded timesteps: each bucket costs a partial batch and less mixing of lengths.
AUTO_BUCKET_GAIN = 0.01
# Lengths considered as bucket edges by "auto"; quantiles beyond this many distinct lengths.
AUTO_CANDIDATES = 512


@dataclasses.dataclass(frozen=True)
class Windows:
    """Each sequence's kept timesteps: flat indices `start[i] : start[i] + length[i]`."""

    start: np.ndarray
    length: np.ndarray


def truncate(offsets: np.ndarray, padding: PaddingConfig) -> Windows:
    """Keeps at most `padding.maxlen` timesteps per sequence, from the end `truncating` spares.

    Example:
      >>> w = truncate(np.array([0, 3, 8]), PaddingConfig(maxlen=4, truncating="pre"))
      >>> w.start.tolist(), w.length.tolist()
      ([0, 4], [3, 4])
    """
    lengths = np.diff(offsets)
    kept = lengths if padding.maxlen is None else np.minimum(lengths, padding.maxlen)
    start = offsets[:-1] + (lengths - kept if padding.truncating == "pre" else 0)
    return Windows(start.astype(np.int64), kept.astype(np.int64))


def bucket_of(lengths: np.ndarray, boundaries) -> np.ndarray:
    """Bucket i holds lengths in [boundaries[i-1], boundaries[i]), like tf.data's
    `bucket_by_sequence_length`; lengths past the last boundary share one more bucket."""
    if not boundaries:
        return np.zeros(len(lengths), dtype=np.int64)
    return np.searchsorted(np.asarray(boundaries), lengths, side="right")


def auto_boundaries(lengths: np.ndarray) -> tuple[int, ...]:
    """Bucket boundaries that minimise padding when each batch pads to its bucket's longest.

    Tries 1 to `MAX_AUTO_BUCKETS` buckets (an exact dynamic programme over candidate edges)
    and keeps the fewest whose padding is within `AUTO_BUCKET_GAIN` of the best.

    Example:
      >>> auto_boundaries(np.array([2, 2, 2, 100, 100]))
      (3,)
    """
    ordered = np.sort(lengths)
    values = np.unique(ordered)
    if len(values) > AUTO_CANDIDATES:
        values = np.unique(np.quantile(ordered, np.linspace(0, 1, AUTO_CANDIDATES),
                                       method="higher")).astype(np.int64)
    # count[j + 1], real[j + 1]: how many lengths are <= values[j], and their sum.
    count = np.searchsorted(ordered, np.concatenate([[-1], values]), side="right")
    real = np.concatenate([[0], np.cumsum(ordered)])[count]
    # cost[a, j]: padding of one bucket of the lengths in (values[a-1], values[j]], all
    # padded to values[j]; infinite where a > j (an empty bucket).
    a, j = np.arange(len(values))[:, None], np.arange(len(values))[None, :]
    cost = values[j] * (count[j + 1] - count[a]) - (real[j + 1] - real[a])
    cost = np.where(a <= j, cost, np.inf)
    best = cost[0]
    choices, totals = [None], [best[-1]]
    for _ in range(1, min(MAX_AUTO_BUCKETS, len(values))):
        # a new last bucket starts after candidate i, where the previous buckets end.
        candidates = best[:-1, None] + cost[1:, :]
        choices.append(np.argmin(candidates, axis=0))
        best = candidates[choices[-1], np.arange(len(values))]
        totals.append(best[-1])
    enough = min(totals) + AUTO_BUCKET_GAIN * (float(ordered.sum()) + min(totals))
    extra_buckets = next(k for k, total in enumerate(totals) if total <= enough)
    ends, end = [], len(values) - 1
    for k in range(extra_buckets, 0, -1):
        end = int(choices[k][end])
        ends.append(end)
    return tuple(int(values[e]) + 1 for e in reversed(ends))


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch, as arrays of sequence indices, in the order they go out."""

    batches: list
    dropped_sequences: int  # left out by drop_remainder


def plan_epoch(buckets: np.ndarray, batching: BatchingConfig, shuffle: ShuffleConfig,
               rng: np.random.Generator | None) -> EpochPlan:
    """Groups sequences into batches of one bucket each and orders the batches.

    Without shuffle, sequences keep their order and batches go out in the order of their
    first sequence. With shuffle, sequences are shuffled within windows of
    `shuffle.buffer_size` consecutive sequences, then the batches are shuffled.
    """
    n = len(buckets)
    order = np.arange(n)
    if shuffle.buffer_size and rng is not None:
        order = _window_shuffle(n, shuffle.buffer_size, rng)
    order = order[np.argsort(buckets[order], kind="stable")]
    cuts = _batch_cuts(buckets[order], batching.batch_size)
    batches = np.split(order, cuts)[:len(cuts) + 1]
    dropped = 0
    if batching.drop_remainder:
        dropped = sum(len(b) for b in batches if len(b) < batching.batch_size)
        batches = [b for b in batches if len(b) == batching.batch_size]
    if shuffle.buffer_size and rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
        batches.sort(key=lambda b: b[0])
    return EpochPlan(batches, dropped)


def _window_shuffle(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    if window >= n:
        return rng.permutation(n)
    keys = np.arange(n) // window + rng.random(n)
    return np.argsort(keys, kind="stable")


def _batch_cuts(sorted_buckets: np.ndarray, batch_size: int) -> np.ndarray:
    """Split points: a new batch every batch_size sequences and at every bucket change."""
    run_starts = np.flatnonzero(np.diff(sorted_buckets)) + 1
    run_edges = np.concatenate([[0], run_starts, [len(sorted_buckets)]])
    cuts = [np.arange(a, b, batch_size) for a, b in zip(run_edges[:-1], run_edges[1:])]
    return np.concatenate(cuts)[1:]


def padding_waste(lengths: np.ndarray, batches: list) -> float:
    """Padded timesteps / all timesteps over the given batches (each padded to its longest)."""
    if not batches:
        return 0.0
    sizes = np.array([len(b) for b in batches])
    members = lengths[np.concatenate(batches)]
    longest = np.maximum.reduceat(members, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    total = float((sizes * longest).sum())
    return 1.0 - float(members.sum()) / total if total else 0.0


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Where the timesteps of one batch go: `padded[row, col] = flat[source]`."""

    row: np.ndarray
    col: np.ndarray
    source: np.ndarray
    shape: tuple[int, int]  # (batch, time)


def layout_batch(indices: np.ndarray, windows: Windows, side: str) -> BatchLayout:
    """Computes once per batch where every kept timestep lands in the padded batch."""
    lengths = windows.length[indices]
    steps = int(lengths.max())
    row = np.repeat(np.arange(len(indices)), lengths)
    first = np.cumsum(lengths) - lengths
    within = np.arange(int(lengths.sum())) - first[row]
    source = windows.start[indices][row] + within
    col = within + (steps - lengths)[row] if side == "pre" else within
    return BatchLayout(row, col, source, (len(indices), steps))


def pad(flat: np.ndarray, layout: BatchLayout, value) -> np.ndarray:
    """Pads flat timestep values `(timesteps, ...)` into `(batch, time, ...)`."""
    padded = np.full(layout.shape + flat.shape[1:], value, dtype=flat.dtype)
    padded[layout.row, layout.col] = flat[layout.source]
    return padded
