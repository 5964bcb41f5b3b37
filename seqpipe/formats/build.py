"""`build_dataset`: a config's batches in the output a training loop takes.

Every output (`seqpipe.formats.base.Output`) is built from the same `Pipeline`, so the same
config and seed give the same batches, epoch by epoch, in every format.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError
from seqpipe.formats.base import Output, resume_of
from seqpipe.formats.grain_dataset import GrainOutput
from seqpipe.formats.numpy_batches import NumpyOutput
from seqpipe.formats.tf_dataset import TfOutput
from seqpipe.lockstep import Lockstep, ProcessLike
from seqpipe.pipeline import Pipeline
from seqpipe.statistics import StatisticsLike

if TYPE_CHECKING:
    from seqpipe.materialized.read import MaterializedPart

logger = logging.getLogger("seqpipe")

# format -> its output; the first is the default.
OUTPUTS: dict[str, type[Output]] = {o.name: o for o in (TfOutput, GrainOutput, NumpyOutput)}


def build_dataset(config: Union[PipelineConfig, Pipeline, Mapping, str, os.PathLike],
                  data: Any = None, split: Optional[str] = None, *, input_context: Any = None,
                  process: ProcessLike = None, read_early: bool = False,
                  statistics: Optional[StatisticsLike] = None, format: str = "tf",
                  resume: Optional[Mapping[str, int]] = None):
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
        `strategy.distribute_datasets_from_function` passes: `batching.batch_size` is then
        the global batch, and this input pipeline yields its replicas' parts of each, one
        after the other (see `process`).
      process: `(index, count)`: this process's part of every global batch of a run on
        `count` processes (a JAX multi-process run, say), or "auto" for JAX's
        `process_index()` and `process_count()`. `batching.batch_size` is the global batch:
        every process plans the same global batches from the shared seed and yields its
        `batch_size / count` rows of each, so every process runs the same number of
        steps with the same shapes, every sequence is in one process's rows once per
        epoch, and the weights make the mean over the processes the global batch's mean
        (`seqpipe.lockstep`).
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
        of NumPy batches (`seqpipe.formats.numpy_batches.NumpyBatches`), for custom loops. Neither
        of the last two imports TensorFlow; all three give the same batches, epoch by
        epoch, for the same config and seed.
      resume: `{"epoch": e, "batch": b}` (0-based; what `seqpipe.resume_state` returns
        after an interrupted `model.fit`): the first pass over the dataset is epoch e from
        its batch b to its end, the same batches an uninterrupted dataset yields there,
        and the passes after it are epochs e + 1, e + 2, ... The batches before b are not
        made: only the sequences from the shuffle window that holds batch b on are read.
        Each input pipeline (`input_context`) resumes its own share.

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
    output = OUTPUTS.get(format)
    if output is None:
        raise ConfigError(f"build_dataset: format must be one of {', '.join(OUTPUTS)}; "
                          f"got {format!r}")
    if not output.distributed and (input_context is not None or read_early):
        raise ConfigError(f"build_dataset: input_context and read_early are for "
                          f"format='tf' (tf.distribute, tf.data); got format={format!r}")
    if isinstance(config, Pipeline):
        if input_context is not None or process is not None:
            raise ConfigError("input_context and process need a config, not a Pipeline "
                              "already built: each process plans its own parts of the "
                              "global batches; pass the config")
        if statistics is not None:
            raise ConfigError("statistics= goes to the Pipeline when it is built, not to "
                              "build_dataset with a Pipeline already built")
        pipeline = config
    else:
        pipeline = lockstep_pipeline(config, Lockstep.of(input_context, process), data=data,
                                     split=split, statistics=statistics)
    position = resume_of(resume, pipeline)
    if position is not None and position.batch and format != "tf":
        logger.warning(
            "seqpipe: a %s dataset resumed at batch %d of epoch %d: its first pass is "
            "shorter than an epoch. To resume model.fit, build it with format='tf': Keras "
            "counts a %s dataset's batches per epoch in the first epoch it runs, and would "
            "cut every later epoch to that length.", format, position.batch, position.epoch,
            format)
    return output.build(pipeline, read_early, position)


def lockstep_pipeline(config: Any, lockstep: Lockstep, data: Any = None,
                      split: Optional[str] = None,
                      source: Optional[MaterializedPart] = None,
                      statistics: Optional[StatisticsLike] = None) -> Pipeline:
    """The `Pipeline` of one process (or input pipeline): its parts of every global batch.
    `source`: a materialized part to read instead of the config's source."""
    config = config if isinstance(config, PipelineConfig) else load_config(config)
    if source is None:
        return Pipeline(config, data, split, lockstep=lockstep, statistics=statistics)
    return Pipeline.from_source(source, split, config=config, lockstep=lockstep,
                                statistics=statistics)
