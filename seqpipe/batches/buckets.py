"""Buckets: sorts whole sequences into buckets by length and plans the batches of an epoch.

`seqpipe.batches.whole` pads the planned batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading

import numpy as np

from seqpipe import tuning
from seqpipe.config import BatchingConfig, ShuffleConfig
from seqpipe.errors import DataError

MAX_AUTO_BUCKETS = 8
# "auto" stops adding buckets once one more would cut padding by less than this share of
# the padded timesteps: each bucket costs a partial batch and less mixing of lengths.
AUTO_BUCKET_GAIN = 0.01
# Lengths considered as bucket edges by "auto"; quantiles beyond this many distinct lengths.
AUTO_CANDIDATES = 512


def bucket_of(lengths: np.ndarray, boundaries) -> np.ndarray:
    """Bucket i holds lengths in [boundaries[i-1], boundaries[i]), like tf.data's
    `bucket_by_sequence_length`; lengths past the last boundary share one more bucket."""
    if not boundaries:
        return np.zeros(len(lengths), dtype=np.int64)
    return np.searchsorted(np.asarray(boundaries), lengths, side="right")


def padded_lengths(boundaries: tuple[int, ...], maxlen: int) -> np.ndarray:
    """With `static_shapes`, the timesteps every batch of each bucket pads to: the longest
    length the bucket holds (its upper boundary - 1), the last bucket `maxlen`. As tf.data's
    `bucket_by_sequence_length(pad_to_bucket_boundary=True)`, with a last bucket.

    Example:
      >>> padded_lengths((10, 50), 200).tolist()
      [9, 49, 200]
    """
    return np.minimum(np.array(list(boundaries) + [maxlen + 1], dtype=np.int64) - 1, maxlen)


def auto_boundaries(lengths: np.ndarray, last: int | None = None,
                    batch_size: int = 0) -> tuple[int, ...]:
    """Bucket boundaries that minimise padding when each batch pads to its bucket's longest.

    With `static_shapes` (`last` = maxlen, and the `batch_size`), under that rule instead:
    the last bucket pads to `last` (every other one already pads to its boundary - 1), and
    each bucket's last batch of an epoch, half empty on average, counts as `batch_size / 2`
    empty rows of its padded length.

    Tries 1 to `MAX_AUTO_BUCKETS` buckets (an exact dynamic programme over candidate edges)
    and keeps the fewest whose padding is within `AUTO_BUCKET_GAIN` of the best. The answer
    for the last few sets of lengths is kept: a dataset built again over the same data (one
    per epoch, per fold) does not solve it again.

    Example:
      >>> auto_boundaries(np.array([2, 2, 2, 100, 100]))
      (3,)
    """
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    key = (hashlib.blake2b(lengths.data, digest_size=16).digest(), last, batch_size)
    with _AUTO_LOCK:
        found = _AUTO.get(key)
    if found is None:
        # outside the lock: pipelines build in parallel
        found = _solve_boundaries(lengths, last, batch_size)
        with _AUTO_LOCK:
            _AUTO[key] = found
            while len(_AUTO) > tuning.TUNING.auto_kept:
                _AUTO.pop(next(iter(_AUTO)))
    return found


# Answers of `auto_boundaries` kept, by a digest of the lengths; the oldest go first.
# Process-wide, as a cache: pipelines built in several threads share it under the lock.
_AUTO: dict = {}
_AUTO_LOCK = threading.Lock()


def _solve_boundaries(lengths: np.ndarray, last: int | None,
                      batch_size: int) -> tuple[int, ...]:
    ordered = np.sort(lengths)
    values = np.unique(ordered)
    if len(values) > AUTO_CANDIDATES:
        values = np.unique(np.quantile(ordered, np.linspace(0, 1, AUTO_CANDIDATES),
                                       method="higher")).astype(np.int64)
    padded_to = values.copy()  # what a bucket ending at each candidate pads to
    if last is not None and len(values):
        padded_to[-1] = max(last, int(values[-1]))
    # count[j + 1], real[j + 1]: how many lengths are <= values[j], and their sum.
    count = np.searchsorted(ordered, np.concatenate([[-1], values]), side="right")
    real = np.concatenate([[0], np.cumsum(ordered)])[count]
    # cost[j, a]: padding of one bucket of the lengths in (values[a-1], values[j]], all
    # padded to values[j]; infinite where a > j (an empty bucket). Rows by the bucket's
    # end, so that each step below takes its minimum along contiguous rows.
    j, a = np.arange(len(values))[:, None], np.arange(len(values))[None, :]
    empty_rows = batch_size / 2 if last is not None else 0
    cost = padded_to[j] * (count[j + 1] - count[a] + empty_rows) - (real[j + 1] - real[a])
    cost = np.where(a <= j, cost, np.inf)
    best = cost[:, 0].copy()
    choices: list = [None]  # choices[k]: where bucket k starts, for k extra buckets
    totals = [best[-1]]
    step = np.empty((len(values), max(len(values) - 1, 0)))
    rows = np.arange(len(values))
    for _ in range(1, min(MAX_AUTO_BUCKETS, len(values))):
        # a new last bucket starts after candidate i, where the previous buckets end.
        np.add(cost[:, 1:], best[:-1], out=step)
        choices.append(np.argmin(step, axis=1))
        best = step[rows, choices[-1]]
        totals.append(best[-1])
    enough = min(totals) + AUTO_BUCKET_GAIN * (float(ordered.sum()) + min(totals))
    extra_buckets = next(k for k, total in enumerate(totals) if total <= enough)
    ends, end = [], len(values) - 1
    for k in range(extra_buckets, 0, -1):
        end = int(choices[k][end])
        ends.append(end)
    return tuple(int(values[e]) + 1 for e in reversed(ends))


def batch_sizes(lengths: np.ndarray, buckets: np.ndarray, n_buckets: int,
                batching: BatchingConfig, padded: np.ndarray | None = None) -> np.ndarray:
    """Sequences per batch in each bucket: `batch_size`, lowered by `max_timesteps` so that a
    batch padded to its bucket's longest sequence (or to `padded[bucket]`, with
    `static_shapes`) holds at most that many timesteps.

    Example:
      >>> batch_sizes(np.array([3, 10, 40]), np.array([0, 1, 1]), 2,
      ...             BatchingConfig(batch_size=8, max_timesteps=100)).tolist()
      [8, 2]
    """
    sizes = np.full(n_buckets, batching.batch_size, dtype=np.int64)
    if batching.max_timesteps is not None:
        if padded is not None:
            longest = np.asarray(padded, dtype=np.int64)
        else:
            longest = np.zeros(n_buckets, dtype=np.int64)
            np.maximum.at(longest, buckets, lengths)
        sizes = np.minimum(sizes, batching.max_timesteps // np.maximum(longest, 1))
    return np.maximum(sizes, 1)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch, as arrays of sequence indices, in the order they go out.

    `blocks[k]` is the assembly block of batch k, non-decreasing: a block's batches are
    padded together and only draw on sequences near each other in the source, which is
    what bounds memory when the source is streamed.
    """

    batches: list
    blocks: np.ndarray
    dropped_sequences: int  # left out by drop_remainder



def plan_epoch(lengths: np.ndarray, buckets: np.ndarray, sizes: np.ndarray,
               batching: BatchingConfig, shuffle: ShuffleConfig,
               rng: np.random.Generator | None) -> EpochPlan:
    """Groups sequences into batches of one bucket each and orders the batches.

    Without shuffle, each bucket fills batches in sequence order and a batch goes out as
    soon as it is full, like tf.data's `bucket_by_sequence_length`. With shuffle, the
    sequences are cut into shuffle buffers of `shuffle.buffer_size` consecutive sequences (the grid
    moves by a random offset each epoch). Within a buffer each bucket's sequences are
    sorted by length, with random ties, and cut into batches, so a batch pads little; the
    buffer's batches are shuffled. What does not fill a batch waits for the next buffer;
    there the sequences left over again are chosen among those that did not wait, and,
    when too many waited for that, among those that waited least. So a sequence waits
    more than one buffer only in a bucket too rare to fill a batch from one, and an epoch
    resumed part way reads little more than the buffers from the one before its batch on.

    Args:
      lengths: (n,) timesteps of each sequence after truncation.
      buckets: (n,) bucket of each sequence.
      sizes: sequences per batch in each bucket (see `batch_sizes`).
      batching: for `drop_remainder`.
      shuffle: for `buffer_size`.
      rng: the epoch's random generator; None means no shuffle.
    """
    if shuffle.buffer_size and rng is not None:
        batches, blocks, left = _shuffled(lengths, buckets, sizes, shuffle.buffer_size, rng)
    else:
        batches, blocks, left = _in_order(buckets, sizes)
    dropped = 0
    if batching.drop_remainder:
        dropped = sum(len(b) for b in left)
        left = []
    batches, blocks = batches + left, blocks + [blocks[-1] if blocks else 0] * len(left)
    return EpochPlan(batches, split_blocks(np.asarray(blocks, dtype=np.int64)), dropped)



def in_multiples(plan: EpochPlan, multiple: int) -> EpochPlan:
    """The plan with its largest batches halved until the batch count is a multiple of
    `multiple` (`batching.accumulation_steps`: the optimizer applies gradients every that
    many batches).

    Raises:
      DataError: too few sequences to make that many batches.

    >>> plan = EpochPlan([np.arange(4), np.arange(4, 6), np.arange(6, 7)], np.zeros(3, int), 0)
    >>> [b.tolist() for b in in_multiples(plan, 2).batches]
    [[0, 1], [2, 3], [4, 5], [6]]
    """
    batches, blocks = list(plan.batches), list(plan.blocks)
    while len(batches) % multiple:
        k = max(range(len(batches)), key=lambda j: len(batches[j]))
        if len(batches[k]) < 2:
            raise DataError(f"{len(batches)} sequences cannot be cut into a multiple of "
                            f"batching.accumulation_steps={multiple} batches; use more data "
                            f"or fewer accumulation steps")
        half = (len(batches[k]) + 1) // 2
        batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
        blocks[k:k + 1] = [blocks[k]] * 2
    return dataclasses.replace(plan, batches=batches, blocks=np.asarray(blocks, dtype=np.int64))


def split_blocks(blocks: np.ndarray) -> np.ndarray:
    """Consecutive block numbers, with each block cut into runs of
    `Tuning.batches_per_block`."""
    if not len(blocks):
        return blocks
    starts = np.flatnonzero(np.concatenate([[True], blocks[1:] != blocks[:-1]]))
    sizes = np.diff(np.append(starts, len(blocks)))
    within = np.arange(len(blocks)) - np.repeat(starts, sizes)
    full = within[1:] % tuning.TUNING.batches_per_block == 0
    runs = np.concatenate([[True], (blocks[1:] != blocks[:-1]) | full])
    return np.cumsum(runs) - 1


def _shuffled(lengths, buckets, sizes, buffer, rng):
    n = len(lengths)
    offset = int(rng.integers(buffer)) if buffer < n else 0
    edges = np.unique(np.concatenate([[0], np.arange(buffer - offset, n, buffer), [n]]))
    tie = rng.random(n)
    batches, blocks = [], []
    waiting = np.empty(0, dtype=np.int64)
    for block, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        pool = np.concatenate([waiting, np.arange(a, b)])
        pool = pool[np.lexsort((tie[pool], lengths[pool], buckets[pool]))]
        waited = block - (np.searchsorted(edges, pool, side="right") - 1)  # buffers
        full, rest = _cut(pool, buckets[pool], waited, sizes, rng)
        batches += [full[i] for i in rng.permutation(len(full))]
        blocks += [block] * len(full)
        waiting = np.concatenate(rest) if rest else waiting[:0]
    # What never filled a batch: one smaller batch per bucket, last.
    return batches, blocks, [r for r in rest if len(r)] if n else []


def _cut(pool, pool_buckets, waited, sizes, rng):
    """Full batches from each bucket's run of `pool` (sorted by length), and what is left
    of each run. The left-over sequences come from both ends of a run (random split) among
    those that have not `waited` (buffers), so that neither the shortest nor the longest
    of a bucket always waits; when too few have not, the ones that waited least."""
    edges = np.concatenate([[0], np.flatnonzero(np.diff(pool_buckets)) + 1, [len(pool)]])
    full, rest = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        run, size = pool[a:b], int(sizes[pool_buckets[a]])
        left = len(run) % size
        fresh = np.flatnonzero(waited[a:b] == 0)
        if left > len(fresh):
            out = np.sort(np.argsort(waited[a:b], kind="stable")[:left])
        else:
            skip = int(rng.integers(left + 1))
            out = np.concatenate([fresh[:skip], fresh[len(fresh) - (left - skip):]])
        full += list(np.delete(run, out).reshape(-1, size))
        rest.append(run[out])
    return full, rest


def _in_order(buckets, sizes):
    batches = []
    for bucket in np.unique(buckets):
        members = np.flatnonzero(buckets == bucket)
        size = int(sizes[bucket])
        batches += [members[i:i + size] for i in range(0, len(members), size)]
    full = [b for b in batches if len(b) == sizes[buckets[b[0]]]]
    left = [b for b in batches if len(b) < sizes[buckets[b[0]]]]
    full.sort(key=lambda b: b[-1])  # a batch goes out when its last sequence arrives
    left.sort(key=lambda b: b[-1])
    blocks = [int(b[-1]) // tuning.TUNING.unshuffled_block for b in full]
    return full, blocks, left


def batch_shapes(batches: list, bucket: np.ndarray, sizes: np.ndarray,
                 padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """With `static_shapes`, each batch's rows and timesteps: its bucket's batch size and
    padded length. `bucket` holds the bucket of every sequence the batches name."""
    of_batch = bucket[[int(b[0]) for b in batches]]
    return sizes[of_batch], padded[of_batch]


def unbucketed_waste(kept: np.ndarray, order: np.ndarray, batching: BatchingConfig,
                     maxlen: int | None = None) -> float:
    """For comparison, the padding waste of batches cut from the sequences in `order` with
    no regard to length, as a plain shuffle makes them; with `maxlen` (`static_shapes`),
    each padded to its full batch size x maxlen."""
    padded = None if maxlen is None else np.array([maxlen])
    size = int(batch_sizes(kept, np.zeros(len(kept), dtype=np.int64), 1, batching, padded)[0])
    blind = [order[i:i + size] for i in range(0, len(kept), size)]
    shapes = None if maxlen is None else (np.full(len(blind), size),
                                          np.full(len(blind), maxlen))
    return padding_waste(kept, blind, shapes)


def padding_waste(lengths: np.ndarray, batches: list,
                  shapes: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Padded timesteps / all timesteps over the given batches: each padded to its longest,
    or to `shapes` (each batch's rows and timesteps, with `static_shapes`)."""
    if not batches:
        return 0.0
    sizes = np.array([len(b) for b in batches])
    members = lengths[np.concatenate(batches)]
    if shapes is None:
        longest = np.maximum.reduceat(members, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        total = float((sizes * longest).sum())
    else:
        total = float((shapes[0] * shapes[1]).sum())
    return 1.0 - float(members.sum()) / total if total else 0.0
