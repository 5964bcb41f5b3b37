"""The hand-off: one assembly block of NumPy batches, as tf.data receives it, and the
tf.data function that cuts it into its batches.

A block travels as one element (`HandOff`): its flat arrays, and where each batch lies in
them (`Cuts`), computed in NumPy for all of the block's batches at once and packed into one
int64 row per batch. tf.data then runs one split of that row, and two ops per tensor per
batch (a slice and a reshape), and no arithmetic. One row rather than a tensor per cut:
every tensor of an element costs tf.data per batch, whatever its size.

Every array is sliced in one dimension, inputs too (their `(rows, k)` arrays go to
TensorFlow flat): TensorFlow's slice returns a view of its input only when the slice
starts and ends on 64-byte boundaries of a 1-D tensor, or when each row of a 2-D one is a
multiple of 64 bytes (8 float32 features are 32). `Assembler` starts every batch on such a
boundary; a batch whose size is a multiple of 16 values (a batch_size that is a multiple of
16, in every array) then ends on one and is never copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import numpy as np

from seqpipe._internal.lazy import tensorflow
from seqpipe.batches.block import BatchPlaces, Block
from seqpipe.batches.kinds import batch_structure, spec_of
from seqpipe.config import PipelineConfig
from seqpipe.tfdata.stages import map_in_caller


class Cut(NamedTuple):
    """Where each batch lies in one flat array, one row per batch: `tf.slice`'s `begin` and
    `size`, each `(batches, 1)`."""

    begin: Any
    size: Any


class Cuts(NamedTuple):
    """Where each batch of a block lies, and its shape, by input and output name."""

    x: Mapping[str, Cut]  # input -> its batches in the input's flat array
    x_shape: Mapping[str, Any]  # input -> (batches, rank) each batch's shape
    y: Mapping[str, Cut]  # output -> its batches in the output's flat label array
    labels: Mapping[str, Cut]  # axis -> the batches in every weight array on it
    y_shape: Mapping[str, Any]  # output -> (batches, rank)
    weight_shape: Mapping[str, Any]  # output -> (batches, rank)
    # (batches, 2): [dataset token, epoch] on the last batch of an epoch, [-1, -1] on
    # every other: cutting it records the epoch as read (`finished_epochs`).
    finish: Any


class HandOff(NamedTuple):
    """One block as tf.data receives it: flat arrays (views of the block's, no copies) and
    the cuts, `(batches, width)`: each batch's `Cuts` side by side (`_columns`)."""

    cuts: Any
    x: Mapping[str, Any]
    y: Mapping[str, Any]
    sample_weight: Mapping[str, Any]


def hand_off(block: Block, config: PipelineConfig,
             finish: Optional[tuple[int, int]] = None) -> HandOff:
    """A block for tf.data; `finish` (token, epoch) when it holds its epoch's last batch."""
    return HandOff(_columns(_cuts(block.places, config, finish)),
                   {name: values.reshape(-1) for name, values in block.x.items()},
                   {name: values.reshape(-1) for name, values in block.y.items()},
                   block.sample_weight)


def no_batches(config: PipelineConfig) -> HandOff:
    """A block of no batches."""
    x, y, _ = _layout(config)
    return HandOff(_columns(_cuts(_places(0, config), config)),
                   {name: np.zeros(0, dtype) for name, (_, _, dtype) in x.items()},
                   {name: np.zeros(0, dtype) for name, (_, _, dtype) in y.items()},
                   {name: np.zeros(0, np.float32) for name in config.outputs})


def _layout(config: PipelineConfig) -> tuple[dict, dict, dict]:
    """(axis, shape after the batch and time axes, dtype) of every input, label and weight,
    from `batch_structure` and the batch spec's axes."""
    structure = batch_structure(config)
    parts = structure if config.outputs else (structure, {}, {})
    axes = spec_of(config).axes

    def layout(name, leaf):
        axis = axes[name]
        return axis, tuple(leaf["shape"][1 if axis == "sequence" else 2:]), leaf["dtype"]

    return tuple({name: layout(name, leaf) for name, leaf in part.items()}  # type: ignore[return-value]
                 for part in parts)


def _places(batches: int, config: PipelineConfig) -> BatchPlaces:
    zeros = np.zeros(batches, np.int64)
    axes = set(spec_of(config).axes.values()) | {"timestep"}
    return BatchPlaces({a: zeros for a in axes}, zeros,
                       {a: zeros for a in axes if a != "sequence"})


def _cuts(places: BatchPlaces, config: PipelineConfig,
          finish: Optional[tuple[int, int]] = None) -> Cuts:
    size = places.rows
    ones = np.ones_like(size)

    def shape(axis, *tail):
        lead = [size] if axis == "sequence" else [size, places.steps[axis]]
        return np.stack(lead + [t * ones for t in tail], axis=1)

    def cut(axis, tail):
        width = int(np.prod(tail))
        return Cut((places.start[axis] * width)[:, None],
                   (places.size(axis) * width)[:, None])

    x_layout, y_layout, _ = _layout(config)
    labels = {axis: Cut(places.start[axis][:, None], places.size(axis)[:, None])
              for axis, _, _ in y_layout.values()}  # weights: one value each
    return Cuts({name: cut(axis, tail) for name, (axis, tail, _) in x_layout.items()},
                {name: shape(axis, *tail) for name, (axis, tail, _) in x_layout.items()},
                {name: cut(axis, tail) for name, (axis, tail, _) in y_layout.items()},
                labels,
                {name: shape(axis, *tail) for name, (axis, tail, _) in y_layout.items()},
                {name: shape(axis) for name, (axis, _, _) in y_layout.items()},
                _finish(len(size), finish))


def _columns(cuts: Cuts) -> np.ndarray:
    """The cuts side by side, `(batches, width)`, in `_fields`' order."""
    return np.concatenate(_fields(cuts), axis=1)


def _fields(cuts: Cuts) -> list:
    """The cuts' arrays (or tensors) in one fixed order; `_unpack` reverses it."""
    out: list = []
    for field in cuts:
        if isinstance(field, Mapping):
            for name in sorted(field):
                value = field[name]
                out.extend(value if isinstance(value, Cut) else [value])
        else:
            out.append(field)
    return out


def _one_batch(config: PipelineConfig) -> Cuts:
    """The cuts of a block of one batch: the layout every block's cut rows share."""
    return _cuts(_places(1, config), config)


def _widths(cuts: Cuts) -> list:
    """The columns each of the cuts' arrays takes in a cut row, in `_fields`' order."""
    return [int(part.shape[1]) for part in _fields(cuts)]


def _unpack(columns, like: Cuts) -> Cuts:
    """`Cuts` of the parts of `columns` (in `_fields`' order), shaped as `like`."""
    parts = iter(columns)
    fields = []
    for field in like:
        if isinstance(field, Mapping):
            fields.append({name: Cut(next(parts), next(parts)) if isinstance(value, Cut)
                           else next(parts) for name, value in sorted(field.items())})
        else:
            fields.append(next(parts))
    return Cuts(*fields)


def _finish(batches: int, finish: Optional[tuple[int, int]]) -> np.ndarray:
    marks = np.full((batches, 2), -1, np.int64)
    if finish is not None and batches:
        marks[-1] = finish
    return marks


_FINISHED: list = []  # the table, made once per process with TensorFlow


def finished_epochs():
    """dataset token -> the last epoch whose last batch was cut: a batch is cut only when
    it is asked for, so that epoch was read to its end (a `MutableHashTable`, -1: none)."""
    tf = tensorflow()
    if not _FINISHED:
        _FINISHED.append(tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, -1))
    return _FINISHED[0]


def spec(config: PipelineConfig) -> HandOff:
    """The `tf.TensorSpec` structure of a `HandOff`."""
    tf = tensorflow()
    x, y, _ = _layout(config)
    return HandOff(tf.TensorSpec((None, sum(_widths(_one_batch(config)))), tf.int64),
                   {name: tf.TensorSpec((None,), dtype) for name, (_, _, dtype) in x.items()},
                   {name: tf.TensorSpec((None,), dtype) for name, (_, _, dtype) in y.items()},
                   {name: tf.TensorSpec((None,), tf.float32) for name in config.outputs})


def split_block(config: PipelineConfig):
    """The tf.data function that cuts one block into its padded batches: each batch is a
    slice of every flat array, reshaped; no data is copied."""
    tf = tensorflow()
    known = _static_shapes(config)
    axes = spec_of(config).axes
    finished = finished_epochs()
    like = _one_batch(config)
    widths = _widths(like)

    def cut(values, where, shape, static):
        values = tf.reshape(tf.slice(values, where.begin, where.size), shape)
        values.set_shape(static)  # the static shape the vectors cannot carry
        return values

    def split(block: HandOff):
        x, y, weights = block.x, block.y, block.sample_weight

        def batch(row):
            c = _unpack(tf.split(row, widths), like)
            # One small op per batch; key -1 on every batch but an epoch's last.
            finished.insert(c.finish[:1], c.finish[1:])
            xs = {name: cut(x[name], c.x[name], c.x_shape[name], known["x"][name])
                  for name in known["x"]}
            if not config.outputs:
                return xs
            ys, ws = {}, {}
            for name in config.outputs:
                ys[name] = cut(y[name], c.y[name], c.y_shape[name], known["y"][name])
                ws[name] = cut(weights[name], c.labels[axes[name]],
                               c.weight_shape[name], known["w"][name])
            return xs, ys, ws

        return map_in_caller(tf.data.Dataset.from_tensor_slices(block.cuts), batch)

    return split


def _static_shapes(config: PipelineConfig) -> dict:
    structure = batch_structure(config)
    x, y, w = structure if config.outputs else (structure, {}, {})
    return {key: {name: leaf["shape"] for name, leaf in part.items()}
            for key, part in (("x", x), ("y", y), ("w", w))}
