"""Stages: the generator source, `flat_map` and `map` of seqpipe's dataset, built so that
every iterator instantiates their functions cheaply.

Making a tf.data iterator instantiates every function in its dataset, and each pass over a
dataset makes one iterator: every epoch pays it again. By default TensorFlow instantiates
a tf.data function on its multi-device path, which runs Grappler's optimizers and oneDNN's
layout pass over the function; for seqpipe's few small functions that was most of the cost
of making an iterator (docs/performance.md). A function marked `experimental_ints_on_device`
is instantiated for the iterator's own device alone, without that pass, as TensorFlow marks
the functions of its own `copy_to_device`. seqpipe's functions (a Python call; splits,
slices and reshapes; one lookup-table insert) all run on the CPU that runs tf.data, so
nothing else changes.

The mark can only be set through tf.data's private function wrapper and dataset ops. They
are used where a feature check finds them; any other TensorFlow gets the public
`from_generator`, `flat_map` and `map`, which make the same elements (tests/test_dataset.py
runs both).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from seqpipe._internal.lazy import tensorflow

# The attribute that keeps a function off the multi-device path (see the module docstring).
_MARK = "experimental_ints_on_device"


def generator(start: Callable[[Any], Iterator], token, spec):
    """A dataset of `spec` (a structure of `tf.TensorSpec`) whose every iterator calls
    `start(token)` for a Python iterator of its elements (the same structure, of NumPy
    arrays). `token`: an int64 scalar tensor, handed to `start` as a NumPy integer."""
    tf = tensorflow()
    internals = _internals()
    if internals is None:
        return tf.data.Dataset.from_generator(start, args=(token,), output_signature=spec)
    return internals.Generated(start, token, spec)


def flat_map(dataset, function):
    """`dataset.flat_map(function)`."""
    internals = _internals()
    if internals is None:
        return dataset.flat_map(function)
    return internals.FlatMapped(dataset, function)


def map_in_caller(dataset, function):
    """`dataset.map(function)`, its ops run one after another in the thread that asks for
    the element instead of being handed to TensorFlow's inter-op thread pool.

    A batch's function is a dozen slices and reshapes of microseconds each; handing every
    one to the pool, and waking its threads, costs more than the ops (docs/performance.md).
    Where the internals are missing it is the public `map`, with the same elements."""
    internals = _internals()
    if internals is None:
        return dataset.map(function)
    return internals.Mapped(dataset, function)


# Each live iterator's pass of a `generator` dataset, by an id the iterator's state holds.
_PASSES: dict = {}
_PASS_IDS = itertools.count()
_PASSES_LOCK = threading.Lock()


def _begin(start: Callable[[Any], Iterator], token) -> Any:
    elements = iter(start(token))
    with _PASSES_LOCK:
        number = next(_PASS_IDS)
        _PASSES[number] = elements
    return np.int64(number)


def _next(number) -> list:
    tf = tensorflow()
    with _PASSES_LOCK:
        elements = _PASSES[int(number)]
    # StopIteration ends the iterator's elements (TensorFlow reads it as the end of data).
    return tf.nest.flatten(next(elements))


def _end(number) -> Any:
    with _PASSES_LOCK:
        elements = _PASSES.pop(int(number), None)
    close = getattr(elements, "close", None)
    if close is not None:
        close()  # a generator's `finally` runs now, not when it is collected
    return np.int64(0)


@functools.cache
def _internals():
    """The dataset classes, made once, or None where TensorFlow lacks what they need."""
    try:
        from tensorflow.python.data.ops import dataset_ops, structured_function
        from tensorflow.python.ops import gen_dataset_ops
    except ImportError:
        return None
    wrapper = getattr(structured_function, "StructuredFunctionWrapper", None)
    needed = (wrapper is not None
              and all(hasattr(dataset_ops, name) for name in ("DatasetSource", "UnaryDataset"))
              and all(hasattr(gen_dataset_ops, name) for name in (
                  "generator_dataset", "flat_map_dataset", "map_dataset")))
    if not needed:
        return None
    try:
        if "defun_kwargs" not in inspect.signature(wrapper.__init__).parameters:
            return None
    except (TypeError, ValueError):
        return None
    tf = tensorflow()

    def function(body, name: str, **structure):
        return wrapper(body, name, defun_kwargs={_MARK: True}, **structure)

    class Generated(dataset_ops.DatasetSource):
        """`generator`'s dataset: TensorFlow's generator op, with marked functions."""

        def __init__(self, start, token, spec):
            self._spec, self._name = spec, None
            flat = tf.nest.flatten(spec)
            scalar = tf.TensorSpec((), tf.int64)

            def begin(token):
                number = tf.numpy_function(lambda t: _begin(start, t), [token], tf.int64)
                number.set_shape(())
                return number

            def following(number):
                values = tf.numpy_function(_next, [number], [s.dtype for s in flat])
                for value, s in zip(values, flat):
                    value.set_shape(s.shape)
                return tf.nest.pack_sequence_as(spec, values)

            def end(number):
                done = tf.numpy_function(_end, [number], tf.int64)
                done.set_shape(())
                return done

            name = "seqpipe.generator()"
            self._begin = function(begin, name, input_structure=scalar)
            self._following = function(following, name, input_structure=scalar)
            self._end = function(end, name, input_structure=scalar)
            variant = gen_dataset_ops.generator_dataset(
                [token] + self._begin.function.captured_inputs,
                self._following.function.captured_inputs,
                self._end.function.captured_inputs,
                init_func=self._begin.function, next_func=self._following.function,
                finalize_func=self._end.function, **self._common_args)
            super().__init__(variant)

        def _functions(self):
            return [self._begin, self._following, self._end]

        @property
        def element_spec(self):
            return self._spec

    class Marked(dataset_ops.UnaryDataset):
        """A dataset op over `dataset` with one marked function, `body`."""

        def __init__(self, dataset, body, name: str, op, **attributes):
            self._name = None
            self._function = function(body, name, dataset=dataset)
            variant = op(dataset._variant_tensor, self._function.function.captured_inputs,
                         f=self._function.function, **attributes, **self._common_args)
            super().__init__(dataset, variant)

        def _functions(self):
            return [self._function]

    class FlatMapped(Marked):
        """`flat_map`'s dataset."""

        def __init__(self, dataset, body):
            super().__init__(dataset, body, "seqpipe.flat_map()",
                             gen_dataset_ops.flat_map_dataset)

        @property
        def element_spec(self):
            return self._function.output_structure._element_spec

    class Mapped(Marked):
        """`map_in_caller`'s dataset: the function runs in the caller's thread."""

        def __init__(self, dataset, body):
            super().__init__(dataset, body, "seqpipe.map()", gen_dataset_ops.map_dataset,
                             use_inter_op_parallelism=False, preserve_cardinality=True)

        @property
        def element_spec(self):
            return self._function.output_structure

    return types.SimpleNamespace(Generated=Generated, FlatMapped=FlatMapped, Mapped=Mapped)
