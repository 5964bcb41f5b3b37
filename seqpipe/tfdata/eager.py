"""Eager iteration: `for batch in dataset`, and Keras on JAX and PyTorch, which iterate a
tf.data dataset that way.

TensorFlow's iterator rebuilds each element's structure from its flat tensors in Python,
walking the `element_spec` generically (dict keys sorted, every spec asked for its tensor,
every tensor's shape set again) and swapping in a synchronous executor around every call;
for `(x, y, sample_weight)` of dicts that is most of the main thread's time per batch.
seqpipe's element structure is fixed when the dataset is built, so `Batches` iterates with
the structure's recipe made once, and the same tensors in the same nest. In graph mode
(Keras on TensorFlow calls `next` inside a `tf.function`), in asynchronous eager mode, or
where the TensorFlow internals it relies on are missing, it is TensorFlow's
own iterator.

Making the iterator also tells seqpipe that a pass begins (`starting`): its epoch starts
being read and assembled while TensorFlow sets the iterator up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Optional


def batches(dataset, starting: Callable[[], None]):
    """`dataset` iterated eagerly with the structure's recipe made once, where the
    structure is a dict or a tuple of dicts and this TensorFlow has the internals; else
    `dataset` itself. The same elements either way. `starting` is called when an iterator
    is made eagerly, before TensorFlow sets it up."""
    internals = _internals()
    pack = _packer(dataset.element_spec)
    if internals is None or pack is None:
        return dataset
    return internals(dataset, pack, starting)


def _packer(spec) -> Optional[Callable[[Any], Any]]:
    """A function from the flat tensors (in tf.data's order: dict keys sorted) to the
    element: a dict, or a tuple of dicts, with the spec's keys in the spec's order; None
    for any other structure."""
    parts = spec if isinstance(spec, tuple) else (spec,)
    if not all(isinstance(part, Mapping) and type(part) is dict for part in parts):
        return None
    recipe, at = [], 0
    for part in parts:
        where = {name: at + i for i, name in enumerate(sorted(part))}
        recipe.append(tuple((name, where[name]) for name in part))
        at += len(part)

    if isinstance(spec, tuple):
        def pack(flat):
            return tuple({name: flat[i] for name, i in part} for part in recipe)
    else:
        only = recipe[0]

        def pack(flat):
            return {name: flat[i] for name, i in only}
    return pack


@functools.cache
def _internals():
    """The dataset class, made once, or None where TensorFlow lacks what it needs."""
    try:
        from tensorflow.python.data.ops import dataset_ops, iterator_ops
        from tensorflow.python.eager import context, execute
        from tensorflow.python.framework import ops
    except ImportError:
        return None
    needed = (hasattr(dataset_ops, "UnaryUnchangedStructureDataset")
              and hasattr(iterator_ops.OwnedIterator, "_next_internal")
              and hasattr(execute, "execute"))
    if not needed:
        return None

    class Iterator(iterator_ops.OwnedIterator):
        def __init__(self, dataset, pack):
            super().__init__(dataset)
            self._seqpipe_context = context.context()
            # Synchronous, the end of the data is raised by the call that meets it.
            sync = not self._seqpipe_context.is_async()
            known = all(hasattr(self, name) for name in (
                "_iterator_resource", "_flat_output_types", "_flat_output_shapes"))
            self._seqpipe_pack = pack if sync and known else None
            if self._seqpipe_pack is not None:
                # The op's attributes in the form TensorFlow executes them, made once: its
                # generated wrapper converts them again on every call.
                self._seqpipe_count = len(self._flat_output_types)
                self._seqpipe_attrs = (
                    "output_types", [t.as_datatype_enum for t in self._flat_output_types],
                    "output_shapes", [s.as_list() if s.rank is not None else None
                                      for s in self._flat_output_shapes])

        def _next_internal(self):
            # Keras on TensorFlow makes the iterator eagerly and calls `next` in a graph.
            if self._seqpipe_pack is None or not context.executing_eagerly():
                return super()._next_internal()
            flat = execute.execute(b"IteratorGetNext", self._seqpipe_count,
                                   inputs=[self._iterator_resource],
                                   attrs=self._seqpipe_attrs, ctx=self._seqpipe_context)
            return self._seqpipe_pack(flat)

    class Batches(dataset_ops.UnaryUnchangedStructureDataset):
        """The same dataset (the same graph), iterated eagerly through `Iterator`."""

        def __init__(self, dataset, pack, starting):
            self._seqpipe_pack, self._seqpipe_starting = pack, starting
            super().__init__(dataset, dataset._variant_tensor)

        def __iter__(self):
            if context.executing_eagerly():
                self._seqpipe_starting()
                with ops.colocate_with(self._variant_tensor):
                    return Iterator(self, self._seqpipe_pack)
            return super().__iter__()

    return Batches
