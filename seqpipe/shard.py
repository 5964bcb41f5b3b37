"""Shard: the share of the sequences one of several input pipelines reads.

With `tf.distribute`, each worker runs its own input pipeline (`num_input_pipelines` of them)
and every sequence must be read by exactly one. seqpipe shares out row groups, not rows:

- A streamed source (row groups holding disjoint id ranges) is cut into contiguous runs of
  row groups in id order, balanced by rows, one run per pipeline. A sequence belongs to the
  pipeline whose row groups hold its first row; when its rows go on into the next run's
  first row group, its owner reads that row group too and keeps only those rows, and the
  next pipeline skips them.
- Materialized records are shared out by shard file, the same way.
- With fewer row groups (or shard files) than pipelines, or a source grouped whole, every
  pipeline reads everything and keeps the sequences whose id hashes to it.

Each pipeline then plans its own epoch from its own sequences, with the per-replica batch
size (`per_replica`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from seqpipe.config import PipelineConfig, SplitConfig
from seqpipe.errors import ConfigError, DataError
from seqpipe.parquet.stream import IdBounds, StreamOrder
from seqpipe.split import PARTS, id_hash, parts_of

# Seeds the id hash of `hash_mask`. Its low bits pick the pipeline, while `split` uses the
# high bits, so shards stay balanced across train, validation and test whatever their seed.
HASH_SEED = 0x5EA7


@dataclasses.dataclass(frozen=True)
class Shard:
    """Pipeline `index` of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, (int, np.integer)) and self.count >= 1):
            raise ConfigError(f"the number of input pipelines must be a positive integer; "
                              f"got {self.count!r}")
        if not (isinstance(self.index, (int, np.integer)) and 0 <= self.index < self.count):
            raise ConfigError(f"input pipeline id must be in [0, {self.count}); got "
                              f"{self.index!r}")

    @classmethod
    def of(cls, input_context: Any) -> Optional[Shard]:
        """The shard of a `tf.distribute.InputContext`; None for a single pipeline."""
        if input_context is None or input_context.num_input_pipelines == 1:
            return None
        return cls(int(input_context.input_pipeline_id), int(input_context.num_input_pipelines))


def shard_order(order: StreamOrder, shard: Shard, layout: str) -> Optional[StreamOrder]:
    """The row groups `shard` reads, and the ids it keeps of them; None when there are
    fewer row groups than pipelines (then every pipeline reads all, see `hash_mask`)."""
    row_groups = order.row_groups
    if len(row_groups) < shard.count or any(p.first is None for p in row_groups):
        return None  # too few row groups, or no id column to bound
    runs = contiguous_runs(np.array([p.rows for p in row_groups]), shard.count)
    start, stop = int(runs[shard.index]), int(runs[shard.index + 1])

    def goes_on(k):  # the last sequence of row group k - 1 goes on into row group k
        return (layout == "long" and 0 < k < len(row_groups)
                and row_groups[k - 1].last == row_groups[k].first)

    end = stop
    if goes_on(stop):  # read on until this run's last sequence is whole
        spanning = row_groups[stop - 1].last
        while end < len(row_groups) and row_groups[end].first == spanning:
            end += 1
            if row_groups[end - 1].last != spanning:
                break
    bounds = IdBounds(
        low=row_groups[start].first if shard.index else None,
        low_inclusive=not goes_on(start),
        high=row_groups[stop].first if stop < len(row_groups) else None,
        high_inclusive=goes_on(stop))
    return dataclasses.replace(order, row_groups=row_groups[start:end], bounds=bounds)


def contiguous_runs(rows: np.ndarray, count: int) -> np.ndarray:
    """(count + 1,) where each pipeline's run of row groups starts, and the end: runs balanced by
    rows, each at least one row group. Needs `len(rows) >= count`.

    >>> contiguous_runs(np.array([10, 10, 10, 10]), 2).tolist()
    [0, 2, 4]
    >>> contiguous_runs(np.array([100, 1, 1, 1]), 3).tolist()
    [0, 1, 2, 4]
    """
    before = np.cumsum(rows) - rows
    steps = np.arange(count)
    cuts = np.searchsorted(before, steps * (rows.sum() / count), side="left")
    cuts = np.maximum.accumulate(cuts - steps) + steps  # each run at least one row group
    cuts = np.minimum(cuts, len(rows) - count + steps)  # ... and room for the rest
    cuts[0] = 0
    return np.append(cuts, len(rows))


def hash_mask(ids: Any, shard: Shard) -> np.ndarray:
    """(n,) True for the ids that belong to `shard` when every pipeline reads everything."""
    return (id_hash(ids, HASH_SEED) % np.uint64(shard.count)) == np.uint64(shard.index)


def per_replica(config: PipelineConfig, input_context: Any) -> PipelineConfig:
    """The config with `batching.batch_size` (and `max_timesteps`) per replica: the config
    gives them for the global batch, as Keras users give `batch_size` to `model.fit`.

    Raises:
      ConfigError: the global batch does not divide evenly over the replicas.
    """
    if input_context is None:
        return config
    replicas = int(input_context.num_replicas_in_sync)
    batching = config.batching
    if batching.batch_size % replicas:
        raise ConfigError(
            f"batching.batch_size={batching.batch_size} is the global batch and must divide "
            f"evenly over the {replicas} replicas in sync; use a multiple of {replicas}")
    budget = None if batching.max_timesteps is None else batching.max_timesteps // replicas
    if budget is not None and budget < (config.padding.maxlen or 1):
        raise ConfigError(
            f"batching.max_timesteps={batching.max_timesteps} over {replicas} replicas leaves "
            f"{budget} per replica, below padding.maxlen={config.padding.maxlen}: a batch "
            f"could not hold a sequence of maxlen. Raise max_timesteps.")
    size = input_context.get_per_replica_batch_size(batching.batch_size)
    maxlen = config.padding.maxlen  # None: Pipeline says several replicas need it
    if replicas > 1 and budget is not None and maxlen is not None and size * maxlen > budget:
        raise ConfigError(
            f"on {replicas} replicas the first batch of each is padded to batch_size x maxlen "
            f"= {size} x {config.padding.maxlen} timesteps (Keras 3 builds the model from "
            f"them and needs one shape), above max_timesteps per replica ({budget}). Lower "
            f"batching.batch_size or padding.maxlen, or raise max_timesteps.")
    return dataclasses.replace(config, batching=dataclasses.replace(
        batching, batch_size=size, max_timesteps=budget))


def reading_mask(ids: np.ndarray, where: str, split: SplitConfig, part: Optional[str],
                 shard: Optional[Shard], shared: bool,
                 parts: Optional[np.ndarray] = None) -> np.ndarray:
    """(n,) True for the sequences of the part (and shard) a pipeline reads. A source
    `shared` out by row group has already left other shards' sequences out. `parts`: each
    sequence's part as read from `split.column`, when the split has one.

    Raises:
      DataError: the part or the shard holds no sequence.
    """
    mask = np.ones(len(ids), dtype=bool)
    if part is not None and split.by_sequence:  # a time split: by window
        mask = parts_of(split, ids, parts) == PARTS.index(part)
        if not mask.any():
            fix = ("check the column's values" if split.column is not None else
                   f"raise split.{part if part != 'train' else 'validation or test'} or use "
                   f"more data")
            raise DataError(f"split {part!r} holds none of the {len(ids):,} sequences in "
                            f"{where}{_by_column(split)}; {fix}")
    if shard is not None and not shared:
        mask &= hash_mask(ids, shard)
    if shard is not None and not mask.any():
        raise DataError(
            f"input pipeline {shard.index} of {shard.count} gets none of the {len(ids):,} "
            f"sequences it reads from {where}: there are too few sequences for {shard.count} "
            f"input pipelines. Use fewer workers or more data.")
    return mask


def _by_column(split: SplitConfig) -> str:
    return "" if split.column is None else f" (by split.column {split.column!r})"
