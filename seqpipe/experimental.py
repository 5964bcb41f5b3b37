"""The types for extending seqpipe: a new source of sequences, a new kind of batch, a new
output. Their names and fields may still change between minor versions; the rest of the
public API (`seqpipe.*`) does not.

- A source of sequences implements `SequenceSource` (an `Index`, chunks of `Sequences` in
  index order) and is handed to `seqpipe.Pipeline.from_source`.
- A kind of batch subclasses `BatchKind` (see `seqpipe.batches.kind`); `KINDS` lists the
  kinds a config chooses from, and `spec_of(config)` says what its batches look like.
- An output subclasses `Output` (see `seqpipe.formats.base`); `OUTPUTS` maps each
  `build_dataset(format=...)` value to one.

Example::

    from seqpipe import experimental

    spec = experimental.spec_of(config)   # a BatchSpec
    spec.static                           # every batch of every epoch has one shape
"""

from seqpipe.batches.block import Batch, BatchPlaces, Block
from seqpipe.batches.kind import BatchKind, BatchSpec, Counted, Padding, Preview, Targets
from seqpipe.batches.kinds import KINDS, batch_structure, kind_of, spec_of
from seqpipe.formats.base import Output
from seqpipe.formats.build import OUTPUTS
from seqpipe.index import Index, KeptSteps, SequenceSource, truncate
from seqpipe.parquet.sequences import Categories, Sequences

__all__ = [
    "KINDS", "OUTPUTS", "Batch", "BatchKind", "BatchPlaces", "BatchSpec", "Block",
    "Categories", "Counted", "Index", "KeptSteps", "Output", "Padding", "Preview",
    "SequenceSource", "Sequences", "Targets", "batch_structure", "kind_of", "spec_of",
    "truncate",
]
