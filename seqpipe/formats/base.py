"""What an output of `build_dataset(format=...)` provides, and the epoch counting the
outputs share.

An output is an `Output` subclass in its own module of `seqpipe.formats`, listed in
`seqpipe.formats.build.OUTPUTS`: it turns a built `Pipeline` into the object a training
loop iterates, one pass per epoch, epoch k's batches those of `Pipeline.batches(k)`.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Optional

from seqpipe.errors import ConfigError
from seqpipe.pipeline import Pipeline, Resume


def resume_of(resume: Any, pipeline: Pipeline) -> Optional[Resume]:
    """`build_dataset(resume=...)` checked against the pipeline's epoch: None, or a
    mapping with the keys "epoch" and "batch" (as `seqpipe.resume_state` returns); batch
    b of an epoch of b batches is the next epoch's start."""
    if resume is None:
        return None
    if not isinstance(resume, Mapping) or set(resume) != {"epoch", "batch"}:
        raise ConfigError(f'resume must be None or a mapping {{"epoch": e, "batch": b}} '
                          f"(what seqpipe.resume_state returns); got {resume!r}")
    for key in ("epoch", "batch"):
        value = resume[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"resume[{key!r}] must be a whole number >= 0; got {value!r}")
    count = pipeline.report.batches_per_epoch
    if resume["batch"] == count:  # after the epoch's last batch: the next one's start
        return Resume(int(resume["epoch"]) + 1, 0)
    if resume["batch"] > count:
        raise ConfigError(
            f"resume: batch {resume['batch']} is past the end of an epoch, which has "
            f"{count:,} batches (0 to {count - 1:,}) with this config and data; to start "
            f"the next epoch pass {{'epoch': {resume['epoch'] + 1}, 'batch': 0}}. A "
            f"different batch_size, shuffle or data gives different epochs: resume with "
            f"the config and data the run was started with.")
    return Resume(int(resume["epoch"]), int(resume["batch"]))


class Output(abc.ABC):
    """One value of `build_dataset(format=...)`."""

    name: ClassVar[str]  # the `format` value
    # Takes `input_context` and `read_early` (tf.distribute and tf.data's own options).
    distributed: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def build(cls, pipeline: Pipeline, read_early: bool,
              resume: Optional[Resume] = None) -> Any:
        """The dataset of `pipeline`'s batches: every pass one epoch, epoch k reshuffled with
        (seed, k); `read_early` starts reading the first epoch now. With `resume`, the
        first pass is epoch `resume.epoch` from its batch `resume.batch`, and the passes
        after it the epochs after that one."""


def keras_triple(batch) -> Any:
    """A `Batch` as `model.fit` takes it: `(x, y, sample_weight)`, or `x` with no outputs."""
    return (batch.x, batch.y, batch.sample_weight) if batch.y else batch.x


class Epochs:
    """Counts a dataset's epochs: epoch k is the k-th pass read to its end, so that a pass
    cut short (Keras looks at the first batches of a Grain dataset to learn its shapes, a
    loop that breaks) does not use up an epoch's shuffle. A resumed dataset counts from
    the epoch it resumes, whose passes start at the batch it resumes at until one is
    read to its end."""

    def __init__(self, resume: Optional[Resume] = None) -> None:
        self.resume = resume or Resume(0, 0)
        self._finished = self.resume.epoch
        self._lock = threading.Lock()

    @property
    def next(self) -> tuple[int, int]:
        """The epoch the next pass reads, and its first batch."""
        with self._lock:
            return self._finished, self.resume.start(self._finished)

    def finished(self, epoch: int) -> None:
        with self._lock:
            self._finished = max(self._finished, epoch + 1)
