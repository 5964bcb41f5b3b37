"""Dataset: the thin tf.data layer over `Pipeline`'s NumPy batches.

TensorFlow is imported here, when a dataset is built, and nowhere earlier: importing
seqpipe or validating a config stays fast and TensorFlow-free.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any, Union

from seqpipe.config import PipelineConfig
from seqpipe.pipeline import Pipeline
from seqpipe.stream import in_background


def build_dataset(config: Union[PipelineConfig, Pipeline, Mapping, str, os.PathLike],
                  data: Any = None):
    """Builds the `tf.data.Dataset` of `(x, y, sample_weight)` batches for `model.fit`.

    Every pass over the dataset is one epoch; epoch k is reshuffled with (seed, k), so the
    same config and seed give the same batches in the same order, run after run.

    Args:
      config: a `PipelineConfig`, YAML path or mapping; or a `Pipeline` already built.
      data: a pandas DataFrame or pyarrow Table to use instead of `source.path`.

    Returns:
      A dataset whose elements are `(x, y, sample_weight)`: `x` maps input names to float32
      `(B, T, k)` or `(B, k)`; `y` maps output names to `(B, T, 1)` or `(B, 1)`;
      `sample_weight` to `(B, T)` or `(B,)`. With no outputs configured, elements are `x`.

    Raises:
      SeqpipeError: bad config or data, before any TensorFlow work.

    Example::

      model.fit(build_dataset("configs/train.yaml"), epochs=3, shuffle=False)
    """
    pipeline = config if isinstance(config, Pipeline) else Pipeline(config, data)
    import tensorflow as tf

    config, epochs = pipeline.config, itertools.count()

    def pieces(epoch):
        for group in pipeline.groups(epoch):
            yield from group.pieces(BATCHES_PER_ELEMENT)

    def one_epoch():
        yield from in_background(pieces(next(epochs)))

    # A generator element holds several batches, not one: crossing from Python into
    # tf.data costs about a millisecond per element, more than padding a batch does.
    groups = tf.data.Dataset.from_generator(one_epoch, output_signature=_group_spec(config))
    dataset = groups.prefetch(1).flat_map(_split_group(config))
    # Every epoch has the same number of batches (bucket sizes do not change), and saying
    # so lets Keras show progress from the first epoch instead of warning at its end.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        pipeline.report.batches_per_epoch))
    return dataset.prefetch(tf.data.AUTOTUNE)


# Batches per element crossing from Python into tf.data: enough to make the crossing cheap,
# few enough that the copy tf.data makes of each element stays small.
BATCHES_PER_ELEMENT = 32


def _group_spec(config: PipelineConfig):
    import tensorflow as tf

    x = {name: tf.TensorSpec((None, len(s.columns)), tf.float32)
         for name, s in config.inputs.items()}
    flat = {name: tf.TensorSpec((None,), tf.float32) for name in config.outputs}
    return tf.TensorSpec((None, 4), tf.int64), x, flat, dict(flat)


def _split_group(config: PipelineConfig):
    """The tf.data function that cuts one group's flat arrays into its padded batches.

    Each flat array becomes a RaggedTensor with one row per batch, so slicing out the
    batches is one tf.data op for all of them, and each batch then needs only reshapes.
    """
    import tensorflow as tf

    levels = {**{n: s.level for n, s in config.inputs.items()},
              **{n: s.level for n, s in config.outputs.items()}}

    def split(table, x, y, weights):
        sizes, steps = table[:, 2], table[:, 3]
        splits = {"timestep": tf.concat([[0], tf.cumsum(sizes * steps)], 0),
                  "sequence": tf.concat([[0], tf.cumsum(sizes)], 0)}

        def rows(flat):
            return {name: tf.RaggedTensor.from_row_splits(values, splits[levels[name]],
                                                          validate=False)
                    for name, values in flat.items()}

        parts = (steps, rows(x), rows(y), rows(weights))
        return tf.data.Dataset.from_tensor_slices(parts).map(_shape_batch(config))

    return split


def _shape_batch(config: PipelineConfig):
    import tensorflow as tf

    def shape_batch(steps, x, y, weights):
        def shaped(values, level, *tail):
            if level == "sequence":
                return tf.reshape(values, [-1, *tail])
            return tf.reshape(values, [-1, steps, *tail])

        xs = {name: shaped(x[name], spec.level, len(spec.columns))
              for name, spec in config.inputs.items()}
        if not config.outputs:
            return xs
        ys = {name: shaped(y[name], spec.level, 1) for name, spec in config.outputs.items()}
        ws = {name: shaped(weights[name], spec.level) for name, spec in config.outputs.items()}
        return xs, ys, ws

    return shape_batch


def element_spec(config: PipelineConfig):
    """The `tf.TensorSpec` structure of one batch, from the config alone."""
    import tensorflow as tf

    def spec(*shape):
        return tf.TensorSpec(shape=shape, dtype=tf.float32)

    x = {name: spec(None, None, len(s.columns)) if s.level == "timestep"
         else spec(None, len(s.columns)) for name, s in config.inputs.items()}
    if not config.outputs:
        return x
    y = {name: spec(None, None, 1) if s.level == "timestep" else spec(None, 1)
         for name, s in config.outputs.items()}
    weights = {name: spec(None, None) if s.level == "timestep" else spec(None)
               for name, s in config.outputs.items()}
    return x, y, weights
