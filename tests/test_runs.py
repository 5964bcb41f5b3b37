"""The compiled run copy, against the same copy written as one slice assignment per run."""

import numpy as np
import pytest

from seqpipe.runs import copy_runs


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
