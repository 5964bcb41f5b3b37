"""The buffer pool: aligned arrays, reused only once nothing refers to them."""

import dataclasses
import gc

import numpy as np
import pytest
import tensorflow as tf

from seqpipe import tuning
from seqpipe._internal.buffers import ALIGNMENT, BufferPool


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_arrays_are_aligned_and_shaped():
    pool = BufferPool()
    for shape, dtype in [((3, 8), np.float32), ((7,), np.float32), ((5,), np.bool_)]:
        array = pool.empty(shape, dtype)
        assert array.shape == shape and array.dtype == dtype
        assert _address(array) % ALIGNMENT == 0


def test_a_buffer_is_reused_only_when_no_view_of_it_is_left():
    pool = BufferPool()
    first = pool.empty((1000, 8))
    batch = first[10:20]  # a batch handed on while the group is dropped
    address = _address(first)
    del first
    second = pool.empty((1000, 8))
    assert _address(second) != address and pool.reused == 0
    second[:] = 2.0
    del batch, second
    third = pool.empty((1000, 8))
    assert pool.reused == 1 and _address(third) == address  # the oldest that fits


def tensorflow_wraps_generator_arrays() -> bool:
    """Whether a tensor from this TensorFlow's tf.data generator shares the memory of the
    aligned array it was given (on 2.21 it does; on 2.18 it does not)."""
    tensor, address = _wrapped_by_tensorflow(BufferPool())
    return _address(np.asarray(tensor)) == address


def _wrapped_by_tensorflow(pool: BufferPool) -> tuple:
    """A tensor of ones that tf.data's generator made from a pool array, and its address."""
    array = pool.empty((4096,))
    array[:] = 1.0
    items = [array]  # emptied once read: tf.data's registry may keep the lambda a while
    generator = tf.data.Dataset.from_generator(
        lambda: iter(items), output_signature=tf.TensorSpec((None,), tf.float32))
    tensor = next(iter(generator))
    items.clear()
    return tensor, _address(array)


def test_a_buffer_wrapped_by_tensorflow_is_not_reused_until_the_tensor_is_gone():
    """tf.data's generator wraps an aligned array without copying it (as `build_dataset`
    hands groups over) and holds a reference to it while any tensor of it lives."""
    pool = BufferPool()
    tensor, wrapped = _wrapped_by_tensorflow(pool)
    # The test means something only if TensorFlow wraps the array instead of copying it.
    if _address(np.asarray(tensor)) != wrapped:
        pytest.skip(f"on TensorFlow {tf.__version__} a tensor from tf.data's generator does "
                    f"not share the array's memory (2.21's does): no wrapped buffer to keep")
    gc.collect()
    others = [pool.empty((4096,)) for _ in range(3)]
    assert wrapped not in [_address(other) for other in others]
    assert float(tf.reduce_max(tensor)) == 1.0
    del tensor, others
    gc.collect()
    assert _address(pool.empty((4096,))) == wrapped  # the oldest spare buffer that fits


def test_a_request_far_smaller_than_a_spare_buffer_gets_a_new_one():
    pool = BufferPool()
    big = pool.empty((1 << 20,))
    del big
    small = pool.empty((1000,))
    assert pool.reused == 0 and small.size == 1000


def test_spare_buffers_beyond_the_budget_are_forgotten():
    pool = BufferPool(spare_bytes=4 << 20)
    held = [pool.empty((1 << 18,)) for _ in range(8)]  # 1 MB each
    del held
    pool.empty((1 << 22,))  # 16 MB: none fits, and the 8 spare MB exceed the budget
    spare = sum(b.size for k, b in enumerate(pool._buffers) if pool._spare(k))
    assert spare <= 4 << 20


def test_buffers_in_use_beyond_the_tracked_budget_are_left_to_their_holders(monkeypatch):
    """A user who keeps many batches, then lets them go, does not leave the pool holding
    all of that memory: it forgets the oldest buffers beyond `Tuning.tracked_bytes`."""

    monkeypatch.setattr(tuning, "TUNING", dataclasses.replace(tuning.TUNING,
                                                              tracked_bytes=4 << 20))
    pool = BufferPool()
    held = [pool.empty((1 << 18,)) for _ in range(10)]  # 1 MB each, all in use
    assert sum(b.size for b in pool._buffers) <= 4 << 20
    held[0][:] = 3.0  # forgotten by the pool, still the holder's
    assert float(held[0].max()) == 3.0


def test_reuse_can_be_switched_off_and_is_off_without_the_gil(monkeypatch):
    """Reuse rests on reference counts; where they cannot prove a buffer unused (a
    free-threaded Python) or when switched off, every request gets fresh memory."""
    from seqpipe._internal import buffers

    def requests(pool):
        for _ in range(3):
            array = pool.empty((256, 8))
            del array
        return pool.reused

    assert requests(BufferPool()) == 2
    monkeypatch.setattr(tuning, "TUNING", dataclasses.replace(tuning.TUNING,
                                                              reuse_buffers=False))
    assert not buffers.reuse_allowed() and requests(BufferPool()) == 0
    monkeypatch.undo()
    monkeypatch.setattr(buffers.sys, "_is_gil_enabled", lambda: False, raising=False)
    assert not buffers.reuse_allowed() and requests(BufferPool()) == 0
