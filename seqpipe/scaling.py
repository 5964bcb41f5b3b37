"""Scaling: the shift and divisor that take a column's raw values to the model's units
(`(value - shift) / divisor`) and predictions back (`prediction * divisor + shift`).

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

    def per_timestep(self, lengths: np.ndarray) -> Scales:
        """Per series: each sequence's scales repeated over its `lengths` timesteps."""
        if self.unscaled is None:
            return self
        return Scales(tuple(np.repeat(s, lengths) for s in self.shift),
                      tuple(np.repeat(d, lengths) for d in self.divisor), self.unscaled)

    def apply(self, j: int, values: np.ndarray) -> np.ndarray:
        """Column j in the model's units, float64 (NaN stays NaN)."""
        return (np.asarray(values, dtype=np.float64) - self.shift[j]) / self.divisor[j]

    def invert(self, j: int, scaled: np.ndarray) -> np.ndarray:
        """Column j back in the data's units."""
        return np.asarray(scaled, dtype=np.float64) * self.divisor[j] + self.shift[j]


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
    n, method = len(offsets) - 1, _method(spec)
    lengths = np.diff(offsets)
    sequence = np.repeat(np.arange(n), lengths)
    place = np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], lengths)
    start = np.repeat(skipped, lengths)
    in_span = (place >= start) & (place < start + np.repeat(length, lengths))
    if present is not None:
        in_span &= present
    shifts, divisors, unscaled = [], [], np.zeros(n, dtype=bool)
    for values in columns:
        values = np.asarray(values, dtype=np.float64)
        counted = in_span & np.isfinite(values)
        at, v = sequence[counted], values[counted]
        count = np.bincount(at, minlength=n)
        none = count == 0
        unscaled |= none
        safe = np.maximum(count, 1)
        mean = np.bincount(at, weights=v, minlength=n) / safe
        if method == "standard":
            spread = np.sqrt(np.bincount(at, weights=np.square(v - mean[at]), minlength=n)
                             / safe)
            shift, level = mean, np.abs(mean)
        elif method == "minmax":
            low, high = _extremes(values, counted, offsets, n)
            shift, spread, level = low, high - low, np.abs(low)
        else:  # mean: of the absolute values, shift 0
            spread = np.bincount(at, weights=np.abs(v), minlength=n) / safe
            shift, level = np.zeros(n), spread
        divisor = np.where(spread > 0, spread, np.where(level > 0, level, 1.0))
        shifts.append(np.where(none, 0.0, shift))
        divisors.append(np.where(none, 1.0, divisor))
    return Scales(tuple(shifts), tuple(divisors), unscaled)


def _extremes(values: np.ndarray, counted: np.ndarray, offsets: np.ndarray,
              n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's minimum and maximum of its counted values (0 where it has none)."""
    if not n:
        return np.zeros(0), np.zeros(0)
    starts = offsets[:-1] - offsets[0]  # every sequence has at least one timestep
    low = np.minimum.reduceat(np.where(counted, values, np.inf), starts)
    high = np.maximum.reduceat(np.where(counted, values, -np.inf), starts)
    finite = np.isfinite(low)
    return np.where(finite, low, 0.0), np.where(finite, high, 0.0)


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


def per_dataset(spec: Spec) -> bool:
    """Whether an input or output is scaled by statistics over the dataset."""
    return spec.scaling is not None and spec.scaling.per == "dataset"
