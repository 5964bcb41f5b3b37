"""Dataset: the thin tf.data layer over `Pipeline`'s NumPy batches.

TensorFlow is imported here, when a dataset is built, and nowhere earlier: importing
seqpipe or validating a config stays fast and TensorFlow-free.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from seqpipe.batches.kinds import batch_structure
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError, SeqpipeError
from seqpipe.numpy_batches import NumpyBatches
from seqpipe.pipeline import Pipeline
from seqpipe.statistics import StatisticsLike

if TYPE_CHECKING:
    from seqpipe.materialized.read import MaterializedPart
from seqpipe._internal.lazy import tensorflow
from seqpipe._internal.threads import Background
from seqpipe.shard import Shard, per_replica
from seqpipe.tfdata import handoff

logger = logging.getLogger("seqpipe")


FORMATS = ("tf", "grain", "numpy")


def build_dataset(config: Union[PipelineConfig, Pipeline, Mapping, str, os.PathLike],
                  data: Any = None, split: Optional[str] = None, *, input_context: Any = None,
                  read_early: bool = False, statistics: Optional[StatisticsLike] = None,
                  format: str = "tf"):
    """Builds the `tf.data.Dataset` of `(x, y, sample_weight)` batches for `model.fit`.

    Every pass over the dataset is one epoch; epoch k is reshuffled with (seed, k), so the
    same config and seed give the same batches in the same order, run after run. Nothing
    is read until the dataset is first iterated, unless `read_early`.

    Args:
      config: a `PipelineConfig`, YAML path or mapping; or a `Pipeline` already built.
      data: a pandas DataFrame or pyarrow Table to use instead of `source.path`.
      split: 'train', 'validation' or 'test': the part of the data to read, when the config
        has a `split` section (see `seqpipe.split`).
      input_context: the `tf.distribute.InputContext` that
        `strategy.distribute_datasets_from_function` passes: this input pipeline then reads
        its own share of the sequences (`seqpipe.shard`), and `batching.batch_size` is the
        global batch, divided over the replicas.
      read_early: start reading and assembling the first epoch now, in a background
        thread, while TensorFlow builds the dataset and its iterator: its first batches are
        ready sooner. It holds what a running epoch holds (a few row groups and batches)
        until the dataset is iterated or deleted; leave it off for datasets iterated later,
        such as validation data.
      statistics: the `seqpipe.Statistics` to scale and encode with (saved from training,
        say), the path of the file `Statistics.save` wrote, or its mapping; None computes
        them from the train part (see `Pipeline`).
      format: what to build, as Keras's `timeseries_dataset_from_array(format=...)`:
        "tf", a `tf.data.Dataset`; "grain", a `grain.IterDataset` (`model.fit` takes it
        on every backend; needs the `grain` extra); "numpy", a re-iterable
        of NumPy batches (`seqpipe.numpy_batches.NumpyBatches`), for custom loops. Neither
        of the last two imports TensorFlow; all three give the same batches, epoch by
        epoch, for the same config and seed.

    Returns:
      A dataset whose elements are `(x, y, sample_weight)`: `x` maps input names to float32
      `(B, T, k)` or `(B, k)` (categorical inputs: int32 `(B, T)` or `(B,)`; the
      `padding.mask` input: bool `(B, T)`); `y` maps output names to `(B, T, k)` or `(B, k)`
      (float32; int32 class ids for a categorical output); `sample_weight` to `(B, T)` or
      `(B,)`. With no outputs configured, elements are `x`. `element_spec(config)` gives the
      structure.

    Raises:
      SeqpipeError: bad config or data, before any TensorFlow work.

    Example::

      model.fit(build_dataset("configs/train.yaml"), epochs=3, shuffle=False)

      strategy = tf.distribute.MirroredStrategy()
      dataset = strategy.distribute_datasets_from_function(
          lambda context: build_dataset("configs/train.yaml", input_context=context))
    """
    if format not in FORMATS:
        raise ConfigError(f"build_dataset: format must be one of {', '.join(FORMATS)}; "
                          f"got {format!r}")
    if format != "tf" and (input_context is not None or read_early):
        raise ConfigError(f"build_dataset: input_context and read_early are for "
                          f"format='tf' (tf.distribute, tf.data); got format={format!r}")
    if isinstance(config, Pipeline):
        if input_context is not None:
            raise ConfigError("input_context needs a config, not a Pipeline already built: "
                              "each input pipeline builds its own share")
        if statistics is not None:
            raise ConfigError("statistics= goes to the Pipeline when it is built, not to "
                              "build_dataset with a Pipeline already built")
        pipeline = config
    else:
        pipeline = sharded_pipeline(config, input_context, data=data, split=split,
                                    statistics=statistics)
    if format == "numpy":
        return NumpyBatches(pipeline)
    if format == "grain":
        from seqpipe.grain_dataset import grain_batches

        return grain_batches(pipeline)
    tf = tensorflow()

    config, token = pipeline.config, next(_TOKENS)
    _LIVE[token] = _Epochs(pipeline, token, read_early)
    # The dataset's functions are traced once per shape of config and told which dataset's
    # epochs to read by a token; see `_traced_blocks`.
    dataset = tf.data.Dataset.from_tensors(np.int64(token)).flat_map(_traced_blocks(config))
    # Every epoch has the same number of batches (bucket sizes do not change), and saying
    # so lets Keras show progress from the first epoch instead of warning at its end.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        pipeline.report.batches_per_epoch))
    dataset = dataset.with_options(_options())
    # The pipeline goes with the dataset. Datasets made from this one, and iterators over
    # them, keep it alive while they are in use.
    weakref.finalize(dataset, _forget, token)
    return dataset


# The epochs of every dataset alive, by the token its graph holds.
_LIVE: dict = {}
_TOKENS = itertools.count()


def _forget(token: int) -> None:
    epochs = _LIVE.pop(token, None)
    if epochs is not None:
        epochs.close()


def _epochs_of(token) -> Iterator[tuple]:
    """The generator `from_generator` calls at the start of every epoch of every dataset
    (with the dataset's token): the one TensorFlow keeps for the life of the process."""
    epochs = _LIVE.get(int(token))
    if epochs is None:
        raise RuntimeError("this seqpipe dataset was deleted: keep a reference to the "
                           "dataset (or to one made from it) while iterating it")
    return epochs()


class _Epochs:
    """One dataset's epochs: each call yields the next epoch's blocks, handed off
    (`handoff.HandOff`). `close` stops a first epoch nobody read and lets go of the pipeline.

    Epoch k is the pass after k passes read to their last batch, as Grain and NumPy count
    them: a pass cut short (Keras on JAX, PyTorch or tf.distribute draws one batch to
    build a model before epoch 0; a loop that breaks) does not use up an epoch's shuffle.
    A batch is cut out of its block only when it is asked for, and cutting an epoch's last
    batch records the epoch (`handoff.finished_epochs`)."""

    def __init__(self, pipeline: Pipeline, token: int, read_early: bool = False) -> None:
        self._pipeline: Optional[Pipeline] = pipeline
        self._token = token
        # With read_early, the first epoch is read while TensorFlow builds the dataset and
        # its iterator; it stops when the dataset is deleted unread.
        self._warm: Optional[Background] = (Background(self._pieces(pipeline, 0))
                                            if read_early else None)

    def __call__(self) -> Iterator[tuple]:
        pipeline = self._pipeline
        if pipeline is None:
            raise RuntimeError("this seqpipe dataset was deleted: keep a reference to the "
                               "dataset (or to one made from it) while iterating it")
        epoch = int(handoff.finished_epochs().lookup(np.int64(self._token))) + 1
        producer, self._warm = self._warm, None
        if producer is None or producer.stopped or epoch != 0:  # the warm one reads epoch 0
            if producer is not None:
                producer.stop()
            producer = Background(self._pieces(pipeline, epoch))
        # A block of no batches goes first. TensorFlow sets up its per-block machinery (the
        # function that cuts a block into batches) on the first block it sees; with this
        # one it does so while the first real block is still being assembled.
        yield handoff.no_batches(pipeline.config)
        yield from producer

    def _pieces(self, pipeline: Pipeline, epoch: int) -> Iterator[tuple]:
        total, handed = pipeline.report.batches_per_epoch, 0
        try:
            for block in pipeline.blocks(epoch):
                handed += len(block.places)
                finish = (self._token, epoch) if handed == total else None
                yield handoff.hand_off(block, pipeline.config, finish)
        except SeqpipeError as e:
            # TensorFlow hands the error on as an InvalidArgumentError whose first line
            # names its own function; the log says it first, as it happens.
            logger.error("seqpipe: error in epoch %d, while reading: %s", epoch, e)
            raise

    def close(self) -> None:
        if self._warm is not None:
            self._warm.stop()
        self._warm = self._pipeline = None


def _options():
    """Autotuning and tf.data's default graph rewrites off.

    Autotuning: the pipeline has no AUTOTUNE parameter for it to tune, and deleting an
    iterator joins the autotuner's model thread, which often sleeps through the wake-up
    (benchmarks/iterator_deletion.py); Keras deletes its iterator at the end of every epoch.

    Default rewrites (map parallelization, fusions, injected prefetches): none applies to
    seqpipe's stages, and running them made every epoch's iterator slower to create.

    A user who appends stages of their own can turn either back on with `with_options`:
    the later options win."""
    tf = tensorflow()

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


def sharded_pipeline(config: Any, input_context: Any, data: Any = None,
                     split: Optional[str] = None,
                     source: Optional[MaterializedPart] = None,
                     statistics: Optional[StatisticsLike] = None) -> Pipeline:
    """The `Pipeline` of one input pipeline: its share of the sequences, per-replica batches.
    `source`: a materialized part to read instead of the config's source."""
    config = config if isinstance(config, PipelineConfig) else load_config(config)
    local_replicas = 0
    if input_context is not None and input_context.num_replicas_in_sync > 1:
        local_replicas = (input_context.num_replicas_in_sync //
                          input_context.num_input_pipelines)
    shard, mine = Shard.of(input_context), per_replica(config, input_context)
    if source is None:
        return Pipeline(mine, data, split, shard=shard, same_shape_first=local_replicas,
                        statistics=statistics)
    return Pipeline.from_source(source.share(shard), split, config=mine, shard=shard,
                                same_shape_first=local_replicas, statistics=statistics)


_TRACED: dict = {}
_TRACED_LOCK = threading.Lock()


def _traced_blocks(config: PipelineConfig):
    """The dataset of one epoch's batches, from a dataset's token, as a `tf.function`
    traced once per process for each shape of config (input and output names, levels,
    widths).

    Built afresh for every dataset, `from_generator` and `flat_map` traced five functions
    each time, on the main thread. TensorFlow also keeps every generator function it is
    given for the life of the process (it ties them to the global graph,
    tensorflow/tensorflow#57690), with whatever the function refers to; here that is one
    function (`_epochs_of`) per shape of config, and a dataset's pipeline goes when the
    dataset does."""
    tf = tensorflow()

    key = repr(batch_structure(config))
    with _TRACED_LOCK:
        if key not in _TRACED:
            spec, split = handoff.spec(config), handoff.split_block(config)

            def epoch(token):
                blocks = tf.data.Dataset.from_generator(_epochs_of, args=(token,),
                                                        output_signature=spec)
                # Blocks are prefetched; batches are not. Cutting a batch out of its block
                # is a few slices, cheaper than handing it over from a prefetch thread.
                return blocks.prefetch(1).flat_map(split)

            _TRACED[key] = tf.function(epoch, input_signature=[tf.TensorSpec((), tf.int64)])
        return _TRACED[key]


def element_spec(config: Union[PipelineConfig, Mapping, str, os.PathLike]):
    """The `tf.TensorSpec` structure of one batch, from the config alone (a `PipelineConfig`,
    a YAML path or a mapping, as `build_dataset` takes)."""
    config = config if isinstance(config, PipelineConfig) else load_config(config)
    tf = tensorflow()

    return _map_specs(lambda s: tf.TensorSpec(shape=s["shape"], dtype=s["dtype"]),
                      batch_structure(config))


def _map_specs(function, structure):
    if isinstance(structure, tuple):
        return tuple(_map_specs(function, part) for part in structure)
    return {name: function(leaf) for name, leaf in structure.items()}
