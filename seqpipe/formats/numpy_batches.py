"""NumPy batches: `build_dataset(format="numpy")`, the pipeline's batches with no framework.

For custom training loops (PyTorch, JAX, Flax) and anything else that takes NumPy arrays.
Nothing here imports TensorFlow, Keras or Grain.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

from seqpipe.formats.base import Epochs, Output, keras_triple
from seqpipe.pipeline import Pipeline, Resume


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

    def __init__(self, pipeline: Pipeline, resume: Optional[Resume] = None) -> None:
        self.pipeline = pipeline
        self._epochs = Epochs(resume)

    def __iter__(self) -> Iterator[Any]:
        return self.epoch(*self._epochs.next)

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch)."""
        return self.pipeline.report.batches_per_epoch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of one epoch, by number, whatever was read before; from its batch
        `start` on (made without making the ones before)."""
        for batch in self.pipeline.batches(epoch, start):
            yield keras_triple(batch)
        self._epochs.finished(epoch)

    @property
    def report(self):
        """The pipeline's `Report`."""
        return self.pipeline.report


class NumpyOutput(Output):
    name = "numpy"

    @classmethod
    def build(cls, pipeline: Pipeline, read_early: bool,
              resume: Optional[Resume] = None) -> NumpyBatches:
        return NumpyBatches(pipeline, resume)
