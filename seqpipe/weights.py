"""Weights: turns each output's valid-label mask into the sample_weight Keras needs.

`valid` is True where a label is present and the position is a real timestep, so padding
and missing labels always get weight 0. The modes differ only in how the valid positions
are scaled, so that the loss Keras reports is the mean the user meant:

- Keras's default reduction (`sum_over_batch_size`) reports sum(loss * w) / N, where N is
  the number of loss elements in the batch (B for a per-sequence output, B*T for a
  per-timestep one), padding included;
- `reduction="mean_with_sample_weight"` (Keras >= 3.7) reports sum(loss * w) / sum(w).

See ../shared/KERAS_FACTS.md for the measurements; tests/test_weights.py checks every mode
against real Keras.
"""

from __future__ import annotations

import numpy as np

MODES = ("binary", "batch_mean", "global_mean", "sequence_mean")


def sample_weight(mode: str, valid: np.ndarray, mean_valid_per_batch: float = 0.0) -> np.ndarray:
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

    Returns:
      float32 weights shaped like `valid`; all zero when no label is valid (never NaN).

    Example:
      >>> sample_weight("batch_mean", np.array([True, False, True, True])).tolist()
      [1.3333333730697632, 0.0, 1.3333333730697632, 1.3333333730697632]
    """
    if mode == "binary":
        return valid.astype(np.float32)
    if mode == "batch_mean":
        return _scaled(valid, valid.size, np.count_nonzero(valid))
    if mode == "global_mean":
        return _scaled(valid, valid.size, mean_valid_per_batch)
    if mode == "sequence_mean":
        if valid.ndim == 1:
            return _scaled(valid, valid.size, np.count_nonzero(valid))
        return _per_sequence(valid)
    raise ValueError(f"weights mode must be one of {MODES}; got {mode!r}")


def _scaled(valid: np.ndarray, elements: int, divisor: float) -> np.ndarray:
    if divisor <= 0:
        return np.zeros(valid.shape, dtype=np.float32)
    return valid * np.float32(elements / divisor)


def _per_sequence(valid: np.ndarray) -> np.ndarray:
    per_sequence = valid.sum(axis=1)
    sequences = int((per_sequence > 0).sum())
    if sequences == 0:
        return np.zeros(valid.shape, dtype=np.float32)
    scale = valid.size / (sequences * np.maximum(per_sequence, 1))
    return (valid * scale[:, None]).astype(np.float32)
