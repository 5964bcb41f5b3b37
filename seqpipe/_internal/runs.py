"""Runs: finding and copying runs of rows, and filling missing labels, compiled.

Finding: with rows sorted by sequence id, each sequence is a run of equal ids. One compiled
pass over the id column says whether it is sorted and where every run begins, and one over
the time column whether each run's times ascend; in Arrow and NumPy that is five or more
passes over the columns, each writing a temporary array.

Copying: a chunk's sequences land in their batches as runs of rows: sequence i's kept
timesteps are rows `source[i] : source[i] + count[i]` of the chunk and rows
`dest[i] : dest[i] + count[i]` of its block's padded arrays. NumPy can only move them with
an index per timestep: build 8-byte source and destination indices for every row, gather,
then scatter, once per column. Compiled, each run is one copy, all of a row's columns
together, and the GIL is released while it runs, so the copy overlaps the Parquet reads
and tf.data.

Scaling: (value - shift) / divisor with missing values filled after it is one compiled
pass per column (NumPy took five: isfinite, subtract, divide, any, where).

Packing: first fit of sequences into rows, each sequence into the first row with room for
it, finds that row in a tree of the rows' free timesteps (log rows steps a sequence, where a
scan of the rows is rows steps); it is sequential by nature, so compiled.

Labels: filling the missing labels of a chunk, marking which were present and counting
infinite ones is one compiled pass; in NumPy it was five (isinf, any, isnan, invert,
where).

numba is imported here and only here, when a pipeline first groups or assembles
sequences: importing seqpipe, inspecting and validating stay as fast as before. Compiled
code is cached next to this file (or in numba's user cache): the first epoch on a new
machine takes a few seconds longer while it compiles, later processes load it in a
fraction of a second.
"""

from __future__ import annotations

from typing import Optional, Union

import numba
import numpy as np

# What `time_order` finds in each run of equal ids.
ASCENDING, REPEATED, UNSORTED = 0, 1, 2


def run_starts(ids: np.ndarray) -> Optional[np.ndarray]:
    """Where each run of equal values begins, when `ids` never decrease; None when they do.

    >>> run_starts(np.array([3, 3, 5, 8, 8, 8])).tolist()
    [0, 2, 3]
    >>> run_starts(np.array([3, 5, 4])) is None
    True
    """
    starts = np.empty(len(ids), dtype=np.int64)
    found = _run_starts(ids, starts)
    return None if found < 0 else starts[:found]


def time_order(times: np.ndarray, starts: np.ndarray) -> int:
    """`ASCENDING` when the times strictly increase within every run (runs begin at
    `starts`), `REPEATED` when they never decrease but some time repeats in a run, and
    `UNSORTED` when they decrease somewhere.

    >>> time_order(np.array([1, 2, 0, 5]), np.array([0, 2])) == ASCENDING
    True
    >>> time_order(np.array([1, 1, 0, 5]), np.array([0, 2])) == REPEATED
    True
    >>> time_order(np.array([2, 1, 0, 5]), np.array([0, 2])) == UNSORTED
    True
    """
    return int(_time_order(times, np.append(starts, len(times)).astype(np.int64)))


def copy_runs(values: Union[np.ndarray, tuple], source: np.ndarray, out: np.ndarray,
              dest: np.ndarray, count: np.ndarray) -> None:
    """Copies rows `source[i] : source[i] + count[i]` of `values` to rows
    `dest[i] : dest[i] + count[i]` of `out`, for every i.

    Args:
      values: a 1-D or 2-D array, or a tuple of k 1-D columns (then `out` is `(rows, k)`).
      source, dest, count: int64 arrays of one length.
      out: the array written to; its dtype wins (values are cast as by assignment).

    Raises:
      IndexError: a run reaches past the end of `values` or `out`. The compiled loop does
        not check bounds, so this is checked for all runs before any is copied.

    >>> out = np.zeros(6, np.float32)
    >>> copy_runs(np.arange(5, dtype=np.float32), np.array([3, 0]), out,
    ...           np.array([0, 4]), np.array([2, 1]))
    >>> out.tolist()
    [3.0, 4.0, 0.0, 0.0, 0.0, 0.0]
    """
    source, dest, count = (np.ascontiguousarray(a, dtype=np.int64)
                           for a in (source, dest, count))
    rows = len(values[0]) if isinstance(values, tuple) else len(values)
    _check(source, count, rows, "source")
    _check(dest, count, len(out), "destination")
    if not isinstance(values, tuple):
        _rows(values, source, out, dest, count)
    elif len({_kind(column) for column in values}) == 1:
        _columns(values, source, out, dest, count)
    else:  # columns of different types (say, one read-only): no one tuple type
        for j, column in enumerate(values):
            _rows(column, source, out[:, j], dest, count)


def fill_runs(out: np.ndarray, start: np.ndarray, count: np.ndarray, value) -> None:
    """Sets rows `start[i] : start[i] + count[i]` of `out` (along its first axis) to
    `value`, for every i.

    Raises:
      IndexError: a run reaches past the end of `out` (checked before any is written).

    >>> out = np.ones((5, 2), np.float32)
    >>> fill_runs(out, np.array([0, 3]), np.array([1, 2]), 0)
    >>> out[:, 0].tolist()
    [0.0, 1.0, 1.0, 0.0, 0.0]
    """
    start, count = (np.ascontiguousarray(a, dtype=np.int64) for a in (start, count))
    _check(start, count, len(out), "destination")
    _fill_runs(out.reshape(len(out), -1), start, count, np.asarray(value, out.dtype)[()])


def count_runs(values: np.ndarray, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The nonzero values in each run `values[start[i] : start[i] + count[i]]`.

    >>> count_runs(np.array([1, 0, 1, 1, 0]), np.array([0, 2]), np.array([2, 3])).tolist()
    [1, 2]
    """
    start, count = (np.ascontiguousarray(a, dtype=np.int64) for a in (start, count))
    _check(start, count, len(values), "source")
    found = np.empty(len(start), dtype=np.int64)
    _count_runs(values, start, count, found)
    return found


def scale_runs(values: np.ndarray, start: np.ndarray, count: np.ndarray,
               scale: np.ndarray, out: np.ndarray) -> None:
    """Writes `values * scale[i]` to `out` over each run `start[i] : start[i] + count[i]`
    (of both); positions outside every run are left as they are.

    >>> out = np.full(5, -1.0, np.float32)
    >>> scale_runs(np.array([1, 0, 1, 1, 0]), np.array([0, 2]), np.array([2, 3]),
    ...            np.array([0.5, 2.0], np.float32), out)
    >>> out.tolist()
    [0.5, 0.0, 2.0, 2.0, 0.0]
    """
    start, count = (np.ascontiguousarray(a, dtype=np.int64) for a in (start, count))
    _check(start, count, min(len(values), len(out)), "destination")
    _scale_runs(values, start, count, np.ascontiguousarray(scale, dtype=out.dtype), out)


def fill_missing(values: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray, int]:
    """float32 `values` with NaN replaced by `fill`, where they were not NaN, and how many
    are infinite.

    >>> labels, present, infinite = fill_missing(np.array([1, np.nan, np.inf], np.float32), 0)
    >>> labels.tolist(), present.tolist(), infinite
    ([1.0, 0.0, inf], [True, False, True], 1)
    """
    values = np.asarray(values, dtype=np.float32)
    labels = np.empty(values.shape, dtype=np.float32)
    present = np.empty(values.shape, dtype=bool)
    infinite = _fill_missing(values.reshape(-1), np.float32(fill), labels.reshape(-1),
                             present.reshape(-1))
    return labels, present, int(infinite)


def scale_fill(values: np.ndarray, shift: float, divisor: float, fill: float,
               out: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
    """`(values - shift) / divisor` computed in float64 and cast to float32, `fill` where a
    value is NaN or infinite, and how many were; written into `out` (float32, shaped like
    `values`) when given.

    >>> scaled, filled = scale_fill(np.array([1, np.nan, 5], np.float32), 1.0, 2.0, 0.0)
    >>> scaled.tolist(), filled
    ([0.0, 0.0, 2.0], 1)
    """
    values = np.asarray(values)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    out = np.empty(values.shape, dtype=np.float32) if out is None else out
    filled = _scale_fill(values, np.float64(shift), np.float64(divisor), np.float32(fill), out)
    return out, int(filled)


def run_moments(values: np.ndarray, start: np.ndarray, count: np.ndarray,
                present: Optional[np.ndarray] = None) -> np.ndarray:
    """Per run `start[i] : start[i] + count[i]` of `values`, over its finite values (and
    `present` ones): (n, 6) float64 rows of count, mean, population std, min, max and mean
    absolute value, in two passes (mean, then squared deviations) without a temporary
    array. A run without a value gives count 0 and zeros.

    >>> run_moments(np.array([1., np.nan, -3., 10.]), np.array([0, 3]), np.array([3, 0]))
    array([[ 2., -1.,  2., -3.,  1.,  2.],
           [ 0.,  0.,  0.,  0.,  0.,  0.]])
    """
    start, count = (np.ascontiguousarray(a, dtype=np.int64) for a in (start, count))
    _check(start, count, len(values), "source")
    out = np.zeros((len(start), 6), dtype=np.float64)
    mask = np.ones(0, dtype=np.bool_) if present is None else np.ascontiguousarray(present)
    _run_moments(values, start, count, mask, present is not None, out)
    return out


def scale_each_run(values: np.ndarray, offsets: np.ndarray, shift: np.ndarray,
                   divisor: np.ndarray, fill: float, out: np.ndarray) -> None:
    """`(value - shift[i]) / divisor[i]` over run i (`offsets[i] : offsets[i + 1]`), in
    float64 written to `out`; `fill` where a value is not finite.

    >>> out = np.empty(3, np.float32)
    >>> scale_each_run(np.array([2., np.nan, 9.]), np.array([0, 2, 3]), np.array([1., 3.]),
    ...                np.array([2., 3.]), 0.0, out)
    >>> out.tolist()
    [0.5, 0.0, 2.0]
    """
    _scale_each_run(values, np.ascontiguousarray(offsets, dtype=np.int64),
                    np.ascontiguousarray(shift, dtype=np.float64),
                    np.ascontiguousarray(divisor, dtype=np.float64), np.float64(fill), out)


def first_fit(lengths: np.ndarray, capacity: int,
              max_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puts items of `lengths` (in the order given) into rows of `capacity`, each into the
    first row with room for it and fewer than `max_items` items.

    Returns:
      (row, slot, offset), each (n,) int64: item i's row, its place among the row's items,
      and its first position in the row. Rows are numbered from 0 in the order opened.
    """
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"first_fit: lengths must be in [1, {capacity}]")
    found = np.empty((3, len(lengths)), dtype=np.int64)
    _first_fit(lengths, capacity, max_items, found)
    return found[0], found[1], found[2]


def _kind(column: np.ndarray) -> tuple:
    """What decides a column's numba type (`numba.typeof` itself is slower than a copy)."""
    flags = column.flags
    return column.dtype, column.ndim, flags.c_contiguous, flags.writeable, flags.aligned


def _check(start: np.ndarray, count: np.ndarray, rows: int, what: str) -> None:
    # One compiled pass: NumPy's min, add and max took four, and most of a small copy's time.
    if not _within(start, count, rows):
        raise IndexError(f"a {what} run reaches past row {rows} (a seqpipe bug; please "
                         f"report it)")


@numba.njit(nogil=True, cache=True)
def _within(start, count, rows):  # pragma: no cover - compiled
    for i in range(len(start)):
        if start[i] < 0 or start[i] + count[i] > rows:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _run_starts(ids, starts):  # pragma: no cover - compiled
    if len(ids) == 0:
        return 0
    found = 1
    starts[0] = 0
    for i in range(1, len(ids)):
        if ids[i] != ids[i - 1]:
            if ids[i] < ids[i - 1]:
                return -1
            starts[found] = i
            found += 1
    return found


@numba.njit(nogil=True, cache=True)
def _time_order(times, bounds):  # pragma: no cover - compiled
    order = 0
    for k in range(len(bounds) - 1):
        for i in range(bounds[k] + 1, bounds[k + 1]):
            if times[i] < times[i - 1]:
                return 2
            if times[i] == times[i - 1]:
                order = 1
    return order


@numba.njit(nogil=True, cache=True)
def _rows(values, source, out, dest, count):  # pragma: no cover - compiled
    for i in range(len(count)):
        out[dest[i]:dest[i] + count[i]] = values[source[i]:source[i] + count[i]]


@numba.njit(nogil=True, cache=True)
def _columns(columns, source, out, dest, count):  # pragma: no cover - compiled
    for i in range(len(count)):
        s, d = source[i], dest[i]
        for t in range(count[i]):
            for j in range(len(columns)):
                out[d + t, j] = columns[j][s + t]


@numba.njit(nogil=True, cache=True)
def _fill_runs(out, start, count, value):  # pragma: no cover - compiled
    for i in range(len(start)):
        out[start[i]:start[i] + count[i]] = value


@numba.njit(nogil=True, cache=True)
def _count_runs(values, start, count, found):  # pragma: no cover - compiled
    # Over slices, not `range(start, start + count)` indices: LLVM vectorizes these loops
    # only when it sees a run as one array (4x faster), and a branch would mispredict.
    for i in range(len(start)):
        run = values[start[i]:start[i] + count[i]]
        n = 0
        for t in range(len(run)):
            n += run[t]
        found[i] = n


@numba.njit(nogil=True, cache=True)
def _scale_runs(values, start, count, scale, out):  # pragma: no cover - compiled
    for i in range(len(start)):
        a, b = start[i], start[i] + count[i]
        run, into, factor = values[a:b], out[a:b], scale[i]
        for t in range(len(run)):
            into[t] = run[t] * factor


@numba.njit(nogil=True, cache=True)
def _fill_missing(values, fill, labels, present):  # pragma: no cover - compiled
    infinite = 0
    for i in range(len(values)):
        x = values[i]
        found = x == x  # False for NaN alone
        present[i] = found
        labels[i] = x if found else fill
        infinite += abs(x) == np.inf
    return infinite


@numba.njit(nogil=True, cache=True)
def _scale_fill(values, shift, divisor, fill, out):  # pragma: no cover - compiled
    filled = 0
    for i in range(len(values)):
        x = values[i]
        if np.isfinite(x):
            out[i] = (np.float64(x) - shift) / divisor
        else:
            out[i] = fill
            filled += 1
    return filled


@numba.njit(nogil=True, cache=True)
def _run_moments(values, start, count, present, use_present, out):  # pragma: no cover
    for i in range(len(start)):
        n, total, size, low, high = 0, 0.0, 0.0, np.inf, -np.inf
        for t in range(start[i], start[i] + count[i]):
            x = np.float64(values[t])
            if np.isfinite(x) and (not use_present or present[t]):
                n += 1
                total += x
                size += abs(x)
                low = min(low, x)
                high = max(high, x)
        if n == 0:
            continue
        mean = total / n
        squares = 0.0
        for t in range(start[i], start[i] + count[i]):
            x = np.float64(values[t])
            if np.isfinite(x) and (not use_present or present[t]):
                squares += (x - mean) * (x - mean)
        out[i, 0], out[i, 1], out[i, 2] = n, mean, np.sqrt(squares / n)
        out[i, 3], out[i, 4], out[i, 5] = low, high, size / n


@numba.njit(nogil=True, cache=True)
def _scale_each_run(values, offsets, shift, divisor, fill, out):  # pragma: no cover
    for i in range(len(offsets) - 1):
        s, d = shift[i], divisor[i]
        for t in range(offsets[i], offsets[i + 1]):
            x = np.float64(values[t])
            out[t] = (x - s) / d if np.isfinite(x) else fill


@numba.njit(nogil=True, cache=True)
def _first_fit(lengths, capacity, max_items, found):  # pragma: no cover - compiled
    n = len(lengths)
    leaves = 1
    while leaves < max(n, 1):
        leaves *= 2
    free = np.full(2 * leaves, capacity, dtype=np.int64)  # max free timesteps below a node
    items = np.zeros(leaves, dtype=np.int64)
    for i in range(n):
        need = lengths[i]
        node = 1
        while node < leaves:  # the leftmost row with room: every unopened row has it
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        row = node - leaves
        found[0, i] = row
        found[1, i] = items[row]
        found[2, i] = capacity - free[node]
        items[row] += 1
        free[node] = -1 if items[row] == max_items else free[node] - need
        node //= 2
        while node >= 1:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
