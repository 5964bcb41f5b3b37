"""The kinds of batch, and which one a config makes.

To add a kind: a `BatchKind` subclass in its own module of `seqpipe.batches`, listed in
`KINDS` before the kinds it must take precedence over, and its config section.
"""

from __future__ import annotations

from typing import Any

from seqpipe.batches.kind import BatchKind, BatchSpec
from seqpipe.batches.packed import PackedRows
from seqpipe.batches.whole import WholeSequences
from seqpipe.batches.windows import WindowBatches
from seqpipe.config import PipelineConfig

# Asked in order; whole sequences, the default, last.
KINDS: tuple[type[BatchKind], ...] = (WindowBatches, PackedRows, WholeSequences)


def kind_of(config: PipelineConfig) -> type[BatchKind]:
    """The kind of batch `config` makes."""
    return next(kind for kind in KINDS if kind.applies(config))


def spec_of(config: PipelineConfig) -> BatchSpec:
    """What every batch of `config` looks like (see `BatchSpec`)."""
    return kind_of(config).spec(config)


def batch_structure(config: PipelineConfig) -> Any:
    """One batch's structure as plain data: `{"shape": [...], "dtype": ...}` leaves in the
    `(x, y, sample_weight)` tuple (x alone without outputs), None where a size varies. No
    TensorFlow.

    Numeric inputs and labels are float32, categorical ones int32 ids without a last axis
    (inputs) or with one (labels, as Keras's sparse losses take them); the kind's extra
    inputs (the `padding.mask` input, bool; scale inputs) come after the config's."""
    spec = spec_of(config)

    def leaf(name, tail, dtype="float32"):
        return {"shape": spec.shape(name, tail), "dtype": dtype}

    x = {name: leaf(name, s.tail, s.dtype) for name, s in config.inputs.items()}
    x.update({name: leaf(name, tail, dtype)
              for name, (dtype, tail) in spec.extra_inputs.items()})
    if not config.outputs:
        return x
    y = {name: leaf(name, (s.width,), s.dtype) for name, s in config.outputs.items()}
    weights = {name: leaf(name, ()) for name in config.outputs}
    return x, y, weights
