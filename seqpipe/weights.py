"""Weights: turns each output's valid-label mask into the sample_weight Keras needs.

`valid` is True where a label is present and the position is a real timestep, so padding
and missing labels always get weight 0. The modes differ only in how the valid positions
are scaled, so that the loss Keras reports is the mean the user meant:

- Keras's default reduction (`sum_over_batch_size`) reports sum(loss * w) / N, where N is
  the number of loss elements in the batch (B for a per-sequence output, B*T for a
  per-timestep one), padding included;
- `reduction="mean_with_sample_weight"` (Keras >= 3.7) reports sum(loss * w) / sum(w).

The README's table says which mode goes with which reduction; tests/test_weights.py
checks every mode against real Keras.
"""

from __future__ import annotations

import typing
from typing import Optional

import numpy as np

from seqpipe.config import WeightMode

MODES = typing.get_args(WeightMode)  # one list of modes: the config's


def sample_weight(mode: str, valid: np.ndarray, mean_valid_per_batch: float = 0.0,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """The float32 sample weights of one output for one batch.

    Args:
      mode: one of `MODES`.
        binary: 1 at valid labels. With the default reduction Keras then divides by all N
          elements, so pair it with `reduction="mean_with_sample_weight"`.
        batch_mean: N / (valid labels in the batch) at valid labels, so the default
          reduction reports the mean over the batch's valid labels.
        global_mean: N / `mean_valid_per_batch` at valid labels, so the default reduction
          reports sum(valid losses) / mean_valid_per_batch: every valid label weighs the
          same in every batch, and the mean of the epoch's batch losses is the mean over
          all its valid labels.
        sequence_mean: for a per-timestep output, each sequence with a valid label counts
          the same, whatever its length: the default reduction reports the mean over
          sequences of each sequence's mean loss. For a per-sequence output, the same as
          batch_mean.
      valid: bool `(B,)` or `(B, T)`: a present label at a real position.
      mean_valid_per_batch: for global_mean, the valid labels of this output in the epoch
        divided by the number of batches.
      out: a float32 array shaped like `valid` to write the weights into (a batch's place
        in its block's array: one pass, no temporary), instead of a new one.

    Returns:
      float32 weights shaped like `valid` (`out`, when given); all zero when no label is
      valid (never NaN).

    Example:
      >>> sample_weight("batch_mean", np.array([True, False, True, True])).tolist()
      [1.3333333730697632, 0.0, 1.3333333730697632, 1.3333333730697632]
    """
    if out is None:
        out = np.empty(valid.shape, dtype=np.float32)
    if mode == "binary":
        return _scaled(valid, 1, 1, out)
    if mode == "batch_mean":
        return _scaled(valid, valid.size, int(np.count_nonzero(valid)), out)
    if mode == "global_mean":
        return _scaled(valid, valid.size, mean_valid_per_batch, out)
    if mode == "sequence_mean":
        if valid.ndim == 1:
            return _scaled(valid, valid.size, int(np.count_nonzero(valid)), out)
        return _per_sequence(valid, out)
    raise _unknown(mode)


def _unknown(mode: str) -> ValueError:
    return ValueError(f"weights mode must be one of {MODES}; got {mode!r}")


def batch_weights(mode: str, valid: np.ndarray, start: np.ndarray, rows: np.ndarray,
                  steps: Optional[np.ndarray], mean_valid_per_batch: float,
                  out: np.ndarray) -> np.ndarray:
    """`sample_weight` of many batches whose masks lie in one flat array, as an assembly
    block holds them: batch j's mask is `valid[start[j] : start[j] + rows[j] * steps[j]]`,
    shaped `(rows[j], steps[j])`, or `valid[start[j] : start[j] + rows[j]]` for a
    per-sequence output (`steps` None). Its weights go to the same place in `out`;
    positions between batches are left as they are.

    The same weights as `sample_weight` batch by batch (tested), in two compiled passes over
    the block instead of a Python call per batch. `sequence_mean` on a per-timestep output,
    which scales each sequence, goes batch by batch.
    """
    if mode not in MODES:
        raise _unknown(mode)
    elements = rows if steps is None else rows * steps
    if mode == "sequence_mean" and steps is not None:
        for a, b, t in zip(start.tolist(), rows.tolist(), steps.tolist()):
            sample_weight(mode, valid[a:a + b * t].reshape(b, t), out=out[a:a + b * t]
                          .reshape(b, t))
        return out
    from seqpipe._internal.runs import (  # numba, imported with the first batch
        count_runs,
        scale_runs,
    )

    if mode == "binary":
        scale = np.ones(len(start))
    else:
        divisor = (np.full(len(start), float(mean_valid_per_batch)) if mode == "global_mean"
                   else count_runs(valid, start, elements))
        scale = np.zeros(len(start))
        np.divide(elements, divisor, out=scale, where=divisor > 0)
    scale_runs(valid, start, elements, scale.astype(np.float32), out)
    return out


def _scaled(valid: np.ndarray, elements: int, divisor: float, out: np.ndarray) -> np.ndarray:
    if divisor <= 0:
        out[...] = 0
        return out
    return np.multiply(valid, np.float32(elements / divisor), out=out)


def _per_sequence(valid: np.ndarray, out: np.ndarray) -> np.ndarray:
    per_sequence = np.count_nonzero(valid, axis=1)
    sequences = np.count_nonzero(per_sequence)
    if sequences == 0:
        out[...] = 0
        return out
    scale = (valid.size / (sequences * np.maximum(per_sequence, 1))).astype(np.float32)
    return np.multiply(valid, scale[:, None], out=out)
