"""What an output of `build_dataset(format=...)` provides, and the epoch counting the
outputs share.

An output is an `Output` subclass in its own module of `seqpipe.formats`, listed in
`seqpipe.formats.build.OUTPUTS`: it turns a built `Pipeline` into the object a training
loop iterates, one pass per epoch, epoch k's batches those of `Pipeline.batches(k)`.
"""

from __future__ import annotations

import abc
import threading
from typing import Any, ClassVar

from seqpipe.pipeline import Pipeline


class Output(abc.ABC):
    """One value of `build_dataset(format=...)`."""

    name: ClassVar[str]  # the `format` value
    # Takes `input_context` and `read_early` (tf.distribute and tf.data's own options).
    distributed: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def build(cls, pipeline: Pipeline, read_early: bool) -> Any:
        """The dataset of `pipeline`'s batches: every pass one epoch, epoch k reshuffled with
        (seed, k); `read_early` starts reading the first epoch now."""


def keras_triple(batch) -> Any:
    """A `Batch` as `model.fit` takes it: `(x, y, sample_weight)`, or `x` with no outputs."""
    return (batch.x, batch.y, batch.sample_weight) if batch.y else batch.x


class Epochs:
    """Counts a dataset's epochs: epoch k is the k-th pass read to its end, so that a pass
    cut short (Keras looks at the first batches of a Grain dataset to learn its shapes, a
    loop that breaks) does not use up an epoch's shuffle."""

    def __init__(self) -> None:
        self._finished = 0
        self._lock = threading.Lock()

    @property
    def next(self) -> int:
        """The epoch the next pass reads."""
        with self._lock:
            return self._finished

    def finished(self, epoch: int) -> None:
        with self._lock:
            self._finished = max(self._finished, epoch + 1)
