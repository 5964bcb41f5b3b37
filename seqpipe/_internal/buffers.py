"""Buffers: the aligned arrays assembly pads blocks into, reused once nothing holds them.

A block's arrays are a few MB each, and the batches Keras gets are views of them:
TensorFlow wraps a NumPy array without copying it and holds a Python reference to it until
its last tensor is gone. Fresh memory for every block costs the kernel a page fault and a
zeroed page for every page touched, a large share of an epoch's CPU (docs/performance.md).
A buffer that nothing else refers to any more (no batch, tensor or block views it) is
handed out again instead.

Pipelines share one pool per process (`SHARED`), as an allocator would: a dataset built for
each epoch, or a validation dataset after a training one, reuses what the last one freed.
"""

from __future__ import annotations

import sys
import threading
from typing import Optional

import numpy as np

from seqpipe import tuning

# TensorFlow wraps a NumPy array without copying it only when its data is aligned to this
# many bytes (Eigen's widest vectors); tf.data's generator copies any other block.
ALIGNMENT = 64

# How much the pool keeps and how it matches sizes: `Tuning.slack`, `headroom`,
# `spare_bytes` and `tracked_bytes`.


class BufferPool:
    """Hands out aligned, uninitialised arrays, reusing buffers nobody refers to any more.

    Whether anything still refers to a buffer is read from its reference count: every view
    of it (a block's array, a batch, an array TensorFlow wraps) holds a reference to it,
    and so does TensorFlow's tensor until it is deleted. Thread-safe.

    Example:
      >>> pool = BufferPool()
      >>> a = pool.empty((4, 8))
      >>> a.ctypes.data % ALIGNMENT, a.shape
      (0, (4, 8))
      >>> pool.empty((4, 8)).ctypes.data == a.ctypes.data  # `a` is still held
      False
      >>> address = a.ctypes.data
      >>> del a
      >>> pool.empty((4, 8)).ctypes.data == address
      True
    """

    def __init__(self, spare_bytes: Optional[int] = None) -> None:
        self._buffers: list = []  # uint8 arrays, oldest first
        self._lock = threading.Lock()
        self._spare_bytes = spare_bytes  # None: `Tuning.spare_bytes`
        self.reused = 0  # buffers handed out again, for tests and benchmarks
        # The count an unreferenced buffer shows, measured the way `_spare` measures it:
        # how getrefcount counts its own argument differs between Python versions.
        self._buffers.append(np.empty(0, dtype=np.uint8))
        self._unreferenced = self._references(0)
        self._buffers.clear()

    def empty(self, shape: tuple, dtype=np.float32) -> np.ndarray:
        """An uninitialised array whose data starts on an `ALIGNMENT`-byte boundary."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buffer = self._take(nbytes + ALIGNMENT)
        start = -buffer.ctypes.data % ALIGNMENT
        return buffer[start:start + nbytes].view(dtype).reshape(shape)

    def _take(self, nbytes: int) -> np.ndarray:
        limits = tuning.TUNING
        kept = self._spare_bytes if self._spare_bytes is not None else limits.spare_bytes
        with self._lock:
            if not reuse_allowed():
                self._buffers.clear()
                return np.empty(nbytes, dtype=np.uint8)
            spare = [k for k in range(len(self._buffers)) if self._spare(k)]
            fits = [k for k in spare
                    if nbytes <= self._buffers[k].size <= nbytes * limits.slack]
            if fits:
                self.reused += 1
                return self._buffers[min(fits, key=lambda k: self._buffers[k].size)]
            self._forget(spare, kept - int(nbytes * limits.headroom))
            buffer = np.empty(int(nbytes * limits.headroom), dtype=np.uint8)
            self._buffers.append(buffer)
            tracked = sum(b.size for b in self._buffers)
            while tracked > limits.tracked_bytes and len(self._buffers) > 1:
                tracked -= self._buffers.pop(0).size
            return buffer

    def _forget(self, spare: list, keep: int) -> None:
        """Drops the oldest spare buffers until the rest hold at most `keep` bytes."""
        total = sum(self._buffers[k].size for k in spare)
        drop = set()
        for k in spare:
            if total <= keep:
                break
            total -= self._buffers[k].size
            drop.add(k)
        self._buffers = [b for k, b in enumerate(self._buffers) if k not in drop]

    def _spare(self, k: int) -> bool:
        return self._references(k) == self._unreferenced

    def _references(self, k: int) -> int:
        return sys.getrefcount(self._buffers[k])


# The pool every `Pipeline` draws on.
def reuse_allowed() -> bool:
    """Whether buffers may be handed out again. Reuse is decided from reference counts,
    which only a Python with the GIL keeps exact enough to prove a buffer unused: on a
    free-threaded build, and with `Tuning.reuse_buffers` off, every block gets fresh memory
    (slower, never wrong)."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return bool(tuning.TUNING.reuse_buffers and gil)


SHARED = BufferPool()
