"""Lockstep: every process and replica of a run takes its slice of one global batch per step.

Training on several processes (JAX multi-process, `tf.distribute` workers) or replicas needs
each of them to run the same number of steps, with the same shapes at every step (Keras's
JAX backend builds the global batch with `jax.make_array_from_process_local_data`; a
process with one step more hangs the others), and the loss averaged over them to be the
mean over the whole global step, not a mean of the replicas' means.

So every process plans the epoch's *global* batches from the shared seed, exactly as one
process would plan them with `batching.batch_size`; rounds each batch's rows up to a
multiple of the `slices` (all processes' replicas; the extra rows are empty, weight 0);
weighs every global batch whole; and cuts it into `slices` equal parts. Process p with R
local replicas takes parts p * R to p * R + R - 1 of every batch, one after the other
(tf.distribute hands consecutive batches to the local replicas of a step). Each part has
`rows / slices` rows and the global batch's timesteps; its weights are the global batch's,
so the mean over the parts of each part's `sum(w * loss) / size(w)` is the global batch's
`sum(w * loss) / size(w)`: the mean the weight mode promises for the global step.

Every process reads the whole source and assembles every global batch (the price of one
plan with no messages between processes), and keeps its parts.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Union

import numpy as np

from seqpipe.batches.block import Block
from seqpipe.config import PipelineConfig
from seqpipe.errors import ConfigError

# What `build_dataset(process=...)` takes: None, "auto" or (index, count).
ProcessLike = Union[None, str, tuple]


@dataclasses.dataclass(frozen=True)
class Lockstep:
    """This pipeline's share of every global batch: process `process` of `processes`, with
    `replicas` local replicas, one part each per step."""

    process: int = 0
    processes: int = 1
    replicas: int = 1

    def __post_init__(self) -> None:
        for name in ("processes", "replicas"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                    and value >= 1):
                raise ConfigError(f"process: the number of {name} must be a positive "
                                  f"integer; got {value!r}")
        if not (isinstance(self.process, (int, np.integer)) and not isinstance(self.process,
                                                                                bool)
                and 0 <= self.process < self.processes):
            raise ConfigError(f"process: the process index must be in [0, {self.processes}) "
                              f"for {self.processes} processes; got {self.process!r}. Pass "
                              f"process=(index, count) with 0 <= index < count.")

    @property
    def slices(self) -> int:
        """Parts of every global batch: one per replica of every process."""
        return self.processes * self.replicas

    @property
    def first(self) -> int:
        """The first of this pipeline's parts."""
        return self.process * self.replicas

    @classmethod
    def of(cls, input_context: Any = None, process: ProcessLike = None) -> Lockstep:
        """From a `tf.distribute.InputContext` (its input pipeline is the process, its
        replicas in sync shared over the pipelines), or from `process`: (index, count),
        "auto" (JAX's process index and count: a Keras distribution on JAX uses the
        same), or None (one process)."""
        if input_context is not None:
            if process is not None:
                raise ConfigError("pass input_context or process, not both: with "
                                  "tf.distribute the input context says which process "
                                  "this is")
            pipelines = int(input_context.num_input_pipelines)
            return cls(int(input_context.input_pipeline_id), pipelines,
                       max(int(input_context.num_replicas_in_sync) // pipelines, 1))
        if process is None:
            return cls()
        if isinstance(process, str):
            if process != "auto":
                raise ConfigError(f"process must be (index, count), 'auto' or None; got "
                                  f"{process!r}")
            return cls(*_running_process())
        if not (isinstance(process, (tuple, list)) and len(process) == 2):
            raise ConfigError(f"process must be (index, count), 'auto' or None; got "
                              f"{process!r}")
        return cls(process[0], process[1])

    def local(self, config: PipelineConfig) -> PipelineConfig:
        """The config of one part: `batching.batch_size` (the global batch, as Keras's
        `fit(batch_size=...)`) and `max_timesteps` divided by the slices.

        Raises:
          ConfigError: the global batch does not divide evenly into the slices, or the
            processes cannot plan the same epochs (a shuffle with no seed).
        """
        if self.slices == 1:
            return config
        batching, where = config.batching, self._where()
        if batching.batch_size % self.slices:
            raise ConfigError(
                f"batching.batch_size={batching.batch_size} is the global batch and must "
                f"divide evenly over {where}; use a multiple of {self.slices}")
        if self.processes > 1 and config.shuffle.buffer_size and config.shuffle.seed is None:
            raise ConfigError(
                f"shuffle.seed is null, so each of the {self.processes} processes would "
                f"draw its own and plan different batches; set shuffle.seed (any integer) "
                f"so that every process plans the same epochs")
        budget = batching.max_timesteps
        if budget is not None and budget // self.slices < (config.padding.maxlen or 1):
            raise ConfigError(
                f"batching.max_timesteps={budget} over {where} leaves "
                f"{budget // self.slices} per part, below padding.maxlen="
                f"{config.padding.maxlen}: a part could not hold a sequence of maxlen. "
                f"Raise max_timesteps.")
        return dataclasses.replace(config, batching=dataclasses.replace(
            batching, batch_size=batching.batch_size // self.slices,
            max_timesteps=None if budget is None else budget // self.slices))

    def _where(self) -> str:
        if self.processes > 1 and self.replicas > 1:
            return (f"the {self.slices} replicas ({self.processes} processes x "
                    f"{self.replicas} replicas)")
        if self.processes > 1:
            return f"the {self.processes} processes"
        return f"the {self.replicas} replicas in sync"


def parts(blocks: Iterable[Block], lockstep: Lockstep) -> Iterator[Block]:
    """Each block of global batches (rows a multiple of the slices) as this pipeline's
    parts of them: for every batch, parts `first` to `first + replicas - 1`."""
    if lockstep.slices == 1:
        yield from blocks
        return
    for block in blocks:
        yield block.parts(lockstep.first, lockstep.replicas, lockstep.slices)


def _running_process() -> tuple[int, int]:
    """(index, count) of this process in a JAX multi-process run (which is also what a
    Keras distribution on JAX uses); (0, 1) without JAX imported."""
    jax = sys.modules.get("jax")
    if jax is None:
        return 0, 1
    return int(jax.process_index()), int(jax.process_count())
