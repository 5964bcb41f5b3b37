"""The seam for what a batch row holds: one `BatchKind` subclass per kind of batch.

A kind answers every question whose answer depends on what a row holds, so that nothing
outside `seqpipe.batches` asks which kind it has:

- from the config alone: what every batch looks like (`spec`: each array's axis, the
  fixed timesteps and rows), which kind applies (`applies`), which timesteps the
  statistics are computed over (`counted`, `statistics_over`) and what `seqpipe inspect`
  says about the batches (`preview`);
- planned over one part's sequences (an instance): which sequences the batches draw on
  (`members`), the batches of any epoch, assembled from chunks of sequences as they stream
  in (`blocks`), how many there are (`batches_per_epoch`), its figures for the report
  (`report_fields`) and where a model's predictions go back to (`targets`).

`seqpipe.batches.kinds` lists the kinds; a new one is one module here, one entry there and
its config section.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Optional

import numpy as np

from seqpipe.batches import accumulate
from seqpipe.batches.block import Batch, Block
from seqpipe.config import PipelineConfig
from seqpipe.index import KeptSteps, SequenceSource
from seqpipe.parquet.sequences import Sequences
from seqpipe.scaling import scale_inputs

# How a kind reads its sequences: `read(needed)` -> chunks `(index of the first, Sequences)`.
Reader = Callable[[Optional[np.ndarray]], Iterable[tuple[int, Sequences]]]


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """What every batch of a config looks like, before any data is read.

    Attributes:
      axes: input, extra input or output name -> how a batch holds it: "sequence"
        `(batch, ...)`, "timestep" `(batch, time, ...)`, or another time axis a kind adds
        ("future" `(batch, horizon, ...)` for windows).
      steps: time axis -> the timesteps of every batch on it, or None where they vary.
      rows: the rows of every batch, or None where they vary.
      extra_inputs: inputs of `x` added to the config's, by name -> (dtype, the shape
        after the batch and time axes): the `padding.mask` input, bool `()`; each scale
        input (`normalize.input`), float32 `(2k,)`.
    """

    axes: Mapping[str, str]
    steps: Mapping[str, Optional[int]]
    rows: Optional[int]
    extra_inputs: Mapping[str, tuple[str, tuple[int, ...]]] = dataclasses.field(
        default_factory=dict)

    @property
    def static(self) -> bool:
        """Whether every batch of every epoch has one shape."""
        return self.rows is not None and all(s is not None for s in self.steps.values())

    def shape(self, name: str, tail: tuple = ()) -> list:
        """The batch shape of input or output `name`, None where it varies."""
        axis = self.axes[name]
        lead = [self.rows] if axis == "sequence" else [self.rows, self.steps[axis]]
        return lead + list(tail)


def extra_inputs(config: PipelineConfig) -> tuple[dict, dict]:
    """The spec's extra inputs every kind has, and their axes: the `padding.mask` input on
    the timestep axis, and the scale inputs (see `seqpipe.scaling.scale_inputs`), one row
    per batch row."""
    extra: dict = {config.padding.mask: ("bool", ())} if config.padding.mask else {}
    axes = dict.fromkeys(extra, "timestep")
    for name, (_, width) in scale_inputs(config).items():
        extra[name], axes[name] = ("float32", (width,)), "sequence"
    return extra, axes


@dataclasses.dataclass(frozen=True)
class Counted:
    """The timesteps statistics are computed over: `length[i]` timesteps of sequence i from
    `skipped[i]` on, for the sequences `counted` marks."""

    skipped: np.ndarray
    length: np.ndarray
    counted: np.ndarray


@dataclasses.dataclass(frozen=True)
class Targets:
    """Where one batch's predictions of one output go back to, one entry per value kept.

    Entry i is the model's value at batch row `row[i]` and, for a per-timestep output, at
    `at[i]` along its time axis (`at` is None for a per-sequence output). It belongs to
    sequence `sequence[i]` (its index in the source's index).

    Attributes:
      positions: the frame's columns after the id, in sort order: timesteps of each
        entry's sequence, shown as the source's times there (or as they are, without a
        time column).
      numbers: further columns, shown as they are.
    """

    row: np.ndarray
    at: Optional[np.ndarray]
    sequence: np.ndarray
    positions: Mapping[str, np.ndarray]
    numbers: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Padding:
    """The padding waste of one way of batching, for `seqpipe inspect`."""

    label: str
    boundaries: Optional[tuple[int, ...]]  # None: batches cut with no regard to length
    waste: float


@dataclasses.dataclass(frozen=True)
class Preview:
    """What `seqpipe inspect` says about a config's batches before any is made."""

    lines: tuple[str, ...]
    padding: tuple[Padding, ...] = ()  # ways of batching compared (plotted with --plot)


class BatchKind(abc.ABC):
    """How one part's sequences become batches. Subclasses override every abstract method.

    Args:
      config: the pipeline config.
      source: where the sequences come from (its index: ids, lengths, labels present).
      kept: each sequence's timesteps after truncation (`padding.maxlen`).
      in_part: (n,) the sequences of the part and shard the pipeline reads.
      part: the part ('train', 'validation', 'test') or None.
      seed: the shuffle seed; None: no shuffle.
      slices: the parts every global batch is cut into (`seqpipe.lockstep`): each batch's
        rows must be a multiple of it (rows past its sequences are empty, weight 0).

    Raises:
      DataError: the part's sequences make no batch of this kind.
    """

    name: ClassVar[str]  # in the user's words, for messages

    def __init__(self, config: PipelineConfig, source: SequenceSource, kept: KeptSteps,
                 in_part: np.ndarray, part: Optional[str], seed: Optional[int],
                 slices: int = 1) -> None:
        self.config, self.source, self.kept = config, source, kept
        self.part, self.seed, self.slices = part, seed, slices

    # From the config alone.

    @classmethod
    @abc.abstractmethod
    def applies(cls, config: PipelineConfig) -> bool:
        """Whether this kind makes the batches of `config`."""

    @classmethod
    @abc.abstractmethod
    def spec(cls, config: PipelineConfig) -> BatchSpec:
        """What every batch looks like."""

    @classmethod
    @abc.abstractmethod
    def counted(cls, config: PipelineConfig, offsets: np.ndarray, counted: np.ndarray,
                before: Optional[np.ndarray]) -> Counted:
        """The timesteps statistics are computed over, in the sequences whose flat arrays
        start at `offsets`: those of the sequences `counted` marks (the train part) that
        a batch of the train part would hold. `before`: with `split.time_cutoff`, each
        sequence's timesteps before it."""

    @classmethod
    @abc.abstractmethod
    def statistics_over(cls, config: PipelineConfig) -> str:
        """What `counted` counts, for messages: "the train part's windows", say."""

    @classmethod
    @abc.abstractmethod
    def preview(cls, config: PipelineConfig, lengths: np.ndarray, ids: Any,
                before: Optional[np.ndarray], from_file: bool) -> Preview:
        """What the batches of every sequence (`lengths` timesteps each, before truncation;
        `ids` a pyarrow array or None) would look like, from the planner the pipeline uses.
        `from_file`: False for a stand-in config, whose batching keys are not the user's."""

    # Planned over one part.

    @property
    @abc.abstractmethod
    def members(self) -> np.ndarray:
        """(m,) ascending indices (into the source's index) of the sequences the part's
        batches draw on; only these are read."""

    @abc.abstractmethod
    def batches_per_epoch(self) -> int:
        """Batches of every epoch (the same each epoch), a multiple of
        `batching.accumulation_steps`."""

    @abc.abstractmethod
    def blocks(self, epoch: int, read: Reader, start: int = 0) -> Iterator[Block]:
        """The epoch's batches in blocks, from its batch `start` on (the first block cut
        with `Block.from_batch`), assembled from the chunks `read(needed)` gives (the
        members' sequences, prepared, in index order, each with the index of its first
        sequence; `needed`: a mask of the sequences the blocks from `start` on draw on, or
        None for all). The same (seed, epoch) always gives the same batches."""

    def units(self, block: Block, output: str) -> np.ndarray:
        """(batches,) what `output`'s weight mode averages over in each batch of `block`
        (`seqpipe.batches.accumulate`): as for one sequence or window per row, unless a
        kind says otherwise."""
        return accumulate.units(block, output, self.config)

    @abc.abstractmethod
    def report_fields(self) -> dict[str, Any]:
        """The `Report` fields this kind fills: batching figures, what it dropped or
        padded, and `batching` (the report's lines about it) and `batching_changes`."""

    @abc.abstractmethod
    def targets(self, batch: Batch, level: str, steps: int) -> Targets:
        """Where the predictions of one output for `batch` go back to; `level` is the
        output's, `steps` the time axis of the model's prediction (per-timestep)."""
