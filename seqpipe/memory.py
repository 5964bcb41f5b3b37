"""Memory: later epochs from the prepared sequences the first epoch kept, within a budget.

Every epoch reads the same sequences and groups, scales and encodes them the same way;
only the plan (shuffle, buckets, the batches) changes with the epoch. When the prepared
sequences, unpadded, fit `source.memory_mb`, the first epoch read to its end keeps the
chunks it prepared, and later epochs are assembled from them without reading the source
again: the same batches, reshuffled each epoch, as streaming gives.

Whether they fit is estimated from the index before anything is read (`prepared_bytes`),
so a source that does not fit never holds more than streaming holds; while the first
epoch keeps its chunks, their real size is checked against the budget too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from typing import Any, Optional

import numpy as np

from seqpipe.config import PipelineConfig
from seqpipe.parquet.sequences import HeldChunks, Sequences
from seqpipe.scaling import scale_inputs

logger = logging.getLogger("seqpipe")

MB = 2**20


def prepared_bytes(config: PipelineConfig, timesteps: int, sequences: int) -> int:
    """An upper estimate of the bytes the prepared sequences of a source take: every input
    value 4 bytes (prepared numbers are float32, scaled ones too, and categorical ids
    int32), labels 4 and their present flags 1, per timestep or per sequence; and each
    sequence's offset, id and scales, with 8 bytes to spare for a chunk's last offset."""
    levels = config.levels
    per = {"timestep": 0, "sequence": 0}
    for name, given in config.inputs.items():
        per[levels[name]] += 4 * given.width
    for name, wanted in config.outputs.items():
        per[levels[name]] += 5 * wanted.width
    per["sequence"] += 24 + sum(4 * width for _, width in scale_inputs(config).values())
    return timesteps * per["timestep"] + sequences * per["sequence"]


def chunk_bytes(chunk: Sequences) -> int:
    """The bytes a chunk's arrays take."""
    arrays: list = [chunk.ids, chunk.offsets]
    for group in (chunk.features, chunk.labels, chunk.present):
        for values in group.values():
            arrays += list(values) if isinstance(values, tuple) else [values]
    return int(sum(getattr(a, "nbytes", 0) for a in arrays))


class Memory:
    """The prepared chunks of one pipeline's source, kept by the first epoch read whole when
    they fit `budget` bytes.

    Args:
      budget: bytes; 0 keeps nothing.
      estimate: `prepared_bytes` of the source.
      where: the source, for the log.
    """

    def __init__(self, budget: int, estimate: int, where: str) -> None:
        self.budget, self.estimate, self.where = budget, estimate, where
        self.fits = 0 < estimate <= budget
        self._kept: Optional[list] = None
        self._lock = threading.Lock()

    @property
    def kept(self) -> Optional[list]:
        """The chunks `(index of the first sequence, Sequences)`, once an epoch kept them."""
        return self._kept

    def chunks(self, needed: Optional[np.ndarray] = None) -> HeldChunks:
        """The kept chunks, in index order; with `needed` ((n,) bool), those that hold a
        needed sequence."""
        return HeldChunks((first, chunk) for first, chunk in self._kept or ()
                          if needed is None or needed[first:first + len(chunk)].any())

    def keeping(self, chunks: Generator[tuple[int, Sequences], None, Any]
                ) -> Generator[tuple[int, Sequences], None, Any]:
        """`chunks`, handed on as they come; read to their end within the budget, they are
        kept. Returns what `chunks` returns."""
        if not self.fits or self._kept is not None:
            return (yield from chunks)
        held: Optional[list] = []
        size = 0
        while True:
            try:
                item = next(chunks)
            except StopIteration as end:
                if held is not None:
                    self._keep(held, size)
                return end.value
            if held is not None:
                size += chunk_bytes(item[1])
                held.append(item)
                if size > self.budget:
                    held = None  # larger than estimated: stream every epoch
                    self.fits = False
                    logger.info("seqpipe: %s prepared takes more than source.memory_mb=%d; "
                                "every epoch reads it", self.where, self.budget // MB)
            yield item

    def _keep(self, held: list, size: int) -> None:
        with self._lock:
            if self._kept is None:
                self._kept = held
                logger.info("seqpipe: later epochs are built from the %.0f MB of prepared "
                            "sequences the first kept in memory (source.memory_mb=%d)",
                            size / MB, self.budget // MB)


def describe(memory: Memory) -> str:
    """Which way the next epoch goes, for the log."""
    if memory.kept is not None:
        return "from the prepared sequences kept in memory"
    if memory.fits:
        return (f"from {memory.where}, keeping its prepared sequences (estimated "
                f"{memory.estimate / MB:,.0f} MB of source.memory_mb={memory.budget // MB})")
    if not memory.budget:
        return f"from {memory.where} (source.memory_mb=0)"
    return (f"from {memory.where}: its prepared sequences (estimated "
            f"{memory.estimate / MB:,.0f} MB) do not fit source.memory_mb="
            f"{memory.budget // MB}")

