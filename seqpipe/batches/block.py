"""Blocks: padded batches end to end in flat arrays, the unit every kind of batch is
assembled in and handed on (to tf.data, Grain or NumPy) as.

A block's arrays are one per input and output, on an axis (`BatchSpec.axes`) that says how
a batch holds them; `BatchPlaces` says where each batch lies in them, and `Block.batch`
cuts batch j out as views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Optional

import numpy as np

from seqpipe._internal.buffers import BufferPool
from seqpipe.config import PipelineConfig
from seqpipe.scaling import scale_inputs
from seqpipe.weights import batch_weights


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch: the Keras triple plus which sequences it holds.

    Attributes:
      x, y, sample_weight: the arrays `model.fit` takes, by input and output name.
      ids: the ids of the batch's sequences, in row order; rows past them (a batch padded
        to a fixed size) are empty.
      lengths: each sequence's real timesteps after truncation: row i's real values are
        `[:lengths[i]]` with `padding.side: post`, the last `lengths[i]` with `pre`. With
        windows, each window's sequence's timesteps.
      ends: with windows, the position of each window's last target in its sequence
        (its targets are the `horizon` positions up to it); None for whole sequences.
      scales: outputs scaled `per: window` -> (shift, divisor), each `(rows, k)`: row i's
        labels are `(label - shift[i]) / divisor[i]` (see `seqpipe.scaling`).
    """

    x: dict
    y: dict
    sample_weight: dict
    ids: np.ndarray
    lengths: np.ndarray
    ends: Optional[np.ndarray] = None
    scales: Mapping[str, tuple] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BatchPlaces:
    """Where each batch of a block lies in the block's flat arrays, one entry per batch.
    An array on axis `a` (see `BatchSpec.axes`) holds batch j at positions
    `start[a][j]` to `+ rows[j] * steps[a][j]`, shaped `(rows[j], steps[a][j], ...)`; on the
    "sequence" axis, which has no steps, `+ rows[j]`, shaped `(rows[j], ...)`."""

    start: Mapping[str, np.ndarray]  # axis -> int64 first position of each batch
    rows: np.ndarray  # B: the batch's rows (its sequences or windows, and empty rows)
    steps: Mapping[str, np.ndarray]  # axis -> T: timesteps of every row (not "sequence")

    def __len__(self) -> int:
        return len(self.rows)

    def size(self, axis: str) -> np.ndarray:
        """Positions each batch takes on `axis`."""
        return self.rows if axis == "sequence" else self.rows * self.steps[axis]

    def select(self, mask: np.ndarray) -> BatchPlaces:
        return BatchPlaces({a: s[mask] for a, s in self.start.items()}, self.rows[mask],
                           {a: s[mask] for a, s in self.steps.items()})

    def ends(self) -> dict:
        """Per axis, the positions a block needs: past the end of its last batch."""
        return {a: int(s[-1] + self.size(a)[-1]) for a, s in self.start.items()}


@dataclasses.dataclass
class Block:
    """Padded batches end to end, in flat arrays (`places` says where each batch lies)."""

    places: BatchPlaces
    members: list  # sequence indices of each batch, in row order
    x: dict
    y: dict
    valid: dict
    sample_weight: dict
    remaining: int  # sequences still to arrive
    axes: Mapping[str, str]  # input (the mask too) or output name -> its axis
    ends: Optional[list] = None  # windows: each batch's rows' last target positions
    # the row of each member of each batch, where a row holds several (packed rows); None:
    # member i fills row i
    member_rows: Optional[list] = None
    # outputs scaled per window -> (shift, divisor), (rows, k) over the block's rows
    scales: dict = dataclasses.field(default_factory=dict)

    def batch_view(self, j: int, config: PipelineConfig):
        """The arrays of batch j, shaped for Keras; views into the block."""
        p, axes = self.places, self.axes
        size = int(p.rows[j])

        def shaped(flat, axis, *tail):
            at = int(p.start[axis][j])
            if axis == "sequence":
                return flat[at:at + size].reshape((size,) + tail)
            steps = int(p.steps[axis][j])
            return flat[at:at + size * steps].reshape((size, steps) + tail)

        x = {name: shaped(flat, axes[name], *flat.shape[1:])
             for name, flat in self.x.items()}  # the extra inputs too
        y = {name: shaped(self.y[name], axes[name], spec.width)
             for name, spec in config.outputs.items()}
        weights = {name: shaped(self.sample_weight[name], axes[name])
                   for name in config.outputs}
        return x, y, weights

    def from_batch(self, k: int) -> Block:
        """This block without its first k batches (an epoch resumed at its batch k): the
        same arrays, the weights made over the whole block as an uninterrupted epoch has
        them."""
        if not k:
            return self
        kept = np.arange(len(self.places)) >= k
        return dataclasses.replace(self, places=self.places.select(kept),
                                   members=self.members[k:],
                                   ends=None if self.ends is None else self.ends[k:],
                                   member_rows=(None if self.member_rows is None
                                                else self.member_rows[k:]))

    def parts(self, first: int, count: int, slices: int) -> Block:
        """The block as parts of its batches (`seqpipe.lockstep`): each batch, whose rows are
        a multiple of `slices`, cut into `slices` equal runs of rows, of which parts
        `first` to `first + count - 1` follow one another. The same arrays: a part is a
        view of its batch, with the batch's weights."""
        p = self.places
        size = p.rows // slices
        batch = np.repeat(np.arange(len(p)), count)
        part = np.tile(np.arange(first, first + count), len(p))
        starts = {axis: start[batch] + part * size[batch] * (
                      1 if axis == "sequence" else p.steps[axis][batch])
                  for axis, start in p.start.items()}
        places = BatchPlaces(starts, size[batch], {a: s[batch] for a, s in p.steps.items()})
        members: list = []
        ends: list = []
        rows: list = []
        for j, u in zip(batch.tolist(), part.tolist()):
            row = (np.arange(len(self.members[j])) if self.member_rows is None
                   else self.member_rows[j])
            mine = (row >= u * size[j]) & (row < (u + 1) * size[j])
            members.append(self.members[j][mine])
            rows.append(row[mine] - u * size[j])
            if self.ends is not None:
                ends.append(self.ends[j][mine])
        return dataclasses.replace(self, places=places, members=members,
                                   ends=None if self.ends is None else ends,
                                   member_rows=None if self.member_rows is None else rows)

    def batch(self, j: int, config: PipelineConfig, ids: np.ndarray,
              lengths: np.ndarray) -> Batch:
        """Batch j as a `Batch`; `ids` and `lengths` are every sequence's, by index."""
        x, y, weights = self.batch_view(j, config)
        members = self.members[j]
        scales = {}
        if self.scales:  # windows: one row of scales per window
            at = int(self.places.start["sequence"][j])
            rows = slice(at, at + int(self.places.rows[j]))
            scales = {name: (shift[rows], divisor[rows])
                      for name, (shift, divisor) in self.scales.items()}
        return Batch(x, y, weights, ids[members], lengths[members],
                     None if self.ends is None else self.ends[j], scales)


def pad_at(block: Block, config: PipelineConfig,
           at: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Makes positions padding: `at` maps an axis to runs of flat positions of the block's
    arrays on it, `(start, count)`. Inputs and labels get `padding.value` (categorical input
    ids: 0), labels are not present (weight 0), and the `padding.mask` input is False."""
    from seqpipe._internal.runs import fill_runs  # numba, imported when batches are made

    axes, value = block.axes, config.padding.value
    for name, spec in config.inputs.items():
        if axes[name] in at:
            fill_runs(block.x[name], *at[axes[name]], 0 if spec.categorical else value)
    for name in config.outputs:
        if axes[name] in at:
            fill_runs(block.y[name], *at[axes[name]], value)
            fill_runs(block.valid[name], *at[axes[name]], False)
    if config.padding.mask and "timestep" in at:
        fill_runs(block.x[config.padding.mask], *at["timestep"], False)


def weigh(block: Block, output: str, config: PipelineConfig, mean_valid: float,
          buffers: BufferPool) -> np.ndarray:
    """The sample weights of one output for every batch of a block, from its valid labels."""
    p, valid, axis = block.places, block.valid[output], block.axes[output]
    return batch_weights(config.weight_mode(output), valid, p.start[axis], p.rows,
                         p.steps.get(axis), mean_valid, out=buffers.empty(valid.shape))


def empty_scales(config: PipelineConfig, rows: int) -> dict:
    """The scale inputs of `rows` rows with no sequence yet: shift 0, divisor 1 (a row that
    stays empty must not feed log(0) to a scale-aware head)."""
    found = {}
    for name, (_, width) in scale_inputs(config).items():
        found[name] = np.zeros((rows, width), dtype=np.float32)
        found[name][:, width // 2:] = 1.0
    return found


def put_per_sequence(values, local: np.ndarray, out: np.ndarray, rows) -> None:
    """Rows `rows` of `out` get the per-sequence values of sequences `local` of a chunk:
    a numeric input's columns fill `out`'s columns one by one; one array (categorical ids,
    labels) fills its rows."""
    if isinstance(values, tuple):
        for j, column in enumerate(values):
            out[rows, j] = column[local]
    else:
        out[rows] = values[local]


