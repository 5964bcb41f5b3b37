"""NumPy batches: `build_dataset(format="numpy")`, the pipeline's batches with no framework.

For custom training loops (PyTorch, JAX, Flax) and anything else that takes NumPy arrays.
Nothing here imports TensorFlow, Keras or Grain.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from seqpipe.pipeline import Pipeline


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


class NumpyBatches:
    """The `(x, y, sample_weight)` batches of a pipeline as NumPy arrays, re-iterable: each
    pass over it is one epoch, reshuffled with (seed, epoch) as the tf.data dataset is, so
    the same config gives the same batches in every format.

    Each batch is a dict of arrays per part (`x` alone when the config has no outputs).
    The arrays are views of the pipeline's assembly buffers, which are reused only once
    nothing refers to them: keep or copy them as you like.

    Example::

      batches = seqpipe.build_dataset("configs/train.yaml", format="numpy")
      for epoch in range(3):
          for x, y, sample_weight in batches:
              ...  # a PyTorch or JAX training step
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._epochs = Epochs()

    def __iter__(self) -> Iterator[Any]:
        return self.epoch(self._epochs.next)

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch)."""
        return self.pipeline.report.batches_per_epoch

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The batches of one epoch, by number, whatever was read before."""
        for batch in self.pipeline.batches(epoch):
            yield keras_triple(batch)
        self._epochs.finished(epoch)

    @property
    def report(self):
        """The pipeline's `Report`."""
        return self.pipeline.report
