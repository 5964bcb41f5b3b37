"""Threads: a map run ahead in a shared pool, and a producer thread with a short queue.

The pools live as long as the process and are shared by every epoch and pipeline;
`concurrent.futures` joins their threads when the interpreter exits, so they end cleanly.
Producers are daemon threads (a dataset dropped half-way must not keep the process
alive); the ones still running when the interpreter exits are stopped and joined then.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Optional

from seqpipe import tuning


def ordered_map(function, items: Iterable, ahead: int = 1) -> Iterator:
    """`map(function, items)` run `ahead` items ahead in threads, results in order: NumPy
    and Arrow release the GIL for whole-column work, so grouping the next chunk overlaps
    with padding this one. A result is handed on as soon as it is ready, before the next
    item is pulled from `items` (which may have to wait for a read)."""
    pool = shared_pool("map", ahead)
    items = iter(items)
    pending = collections.deque(pool.submit(function, item)
                                for item in itertools.islice(items, ahead + 1))
    while pending:
        yield pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(function, item))


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(name: str, count: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of `count` threads that lives as long as the process, shared by every epoch
    and pipeline. New threads each epoch cost page faults: Arrow's allocator (mimalloc)
    gives each thread memory of its own, fresh from the kernel. Tasks on these pools never
    wait for one another, so sharing them cannot deadlock. A forked child process (whose
    copy of a pool has no threads) gets pools of its own."""
    key = (name, count, os.getpid())
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = concurrent.futures.ThreadPoolExecutor(count, f"seqpipe-{name}")
        return _POOLS[key]


class Background:
    """Iterates `items` in a thread of its own from the moment it is made, up to `depth`
    items (`Tuning.producer_depth` when None) ahead of the consumer; iterate it once.

    The consumer (tf.data's generator thread) then only takes finished items off a queue,
    and the producer is never stalled waiting for the consumer to ask. `stop` ends the
    thread early; iterating a stopped producer raises RuntimeError. Every item waiting
    holds its padded batches, so the queue is short.
    """

    def __init__(self, items: Iterable, depth: Optional[int] = None) -> None:
        self._queue: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._depth = depth if depth is not None else tuning.TUNING.producer_depth
        self._thread = threading.Thread(target=self._produce, args=(items,),
                                         name="seqpipe-producer", daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()

    def _produce(self, items: Iterable) -> None:
        ready = self._ready
        try:
            try:
                for item in items:
                    with ready:
                        ready.wait_for(lambda: len(self._queue) < self._depth or self.stopped)
                        if self.stopped:
                            return
                        self._queue.append((item, None))
                        ready.notify_all()
            finally:
                # The source lets its files and buffers go now, in this thread, while the
                # interpreter is sure to be alive (see `_stop_running`).
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            result: tuple[object, Optional[BaseException]] = (_DONE, None)
        except BaseException as e:  # handed to the consumer, which raises it
            result = (_DONE, e)
        with ready:
            self._queue.append(result)
            ready.notify_all()

    def __iter__(self) -> Iterator:
        if self.stopped:
            raise RuntimeError("this producer was stopped (a seqpipe bug; please report it)")
        try:
            while True:
                with self._ready:
                    self._ready.wait_for(lambda: self._queue)
                    item, error = self._queue.popleft()
                    self._ready.notify_all()
                if item is _DONE:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            self.stop()


_DONE = object()

# The producers made and not yet collected; their threads may have ended.
_RUNNING: weakref.WeakSet[Background] = weakref.WeakSet()

# How long the interpreter's exit waits for producers to finish the item in hand.
_EXIT_WAIT_SECONDS = 10.0


@atexit.register
def _stop_running() -> None:
    """Stops the producers still running and waits for them, before the interpreter is
    finalized. A daemon thread that wakes during finalization (a consumer closed by the
    last garbage collection stops its producer) is ended where it stands the next time it
    takes the GIL; if that is inside a C++ destructor, such as pyarrow's as the producer
    lets its source go, the whole process aborts ("terminate called without an active
    exception") after the user's program has finished."""
    producers = list(_RUNNING)
    for producer in producers:
        producer.stop()
    deadline = time.monotonic() + _EXIT_WAIT_SECONDS
    for producer in producers:
        producer._thread.join(max(0.0, deadline - time.monotonic()))
