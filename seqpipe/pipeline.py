"""Pipeline: source -> sequences -> truncation and buckets -> padded, weighted NumPy batches.

Everything up to the finished `(x, y, sample_weight)` batch happens here in NumPy, without
TensorFlow, and every user mistake surfaces while the `Pipeline` is built, before the
first batch. `seqpipe.dataset` wraps this in tf.data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

import numpy as np

from seqpipe.batching import (EpochPlan, Windows, auto_boundaries, bucket_of, layout_batch,
                              pad, padding_waste, plan_epoch, truncate)
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import DataError
from seqpipe.sequences import group_sequences
from seqpipe.source import read_source
from seqpipe.weights import sample_weight

logger = logging.getLogger("seqpipe")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch: the Keras triple plus which sequences it holds."""

    x: dict
    y: dict
    sample_weight: dict
    ids: np.ndarray  # the sequence ids, in batch order
    lengths: np.ndarray  # real timesteps per sequence, after truncation


@dataclasses.dataclass(frozen=True)
class Report:
    """What the pipeline read, kept, dropped and filled. `str(report)` is a readable summary."""

    source: str
    files: int
    rows: int
    sequences: int
    timesteps: int
    empty_sequences_dropped: int
    truncated_sequences: int
    truncated_timesteps: int
    filled_values: Mapping[str, int]
    missing_labels: Mapping[str, tuple[int, int]]  # output -> (missing, labels)
    bucket_boundaries: tuple[int, ...]
    batches_per_epoch: int
    sequences_dropped_per_epoch: int  # by batching.drop_remainder
    padding_waste: float  # padded / all timesteps in the first epoch's batches
    padding_waste_unbucketed: float  # the same batches without bucketing, for comparison
    seed: Optional[int]

    def changes(self) -> list[str]:
        """What seqpipe dropped or changed, one phrase each; empty when nothing."""
        changes = []
        if self.truncated_timesteps:
            changes.append(f"truncated {self.truncated_timesteps:,} timesteps in "
                           f"{self.truncated_sequences:,} sequences (padding.maxlen)")
        if self.empty_sequences_dropped:
            changes.append(f"dropped {self.empty_sequences_dropped:,} empty sequences")
        if self.filled_values:
            changes.append(f"filled {sum(self.filled_values.values()):,} NaN/null/infinite "
                           f"feature values ({', '.join(self.filled_values)})")
        if self.sequences_dropped_per_epoch:
            changes.append(f"drop_remainder leaves out {self.sequences_dropped_per_epoch:,} "
                           f"sequences per epoch")
        return changes

    def __str__(self) -> str:
        lines = [
            f"source: {self.source} ({f'{self.files} files, ' if self.files else ''}"
            f"{self.rows:,} rows)",
            f"sequences: {self.sequences:,}, timesteps: {self.timesteps:,}",
            f"truncated: {self.truncated_timesteps:,} timesteps in "
            f"{self.truncated_sequences:,} sequences (padding.maxlen)",
        ]
        if self.empty_sequences_dropped:
            lines.append(f"dropped: {self.empty_sequences_dropped:,} empty sequences")
        for key, count in self.filled_values.items():
            lines.append(f"filled: {count:,} NaN/null/infinite values in {key}")
        for name, (missing, total) in self.missing_labels.items():
            share = missing / total if total else 0.0
            lines.append(f"missing labels: {name}: {missing:,} of {total:,} ({share:.1%}), "
                         f"weight 0")
        lines.append(
            f"batches per epoch: {self.batches_per_epoch:,}, bucket boundaries: "
            f"{list(self.bucket_boundaries) or 'none'}, padding waste: "
            f"{self.padding_waste:.1%} (without buckets: {self.padding_waste_unbucketed:.1%})")
        if self.sequences_dropped_per_epoch:
            lines.append(f"dropped per epoch by drop_remainder: "
                         f"{self.sequences_dropped_per_epoch:,} sequences")
        lines.append(f"shuffle seed: {self.seed}" if self.seed is not None else "shuffle: off")
        return "\n".join(lines)


class Pipeline:
    """Reads and checks the data once, then makes the batches of any epoch in NumPy.

    Args:
      config: a `PipelineConfig`, a YAML path or a mapping (see `load_config`).
      data: a pandas DataFrame or pyarrow Table to use instead of `source.path`.

    Raises:
      SeqpipeError: any bad config or data, before the first batch.

    Example::

      pipeline = Pipeline("configs/train.yaml")
      print(pipeline.report)
      batch = next(pipeline.batches(epoch=0))  # batch.x, batch.y, batch.sample_weight, batch.ids
    """

    def __init__(self, config: Union[PipelineConfig, Mapping, str, os.PathLike],
                 data: Any = None) -> None:
        self.config = config if isinstance(config, PipelineConfig) else load_config(config)
        source = read_source(self.config, data)
        self.sequences, counts = group_sequences(source, self.config)
        self.windows = truncate(self.sequences.offsets, self.config.padding)
        boundaries = self.config.batching.bucket_boundaries
        if boundaries == "auto":
            boundaries = auto_boundaries(self.windows.length)
        self.bucket_boundaries: tuple[int, ...] = tuple(boundaries or ())
        self._buckets = bucket_of(self.windows.length, self.bucket_boundaries)
        self.seed = self.config.shuffle.seed
        if self.seed is None and self.config.shuffle.buffer_size:
            self.seed = int(np.random.SeedSequence().entropy % 2**31)
        self._valid_counts = {
            name: _valid_per_sequence(self.sequences.present[name], spec.level, self.windows)
            for name, spec in self.config.outputs.items()}
        self.report = self._make_report(source.where, len(source.files), counts)
        if self.report.batches_per_epoch == 0:
            raise DataError(
                f"batching.drop_remainder leaves no batch: no bucket holds "
                f"batching.batch_size={self.config.batching.batch_size} of the "
                f"{self.report.sequences:,} sequences. Lower batch_size, use fewer buckets, "
                f"or set drop_remainder: false.")
        logger.info("seqpipe pipeline ready:\n%s", self.report)
        if self.report.changes():
            logger.warning("seqpipe %s; see Pipeline.report", "; ".join(self.report.changes()))

    def plan(self, epoch: int = 0) -> EpochPlan:
        """The batches of one epoch; the same (seed, epoch) always gives the same plan."""
        rng = np.random.default_rng([self.seed, epoch]) if self.seed is not None else None
        return plan_epoch(self._buckets, self.config.batching, self.config.shuffle, rng)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        """Yields the padded, weighted batches of one epoch."""
        plan = self.plan(epoch)
        mean_valid = {name: self._mean_valid_per_batch(name, plan) for name in self._valid_counts}
        for indices in plan.batches:
            yield self.make_batch(indices, mean_valid)

    def make_batch(self, indices: np.ndarray, mean_valid: Mapping[str, float]) -> Batch:
        """Pads and weights the sequences `indices` into one batch."""
        config, sequences = self.config, self.sequences
        layout = layout_batch(indices, self.windows, config.padding.side)
        value = config.padding.value
        x = {name: pad(sequences.features[name], layout, value) if spec.level == "timestep"
             else sequences.features[name][indices] for name, spec in config.inputs.items()}
        y, weights = {}, {}
        for name, spec in config.outputs.items():
            if spec.level == "timestep":
                y[name] = pad(sequences.labels[name], layout, value)[..., None]
                valid = pad(sequences.present[name], layout, False)
            else:
                y[name] = sequences.labels[name][indices][:, None]
                valid = sequences.present[name][indices]
            weights[name] = sample_weight(config.weight_mode(name), valid, mean_valid[name])
        return Batch(x, y, weights, sequences.ids[indices], self.windows.length[indices])

    def _mean_valid_per_batch(self, output: str, plan: EpochPlan) -> float:
        if not plan.batches:
            return 0.0
        total = self._valid_counts[output][np.concatenate(plan.batches)].sum()
        return float(total) / len(plan.batches)

    def _make_report(self, where: str, files: int, counts) -> Report:
        lengths, kept = self.sequences.lengths, self.windows.length
        plan = self.plan(0)
        unbucketed = plan_epoch(np.zeros(len(kept), dtype=np.int64), self.config.batching,
                                self.config.shuffle, np.random.default_rng(0))
        missing = {name: (int((~present).sum()), int(present.size))
                   for name, present in self.sequences.present.items()}
        return Report(
            source=where, files=files, rows=counts.rows, sequences=len(lengths),
            timesteps=int(lengths.sum()),
            empty_sequences_dropped=counts.empty_sequences_dropped,
            truncated_sequences=int((kept < lengths).sum()),
            truncated_timesteps=int((lengths - kept).sum()),
            filled_values=dict(counts.filled_values), missing_labels=missing,
            bucket_boundaries=self.bucket_boundaries, batches_per_epoch=len(plan.batches),
            sequences_dropped_per_epoch=plan.dropped_sequences,
            padding_waste=padding_waste(kept, plan.batches),
            padding_waste_unbucketed=padding_waste(kept, unbucketed.batches), seed=self.seed)


def _valid_per_sequence(present: np.ndarray, level: str, windows: Windows) -> np.ndarray:
    """Present labels of one output inside each sequence's kept window."""
    if level == "sequence":
        return present.astype(np.int64)
    cumulative = np.concatenate([[0], np.cumsum(present, dtype=np.int64)])
    return cumulative[windows.start + windows.length] - cumulative[windows.start]
