"""Scaling: the shift and divisor that take a column's raw values to the model's units
(`(value - shift) / divisor`) and predictions back (`prediction * divisor + shift`).

`per: window` (forecasting windows) gives every window its own, from the real, present
values of its history only, never its horizon: the window assembler computes them
(`window_scales`) and each batch carries its windows' scales of the outputs.

`per: dataset` has one shift and divisor per column, from `seqpipe.statistics`. `per: series`
gives every sequence its own, computed from its own train timesteps (`Counted` spans: the
kept timesteps, or those before `split.time_cutoff` or the held-out last ones) when the
chunk that holds it streams past: the figures travel with the sequence, and nothing grows
with the data. A series with no value to compute them over keeps its values as read (shift
0, divisor 1) and is counted; a constant one (spread 0) divides by its own level, |mean| or
|min|, or by 1 when that is 0 too, so that a later departure reads as a share of its level.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np

from seqpipe.config import InputConfig, OutputConfig, ScalingConfig
from seqpipe.statistics import Statistics

Spec = Union[InputConfig, OutputConfig]


@dataclasses.dataclass(frozen=True)
class Scales:
    """One input's or output's scales: column j's raw value is `scaled * divisor[j] +
    shift[j]`. Per dataset each is a float; per series an `(n,)` array, one per sequence.
    `unscaled` marks the sequences (per series) that had no value to compute them over."""

    shift: tuple
    divisor: tuple
    unscaled: Optional[np.ndarray] = None

    def invert(self, j: int, scaled: np.ndarray,
               sequence: Optional[np.ndarray] = None) -> np.ndarray:
        """Column j back in the data's units; per series, value i by the scales of sequence
        `sequence[i]`."""
        shift, divisor = self.shift[j], self.divisor[j]
        if sequence is not None and self.unscaled is not None:
            shift, divisor = shift[sequence], divisor[sequence]
        return np.asarray(scaled, dtype=np.float64) * divisor + shift


def dataset_scales(name: str, spec: Spec, statistics: Statistics) -> Scales:
    """The one shift and divisor of each column of a `per: dataset` input or output."""
    method = _method(spec)
    found = [statistics.columns[name][c].scale(method) for c in columns_of(spec)]
    return Scales(tuple(s for s, _ in found), tuple(d for _, d in found))


def series_scales(spec: Spec, columns: list, offsets: np.ndarray, skipped: np.ndarray,
                  length: np.ndarray, present: Optional[np.ndarray] = None) -> Scales:
    """Each sequence's own scales, from the finite values (and `present` labels) of its
    `length` timesteps after the first `skipped` (per sequence of a chunk whose timesteps
    `offsets` delimit).

    >>> spec = InputConfig(columns=("v",), normalize={"method": "mean", "per": "series"})
    >>> s = series_scales(spec, [np.array([2., -4, 100, 7])], np.array([0, 3, 4]),
    ...                   np.array([0, 0]), np.array([2, 0]))
    >>> s.shift, s.divisor, s.unscaled.tolist()
    ((array([0., 0.]),), (array([3., 1.]),), [False, True])
    """
    from seqpipe._internal.runs import run_moments  # numba, as grouping imported it

    n, method = len(offsets) - 1, _method(spec)
    start = offsets[:-1] - offsets[0] + skipped
    found = []
    for values in columns:
        figures = run_moments(values, start, length, present)
        count, mean, spread, low, high, size = figures.T
        if method == "minmax":
            spread = None
        elif method == "mean":
            spread = size
        found.append(_rule(method, count, mean, spread, low, high))
    return _joined(found, n)


def window_scales(spec: Spec, values: np.ndarray, counted: np.ndarray) -> Scales:
    """Each window's own scales, from its history: `values` `(windows, history, k)` and
    `counted` `(windows, history)`, True at the real timesteps whose values count (padding
    and missing values do not)."""
    method = _method(spec)
    found = []
    for j in range(values.shape[2]):
        column = values[:, :, j].astype(np.float64)
        here = counted & np.isfinite(column)
        count = here.sum(axis=1)
        safe = np.maximum(count, 1)
        kept = np.where(here, column, 0.0)
        mean = kept.sum(axis=1) / safe
        low = high = spread = None
        if method == "standard":
            spread = np.sqrt(np.where(here, np.square(column - mean[:, None]), 0.0).sum(axis=1)
                             / safe)
        elif method == "minmax":
            low = np.where(here, column, np.inf).min(axis=1, initial=np.inf)
            high = np.where(here, column, -np.inf).max(axis=1, initial=-np.inf)
            low, high = np.where(count > 0, low, 0.0), np.where(count > 0, high, 0.0)
        else:
            spread = np.abs(kept).sum(axis=1) / safe
        found.append(_rule(method, count, mean, spread, low, high))
    return _joined(found, len(values))


def _rule(method: str, count: np.ndarray, mean: np.ndarray, spread, low, high) -> tuple:
    """(shift, divisor, none) of one column from its figures per sequence or window, by
    the module's rules: a spread of 0 divides by the level, no value keeps it as read."""
    if method == "standard":
        shift, level = mean, np.abs(mean)
    elif method == "minmax":
        shift, spread, level = low, high - low, np.abs(low)
    else:  # mean: of the absolute values, shift 0
        shift, level = np.zeros(len(count)), spread
    none = count == 0
    divisor = np.where(spread > 0, spread, np.where(level > 0, level, 1.0))
    return np.where(none, 0.0, shift), np.where(none, 1.0, divisor), none


def _joined(found: list, n: int) -> Scales:
    unscaled = np.zeros(n, dtype=bool)
    for _, _, none in found:
        unscaled |= none
    return Scales(tuple(f[0] for f in found), tuple(f[1] for f in found), unscaled)


def _method(spec: Spec) -> str:
    return _scaling(spec).method


def _scaling(spec: Spec) -> ScalingConfig:
    scaling = spec.scaling
    if scaling is None:  # callers ask only about scaled inputs and outputs
        raise AssertionError("scales of an unscaled column (a seqpipe bug; please report it)")
    return scaling


def columns_of(spec: Spec) -> tuple[str, ...]:
    """The columns an input's or output's scales are for, in order."""
    return spec.columns if isinstance(spec, InputConfig) else spec.label_columns


def per_series(spec: Spec) -> bool:
    """Whether an input or output is scaled by each sequence's own statistics."""
    return spec.scaling is not None and spec.scaling.per == "series"


def scale_inputs(config) -> dict[str, tuple[str, int]]:
    """Extra input name -> (the input or output it holds the scales of, its width 2k), for
    every `normalize.input`."""
    found = {}
    for specs in (config.inputs, config.outputs):
        for name, spec in specs.items():
            if spec.scaling is not None and spec.scaling.input is not None:
                found[spec.scaling.input] = (name, 2 * len(columns_of(spec)))
    return found


def scale_input(spec: Spec, per: str) -> Optional[str]:
    """The scale input of an input or output scaled `per` series or window, if it has one."""
    scaling = spec.scaling
    return scaling.input if scaling is not None and scaling.per == per else None


def scale_columns(scales: Scales) -> tuple:
    """The columns of a scale input: each column's shift, then each one's divisor, float32."""
    return tuple(np.asarray(v, dtype=np.float32) for v in (*scales.shift, *scales.divisor))


def per_window(spec: Spec) -> bool:
    """Whether an input or output is scaled by each window's own history."""
    return spec.scaling is not None and spec.scaling.per == "window"
