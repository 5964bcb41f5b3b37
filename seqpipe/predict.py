"""Predict: a trained model's outputs joined back to sequence ids and times.

The model is called on the pipeline's batches (unshuffled, every sequence of the part
once); each output's predictions at real timesteps are cut out of the padding and laid out
one row per kept timestep (or per sequence), in id order, with the id and the time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from seqpipe.batches.block import Batch
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError
from seqpipe.materialized.manifest import is_output
from seqpipe.materialized.read import open_part
from seqpipe.pipeline import Pipeline
from seqpipe.statistics import StatisticsLike


def predict(model: Any, config: Union[PipelineConfig, Mapping, str, os.PathLike],
            data: Any = None, split: Optional[str] = None,
            statistics: Optional[StatisticsLike] = None) -> dict[str, pd.DataFrame]:
    """Runs `model` over every sequence once and returns its predictions by sequence id.

    Args:
      model: a Keras model whose inputs are named like the config's (`predict_on_batch`).
      config: a `PipelineConfig`, YAML path or mapping; or the folder `seqpipe materialize`
        wrote (its records, prepared with its statistics). Shuffling is turned off.
      data: a pandas DataFrame or pyarrow Table instead of `source.path`.
      split: the part to predict ('validation', say) when the config has a split.
      statistics: the training run's `seqpipe.Statistics`, or the path of the file
        `Statistics.save` wrote (or its mapping), so that the inputs are scaled and encoded
        as in training. None computes them from the train
        part of this data.

    Returns:
      output name -> DataFrame. A per-timestep output has one row per kept real timestep:
      the id column, the time column (or `step`, the timestep's place in the sequence, without
      one) and the prediction; a per-sequence output one row per sequence. A prediction of
      one value is a column named after the output; of k values, `<output>_0` ...
      `<output>_<k-1>`; an output with `normalize` comes back in the data's units (each
      series' own scale undone with `per: series`); a categorical output gives a column
      `<output>` with the predicted label as the data spells it and a score column per
      class, `<output>_<label>`. Rows are in id order, then time order. An output's level comes from
      the config, or, for an output the config does not name, from its rank (3: timestep).
      With windows, one row per window and target step: the id, `window_end` (the time of
      the window's last target), the target step's time, `horizon_step` (1 is the first
      step after the history; absent with horizon 0) and the prediction; a per-sequence
      output, one row per window.

    Example::

      model.fit(seqpipe.build_dataset("train.yaml", split="train"), epochs=5)
      frames = seqpipe.predict(model, "train.yaml", split="test",
                               statistics=seqpipe.Statistics.load("stats.json"))
      frames["hr_next"].head()   # id, time, hr_next
    """
    pipeline = _unshuffled(config, data, split, statistics)
    config = pipeline.config
    found: dict[str, list] = {}
    levels: dict[str, str] = {}
    axes = pipeline.kind.spec(config).axes
    for batch in pipeline.batches():
        for name, values in _by_name(model.predict_on_batch(batch.x), model, config).items():
            level = levels.setdefault(name, _level(name, values, config))
            axis = axes.get(name, level)  # packed rows: per-sequence outputs on "segment"
            _check_shape(name, values, level, axis, batch)
            if axis != "sequence" and values.ndim == 2:
                values = values[..., None]
            steps = values.shape[1] if axis != "sequence" else 0
            targets = pipeline.kind.targets(batch, level, steps)
            kept = (values[targets.row] if targets.at is None
                    else values[targets.row, targets.at])
            if name in batch.scales:  # scaled per window: each row by its own history's
                kept = _per_row(name, kept, targets.row, batch.scales[name])
            found.setdefault(name, []).append((targets, kept))
    times = (_times(pipeline) if any(pieces[0][0].positions for pieces in found.values())
             else None)
    return {name: _frame(name, pieces, pipeline, times) for name, pieces in found.items()}


def _in_data_units(name: str, values: np.ndarray, sequence: np.ndarray,
                   pipeline: Pipeline) -> dict[str, np.ndarray]:
    """One output's prediction columns: a scaled output's back in the data's units, a
    categorical one's as the predicted label and one probability column per label."""
    output = pipeline.config.outputs.get(name)
    if output is not None and output.categorical:
        return _classes(name, values, pipeline.statistics.vocabularies[name])
    if output is None or not output.scaling or output.scaling.per == "window":
        return _values(name, values)  # per window: put back batch by batch
    columns = values.reshape(len(values), -1)
    if columns.shape[1] != output.width:
        raise ConfigError(
            f"predict: the model's output {name!r} has {columns.shape[1]} values per "
            f"prediction, but outputs.{name} scales {output.width} label columns "
            f"({list(output.label_columns)}); it cannot be put back in the data's units. "
            f"Make the model predict one value per label column.")
    scales = pipeline.scales(name)
    restored = np.stack([scales.invert(j, columns[:, j], sequence)
                         for j in range(output.width)], axis=1)
    return _values(name, restored)


def _per_row(name: str, values: np.ndarray, rows: np.ndarray, scales: tuple) -> np.ndarray:
    """Predictions of an output scaled per window, back in the data's units: each value by
    the scales of the window (batch row) it belongs to."""
    shift, divisor = scales
    columns = values.reshape(len(values), -1)
    if columns.shape[1] != shift.shape[1]:
        raise ConfigError(
            f"predict: the model's output {name!r} has {columns.shape[1]} values per "
            f"prediction, but outputs.{name} scales {shift.shape[1]} label columns; it cannot "
            f"be put back in the data's units. Make the model predict one value per label "
            f"column.")
    return (columns * divisor[rows] + shift[rows]).reshape(values.shape)


def _classes(name: str, values: np.ndarray, vocabulary: Any) -> dict[str, np.ndarray]:
    """The predicted label (the class with the highest score, as the data spells it) and
    each class's score in a column named after its label."""
    scores = values.reshape(len(values), -1)
    if scores.shape[1] != len(vocabulary):
        raise ConfigError(
            f"predict: the model's output {name!r} has {scores.shape[1]} scores per "
            f"prediction, but outputs.{name} has {len(vocabulary)} classes "
            f"({', '.join(map(repr, vocabulary.values[:5]))}"
            f"{', ...' if len(vocabulary) > 5 else ''}); "
            f"give its last layer {len(vocabulary)} units "
            f"(pipeline.statistics.input_dim({name!r})).")
    labels = np.array(vocabulary.values, dtype=object)
    found = {name: labels[np.argmax(scores, axis=1)] if len(scores) else labels[:0]}
    found.update({f"{name}_{value}": scores[:, i] for i, value in enumerate(vocabulary.values)})
    return found


def _frame(name: str, pieces: list, pipeline: Pipeline,
           times: Optional[np.ndarray]) -> pd.DataFrame:
    """One output's predictions, one row per target, in id order, then in the order of
    the kind of batch's position columns."""
    first = pieces[0][0]
    sequence = np.concatenate([t.sequence for t, _ in pieces])
    positions = {key: np.concatenate([t.positions[key] for t, _ in pieces])
                 for key in first.positions}
    numbers = {key: np.concatenate([t.numbers[key] for t, _ in pieces])
               for key in first.numbers}
    values = np.concatenate([v for _, v in pieces])
    order = np.lexsort([*reversed(list(positions.values())), sequence])
    id_column = pipeline.config.source.id_column or "sequence"
    if name in {id_column, *positions, *numbers}:
        raise ConfigError(f"output {name!r} has the name of the id or time column of the "
                          f"predictions; rename the output")
    base = pipeline.source.index.offsets[sequence[order]]
    columns: dict[str, Any] = {id_column: pipeline.source.index.ids[sequence[order]]}
    for key, at in positions.items():
        columns[key] = at[order] if times is None else times[base + at[order]]
    columns.update({key: number[order] for key, number in numbers.items()})
    return pd.DataFrame({**columns, **_in_data_units(name, values[order], sequence[order],
                                                      pipeline)})


def _times(pipeline: Pipeline) -> Optional[np.ndarray]:
    """The time of every timestep of the source, flat in index order, or None without
    times."""
    pieces = [chunk.times for _, chunk in pipeline.chunks() if chunk.times is not None]
    return np.concatenate(pieces) if pieces else None


def _values(name: str, values: np.ndarray) -> dict:
    if values.ndim == 1 or values.shape[1] == 1:
        return {name: values.reshape(len(values))}
    return {f"{name}_{i}": values[:, i] for i in range(values.shape[1])}


def _unshuffled(config: Any, data: Any, split: Optional[str],
                statistics: Optional[StatisticsLike]) -> Pipeline:
    if isinstance(config, (str, os.PathLike)) and is_output(str(config)):
        if data is not None:
            raise ConfigError(f"{os.fspath(config)!r} is a materialized output; data= does "
                              f"not apply to it")
        part = open_part(config, split=split)
        return Pipeline.from_source(part, part.time_part, config=load_config(
            part.config, {"shuffle.buffer_size": 0}), statistics=statistics)
    config = config if isinstance(config, PipelineConfig) else load_config(config)
    return Pipeline(load_config(config, {"shuffle.buffer_size": 0}), data, split,
                    statistics=statistics)


def _by_name(predicted: Any, model: Any, config: PipelineConfig) -> dict[str, np.ndarray]:
    """The model's predictions as output name -> array."""
    if isinstance(predicted, Mapping):
        return {name: np.asarray(v) for name, v in predicted.items()}
    names = list(getattr(model, "output_names", None) or config.outputs)
    if not isinstance(predicted, (list, tuple)):
        predicted = [predicted]
    if len(names) != len(predicted):
        names = list(config.outputs) if len(config.outputs) == len(predicted) else [
            f"output_{i}" for i in range(len(predicted))]
    return {name: np.asarray(v) for name, v in zip(names, predicted)}


def _level(name: str, values: np.ndarray, config: PipelineConfig) -> str:
    if name in config.outputs:
        return config.outputs[name].level
    return "timestep" if values.ndim >= 3 else "sequence"


def _check_shape(name: str, values: np.ndarray, level: str, axis: str, batch: Batch) -> None:
    """Raises a ConfigError when a prediction's shape does not fit its output's level: a
    (B, T, k) prediction of a per-sequence output would otherwise be flattened into wrong
    columns, and a (B, k) one of a per-timestep output read at the wrong places."""
    weights = batch.sample_weight.get(name) if batch.sample_weight else None
    rows = len(next(iter(batch.x.values())))  # packed rows hold several ids each
    steps = weights.shape[1] if weights is not None and weights.ndim == 2 else 0
    if axis == "sequence":
        fits, want = values.ndim in (1, 2) and len(values) >= rows, "(batch, k) or (batch,)"
    else:
        fits = values.ndim in (2, 3) and len(values) >= rows and values.shape[1] >= steps
        what = "max_segments" if axis == "segment" else "timesteps"
        want = f"(batch, {what}, k) or (batch, {what})" + (
            f", with {steps} {what} here" if steps else "")
        if axis == "segment":
            want += " (packed rows: one slot per sequence of the row, see SegmentPooling)"
    if not fits:
        raise ConfigError(
            f"predict: the model's output {name!r} came back with shape {values.shape} for a "
            f"batch of {rows} rows, but outputs.{name} has level: {level}, which needs "
            f"{want}. Make the model's {name!r} output match, or set outputs.{name}.level "
            f"to what the model predicts.")
