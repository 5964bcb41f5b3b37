"""Grain: `build_dataset(format="grain")`, a `grain.IterDataset` of the pipeline's batches.

Keras 3 takes Grain datasets in `model.fit` on every backend, and on JAX
and PyTorch nothing then imports TensorFlow. The batches are the pipeline's NumPy batches;
Grain adds its iterator protocol, with checkpointable state (epoch and batches read).
Needs the `grain` extra: `pip install "seqpipe[grain]"`. Grain is imported when the first
such dataset is built, so that seqpipe imports without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

from seqpipe.errors import ConfigError
from seqpipe.formats.base import Epochs, Output, keras_triple
from seqpipe.pipeline import Pipeline, Resume

_CLASS: Any = None


def grain_batches(pipeline: Pipeline, resume: Optional[Resume] = None):
    """A pipeline's batches as a Grain `IterDataset`: each iterator made over it reads one
    epoch, reshuffled with (seed, epoch), so the batches equal `format="tf"`'s epoch by
    epoch. Epoch k is the k-th pass read to its end (see `formats.base.Epochs`).

    Its iterators' state is `{"epoch": k, "batches": n}`; `set_state` resumes epoch k after
    its first n batches, seeking to them as `build_dataset(resume=...)` does (the batches
    before are not made again)."""
    return _dataset_class()(pipeline, resume)


class GrainOutput(Output):
    name = "grain"

    @classmethod
    def build(cls, pipeline: Pipeline, read_early: bool,
              resume: Optional[Resume] = None) -> Any:
        return grain_batches(pipeline, resume)


def _dataset_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    try:
        import grain
    except ImportError as e:  # the optional extra
        raise ConfigError('format="grain" needs Grain: pip install "seqpipe[grain]" (or '
                          'pip install grain)') from e

    class EpochIterator(grain.DatasetIterator):
        """One epoch of a `GrainBatches`."""

        def __init__(self, pipeline: Pipeline, epochs: Epochs, epoch: int,
                     start: int) -> None:
            super().__init__()
            self._pipeline, self._epochs = pipeline, epochs
            self._epoch, self._read = epoch, start
            self._batches: Iterator[Any] = self._from(start)

        def _from(self, first: int) -> Iterator[Any]:
            if first >= self._pipeline.report.batches_per_epoch:
                return iter(())  # the state of an epoch read to its end
            return (keras_triple(b) for b in self._pipeline.batches(self._epoch, first))

        def __next__(self) -> Any:
            try:
                batch = next(self._batches)
            except StopIteration:
                self._epochs.finished(self._epoch)
                raise
            self._read += 1
            return batch

        def get_state(self) -> dict[str, Any]:
            return {"epoch": self._epoch, "batches": self._read}

        def set_state(self, state: dict[str, Any]) -> None:
            self._epoch, self._read = int(state["epoch"]), int(state["batches"])
            self._batches = self._from(self._read)

    class GrainBatches(grain.IterDataset):
        __doc__ = grain_batches.__doc__

        def __init__(self, pipeline: Pipeline, resume: Optional[Resume] = None) -> None:
            super().__init__()
            self.pipeline = pipeline
            self._epochs = Epochs(resume)

        def __iter__(self) -> EpochIterator:
            return EpochIterator(self.pipeline, self._epochs, *self._epochs.next)

        def __len__(self) -> int:
            """Batches per epoch (the same every epoch)."""
            return self.pipeline.report.batches_per_epoch

        def __str__(self) -> str:
            return (f"seqpipe.GrainBatches({len(self)} batches per epoch of "
                    f"{self.pipeline.report.source})")

    _CLASS = GrainBatches
    return GrainBatches
