"""tf.data: `build_dataset(format="tf")`, a `tf.data.Dataset` for `model.fit` on
TensorFlow, `tf.distribute` and the tf.data service. The dataset itself is built by the
tf.data layer (`seqpipe.tfdata`), which imports TensorFlow when the first is built."""

from __future__ import annotations

from typing import Any, Optional

from seqpipe.formats.base import Output
from seqpipe.pipeline import Pipeline, Resume


class TfOutput(Output):
    name = "tf"
    distributed = True

    @classmethod
    def build(cls, pipeline: Pipeline, read_early: bool,
              resume: Optional[Resume] = None) -> Any:
        from seqpipe.tfdata.dataset import tf_dataset  # imports TensorFlow when first built

        return tf_dataset(pipeline, read_early, resume)
