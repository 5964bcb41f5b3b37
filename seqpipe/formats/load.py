"""`load_materialized`: the dataset of a materialized output, batched on the fly by the
same pipeline as `build_dataset`, or by tf.data service workers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

from seqpipe._internal.lazy import tensorflow
from seqpipe.errors import ConfigError
from seqpipe.formats.build import build_dataset, lockstep_pipeline
from seqpipe.lockstep import Lockstep, ProcessLike
from seqpipe.materialized.read import open_part
from seqpipe.tfdata.service import PROCESSING_MODES, check, records_dataset


def load_materialized(path: Union[str, os.PathLike], config: Any = None,
                      split: Optional[str] = None, *, input_context: Any = None,
                      process: ProcessLike = None, service: Optional[str] = None,
                      processing_mode: str = "distributed_epoch",
                      job_name: Optional[str] = None, resume: Optional[Mapping[str, int]] = None):
    """The `(x, y, sample_weight)` dataset of a materialized output, batched on the fly.

    With the same config and seed, it yields exactly the batches `build_dataset` yields
    from the Parquet source, in the same order, epoch after epoch.

    Args:
      path: the folder `seqpipe materialize` wrote.
      config: None uses the config it was written with. Another config may change
        batching, shuffle, weights, padding side and value, and label fill values; the
        keys that decide what the records hold (`FROZEN`) must match.
      split: the part to read ('train', 'validation', 'test'); needed when there are several.
      input_context, process: this input pipeline's (or process's) parts of every global
        batch, as `build_dataset` makes them.
      service: a tf.data service dispatcher, 'grpc://HOST:PORT': the workers read and
        batch, in TensorFlow ops alone (`seqpipe.service`), so the batches are not the
        NumPy plan's (see there). Every worker must read `path` at the same path.
      processing_mode: with `service`: 'distributed_epoch' hands each shard file to one
        worker, so all consumers together get every sequence once per epoch;
        'parallel_epochs' has every worker run whole epochs.
      job_name: with `service`: consumers that give the same name share one job.
      resume: `{"epoch": e, "batch": b}`: start at batch b of epoch e, as
        `build_dataset(resume=...)` does (only the shard files from there on are read).
        Not with `service`, whose workers share out the files as they go.

    Raises:
      SeqpipeError: no such output, an unfinished one, or a config that does not fit it.

    Example::

      model.fit(seqpipe.load_materialized("out/", split="train"),
                validation_data=seqpipe.load_materialized("out/", split="validation"))
    """
    part = open_part(path, config, split)
    if service is None:
        lockstep = Lockstep.of(input_context, process)
        return build_dataset(lockstep_pipeline(part.config, lockstep, split=part.time_part,
                                               source=part), resume=resume)
    if resume is not None:
        raise ConfigError("resume is for datasets batched here, not with service: the "
                          "tf.data service's workers share the files out as they go, so a "
                          "position in the epoch is not the same batch twice")
    check(part.config)
    if processing_mode not in PROCESSING_MODES:
        raise ConfigError(f"processing_mode must be one of {', '.join(PROCESSING_MODES)}; "
                          f"got {processing_mode!r}")
    if input_context is not None or process is not None:
        raise ConfigError("give service or input_context (or process), not both: with the "
                          "tf.data service the dispatcher shares out the files")
    tf = tensorflow()
    return records_dataset(part).apply(tf.data.experimental.service.distribute(
        processing_mode, service, job_name=job_name))
