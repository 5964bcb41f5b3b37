"""Split: assigns every sequence to train, validation or test from its id alone.

A sequence's part depends only on its id, the seed and the fractions: never on row order,
file layout or which other sequences exist, so a sequence is in exactly one part, the same
one on every machine and every run, and the parts cannot leak into each other. Each id is
hashed to a number u in [0, 1): u < test goes to test, u < test + validation to validation,
the rest to train. Raising `validation` therefore only moves sequences out of train; test
stays as it was.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe.config import SplitConfig
from seqpipe.errors import ConfigError, DataError

PARTS = ("train", "validation", "test")

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (the splitmix64 finaliser): neighbouring ids land far apart."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def id_hash(ids, seed: int) -> np.ndarray:
    """(n,) uint64 hash of each id, the same for the same id value and seed.

    Integer ids hash by value (int32 and int64 columns agree), strings by their UTF-8 bytes,
    other types (floats, timestamps, dates) by their 64-bit representation.
    """
    ids = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids)
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    kind = ids.type
    with np.errstate(over="ignore"):  # the arithmetic is meant to wrap modulo 2**64
        key = _mix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
                pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return _mix(_bytes_hash(ids.cast(pa.large_binary()), key) ^ key)
        if pa.types.is_integer(kind):
            values = ids.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
        elif pa.types.is_floating(kind):
            values = ids.cast(pa.float64()).to_numpy(zero_copy_only=False).view(np.uint64)
        elif pa.types.is_temporal(kind):
            values = pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
        else:
            raise DataError(f"split needs sequence ids that are integers, strings, floats, "
                            f"dates or timestamps; source.id_column has type {kind}")
        return _mix(_mix(values ^ key) + key)


def _bytes_hash(ids: pa.Array, key: Any) -> np.ndarray:
    """Hashes variable-length byte strings with whole-array operations: each byte times a
    random odd weight for its position, summed per string, mixed with the length."""
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset:ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] else \
        np.empty(0, np.uint8)
    data = data[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    position = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    weight = _mix(np.arange(int(lengths.max(initial=0)), dtype=np.uint64) + key) | np.uint64(1)
    terms = (data.astype(np.uint64) + np.uint64(1)) * weight[position]
    running = np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])
    sums = running[offsets[1:]] - running[offsets[:-1]]
    return sums + _mix(lengths.astype(np.uint64) + key)


def part_of(ids, split: SplitConfig) -> np.ndarray:
    """(n,) index into `PARTS` of each id's part: 0 train, 1 validation, 2 test.

    Example:
      >>> part_of(["a", "b", "c"], SplitConfig()).tolist()  # no split: all train
      [0, 0, 0]
    """
    n = len(ids)
    if not split.by_id:  # no split, or one by time (`seqpipe.batches.windows` cuts it)
        return np.zeros(n, dtype=np.int8)
    u = (id_hash(ids, split.seed) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.where(u < split.test, 2, np.where(u < split.test + split.validation, 1, 0)
                    ).astype(np.int8)


def parts_of(split: SplitConfig, ids, parts: Optional[np.ndarray]) -> np.ndarray:
    """(n,) index into `PARTS` of each sequence's part: as read from `split.column`
    (`parts`, which sources read with the ids), else from the id (`part_of`)."""
    if split.column is None:
        return part_of(ids, split)
    if parts is None:
        raise AssertionError("split.column without the parts read (a seqpipe bug)")
    return parts


def check_part(part, split: SplitConfig):
    """The part a pipeline reads: None for all sequences, else one of `PARTS`.

    Raises:
      ConfigError: the config splits the data and no part was named, or a part was named
        that the config does not make.
    """
    if part is None:
        if split.by_time:
            raise ConfigError(
                f"the config splits the windows by time ({split.held_out}), so say which "
                f"part to read: split='train' (windows whose targets are all before the "
                f"held-out timesteps) or 'validation' (windows whose targets start in them)")
        if split.enabled:
            raise ConfigError(
                f"the config splits the data (split.validation={split.validation}, "
                f"split.test={split.test}), so say which part to read: split='train', "
                f"'validation' or 'test'. Reading all of it would mix test sequences into "
                f"training.")
        return None
    if part not in PARTS:
        raise ConfigError(f"split must be one of {', '.join(map(repr, PARTS))}; got {part!r}")
    if not split.enabled:
        raise ConfigError(
            f"split={part!r} asks for one part of the data, but the config has no split: "
            f"add a section such as split: {{validation: 0.1, test: 0.1, seed: 1}}")
    if split.by_time:
        if part == "test":
            raise ConfigError(
                f"split='test' is empty: {split.held_out} makes two parts, train and "
                f"validation. Use split='validation', or a later cutoff (fewer held-out "
                f"timesteps) in a config of its own for a test period.")
        return part
    if split.column is not None:
        return part
    if (part == "validation" and not split.validation) or (part == "test" and not split.test):
        raise ConfigError(f"split={part!r} is empty: split.{part} is 0 in the config")
    return part


def held_back(split: SplitConfig, lengths: np.ndarray,
              before_cutoff: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """(n,) timesteps of each sequence before its held-out ones: those before
    `split.time_cutoff` (`before_cutoff`, from the times), or all but the last
    `split.holdout_last`; None when the split is not by time.

    >>> held_back(SplitConfig(holdout_last=3), np.array([10, 2]), None).tolist()
    [7, 0]
    """
    if split.holdout_last is not None:
        return np.maximum(np.asarray(lengths, dtype=np.int64) - split.holdout_last, 0)
    return before_cutoff if split.time_cutoff is not None else None


def timesteps_before(times: np.ndarray, offsets: np.ndarray, split: SplitConfig,
                     time_name: str, where: str) -> np.ndarray:
    """(n,) timesteps of each sequence before `split.time_cutoff` (times ascending within
    each sequence, as grouping orders them).

    Raises:
      ConfigError: the cutoff cannot be compared with the time column's values.
    """
    below = times < cutoff_value(split, times.dtype, time_name, where)
    running = np.concatenate([[0], np.cumsum(below, dtype=np.int64)])
    return running[offsets[1:]] - running[offsets[:-1]]


def cutoff_value(split: SplitConfig, dtype: np.dtype, time_name: str, where: str) -> Any:
    """`split.time_cutoff` as a value of the time column's NumPy type."""
    cutoff = split.time_cutoff
    if dtype.kind == "M":
        try:
            return np.datetime64(str(cutoff).rstrip("Z"))
        except ValueError:
            pass
        kind = "dates or timestamps"
        example = "a date or timestamp such as 2024-06-01 or 2024-06-01T12:00"
    elif dtype.kind == "m":
        import pandas as pd

        try:  # a duration in words ("36h", "2 days"), or a number of seconds
            value = (pd.Timedelta(cutoff) if isinstance(cutoff, str)
                     else pd.Timedelta(float(cutoff or 0), "s"))
            return np.timedelta64(value.value, "ns").astype(dtype)
        except (ValueError, TypeError):
            pass
        kind = "durations"
        example = "a duration such as '36h' or '2 days', or a number of seconds"
    else:
        try:
            return float(str(cutoff))
        except ValueError:
            pass
        kind = "numbers"
        example = "a number"
    raise ConfigError(
        f"split.time_cutoff must be {example}, because source.time_column {time_name!r} in "
        f"{where} holds {kind}; got {cutoff!r}")


def part_mask(ids: np.ndarray, where: str, split: SplitConfig, part: Optional[str],
              parts: Optional[np.ndarray] = None) -> np.ndarray:
    """(n,) True for the sequences of `part` (every one for None, or for a time split, which
    cuts each sequence by time instead). `parts`: each sequence's part as read from
    `split.column`, when the split has one.

    Raises:
      DataError: the part holds no sequence.
    """
    if part is None or not split.by_sequence:
        return np.ones(len(ids), dtype=bool)
    mask = parts_of(split, ids, parts) == PARTS.index(part)
    if not mask.any():
        fix = ("check the column's values" if split.column is not None else
               f"raise split.{part if part != 'train' else 'validation or test'} or use "
               f"more data")
        by_column = "" if split.column is None else f" (by split.column {split.column!r})"
        raise DataError(f"split {part!r} holds none of the {len(ids):,} sequences in "
                        f"{where}{by_column}; {fix}")
    return mask
