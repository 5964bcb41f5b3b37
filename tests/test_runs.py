"""The compiled passes over runs: finding runs against plain Python loops, copying them
against the same copy written as one slice assignment per run."""

import numpy as np
import pytest

from seqpipe._internal.runs import (
    ASCENDING,
    REPEATED,
    UNSORTED,
    copy_runs,
    fill_missing,
    fill_runs,
    run_starts,
    time_order,
)


def _runs(rng, rows_in, rows_out, n):
    """n non-overlapping destination runs and arbitrary (possibly overlapping) sources."""
    count = rng.integers(0, 20, n)
    gaps = rng.integers(0, 5, n)
    dest = np.cumsum(count + gaps) - count
    assert dest[-1] + count[-1] <= rows_out
    source = rng.integers(0, rows_in - 20, n)
    return source, dest, count


def _expected(values, source, out, dest, count):
    out = out.copy()
    for s, d, c in zip(source, dest, count):
        out[d:d + c] = values[s:s + c]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
def test_one_dimensional(dtype):
    rng = np.random.default_rng(0)
    values = (rng.random(500) > 0.5).astype(dtype)
    source, dest, count = _runs(rng, 500, 1000, 30)
    out = np.zeros(1000, dtype)
    expected = _expected(values, source, out, dest, count)
    copy_runs(values, source, out, dest, count)
    assert np.array_equal(out, expected)


def test_matrix_and_columns_give_the_same_rows():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(400, 3)).astype(np.float32)
    source, dest, count = _runs(rng, 400, 900, 25)
    expected = _expected(matrix, source, np.full((900, 3), -1, np.float32), dest, count)
    from_matrix = np.full((900, 3), -1, np.float32)
    copy_runs(matrix, source, from_matrix, dest, count)
    from_columns = np.full((900, 3), -1, np.float32)
    copy_runs(tuple(np.ascontiguousarray(matrix[:, j]) for j in range(3)), source,
              from_columns, dest, count)
    assert np.array_equal(from_matrix, expected)
    assert np.array_equal(from_columns, expected)


def test_columns_of_different_kinds():
    """A read-only column (as Arrow hands them out) beside writable ones: no single tuple
    type, so each column is copied on its own."""
    rng = np.random.default_rng(2)
    columns = [rng.normal(size=300).astype(np.float32) for _ in range(3)]
    columns[1].setflags(write=False)
    source, dest, count = _runs(rng, 300, 700, 20)
    out = np.zeros((700, 3), np.float32)
    copy_runs(tuple(columns), source, out, dest, count)
    expected = _expected(np.stack(columns, axis=1), source, np.zeros((700, 3), np.float32),
                         dest, count)
    assert np.array_equal(out, expected)


def test_a_run_past_the_end_is_refused_before_anything_is_written():
    out = np.zeros(10, np.float32)
    with pytest.raises(IndexError, match="destination run reaches past row 10"):
        copy_runs(np.ones(20, np.float32), np.array([0, 0]), out, np.array([0, 8]),
                  np.array([2, 3]))
    assert not out.any()
    with pytest.raises(IndexError, match="source run reaches past row 20"):
        copy_runs(np.ones(20, np.float32), np.array([19]), out, np.array([0]), np.array([2]))


def test_no_runs():
    out = np.zeros(4, np.float32)
    empty = np.empty(0, np.int64)
    copy_runs(np.ones(3, np.float32), empty, out, empty, empty)
    assert not out.any()


def _starts_by_loop(values) -> list:
    return [i for i in range(len(values)) if i == 0 or values[i] != values[i - 1]]


@pytest.mark.parametrize("shape, dtype, value", [
    ((300,), np.float32, -1.5), ((300, 3), np.float32, 0), ((300, 2, 2), np.int32, 7),
    ((300,), bool, False)], ids=["float32", "matrix", "int32 3-d", "bool"])
def test_fill_runs_sets_the_rows_of_each_run_and_nothing_else(shape, dtype, value):
    rng = np.random.default_rng(5)
    start, _, count = _runs(rng, 300, 300, 12)
    out = rng.integers(1, 9, shape).astype(dtype)
    expected = out.copy()
    for s, c in zip(start, count):
        expected[s:s + c] = value
    fill_runs(out, start, count, value)
    np.testing.assert_array_equal(out, expected)


def test_fill_runs_refuses_a_run_past_the_end_before_anything_is_written():
    out = np.ones(10, np.float32)
    with pytest.raises(IndexError, match="reaches past row 10"):
        fill_runs(out, np.array([0, 8]), np.array([2, 3]), 0)
    assert (out == 1).all()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.float64, np.float32])
def test_run_starts_of_sorted_columns(dtype):
    rng = np.random.default_rng(3)
    for size in (0, 1, 2, 1000):
        ids = np.sort(rng.integers(0, 50, size)).astype(dtype)
        assert run_starts(ids).tolist() == _starts_by_loop(ids.tolist())


def test_run_starts_is_none_when_any_value_decreases():
    ids = np.sort(np.random.default_rng(4).integers(0, 50, 500))
    for row in (1, 250, 499):  # at the start, the middle and the very end
        broken = ids.copy()
        broken[row] = broken[row - 1] - 1
        assert run_starts(broken) is None
    assert run_starts(np.array([5, 5, 5])).tolist() == [0]


def _order_by_loop(times, starts) -> int:
    ends = list(starts[1:]) + [len(times)]
    pairs = [(times[i - 1], times[i]) for a, b in zip(starts, ends) for i in range(a + 1, b)]
    if any(later < earlier for earlier, later in pairs):
        return UNSORTED
    return REPEATED if any(later == earlier for earlier, later in pairs) else ASCENDING


def test_time_order_looks_within_runs_only():
    rng = np.random.default_rng(5)
    starts = np.array([0, 4, 9, 10, 15])
    ascending = np.concatenate([np.arange(4), np.arange(5), [7], np.arange(5), np.arange(3)])
    assert time_order(ascending, starts) == ASCENDING  # times fall only between runs
    for _ in range(200):
        times = ascending + rng.integers(-1, 2, len(ascending)) * (rng.random(18) < 0.2)
        assert time_order(times, starts) == _order_by_loop(times.tolist(), starts.tolist())
    assert time_order(np.array([0, 1, 1]), np.array([0])) == REPEATED
    assert time_order(np.array([0, 2, 1]), np.array([0])) == UNSORTED
    assert time_order(np.array([], np.int64), np.array([], np.int64)) == ASCENDING


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_missing_marks_nan_as_missing_and_counts_infinities(dtype):
    values = np.array([0.5, np.nan, -np.inf, 3.0, np.nan, np.inf, -0.0], dtype=dtype)
    labels, present, infinite = fill_missing(values, -1.0)
    assert labels.dtype == np.float32 and present.dtype == bool
    np.testing.assert_array_equal(present, ~np.isnan(values))
    np.testing.assert_array_equal(labels, np.where(np.isnan(values), np.float32(-1),
                                                   values.astype(np.float32)))
    assert infinite == np.isinf(values).sum() == 2
    empty = fill_missing(np.empty(0, dtype), 0.0)
    assert empty[0].shape == empty[1].shape == (0,) and empty[2] == 0
