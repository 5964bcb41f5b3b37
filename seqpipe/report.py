"""Report: what a pipeline read, kept, dropped and filled, as numbers and as text."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Report:
    """What the pipeline read, kept, dropped and filled. `str(report)` is a readable summary."""

    source: str
    files: int
    rows: int
    sequences: int
    timesteps: int
    empty_sequences_dropped: int
    # by padding.maxlen; None where the kind of batch does not truncate
    truncated_sequences: Optional[int]
    truncated_timesteps: Optional[int]
    filled_values: Optional[Mapping[str, int]]  # None until a streamed epoch has read them
    missing_labels: Optional[Mapping[str, tuple[int, int]]]  # output -> (missing, labels)
    bucket_boundaries: tuple[int, ...]
    batches_per_epoch: int
    sequences_dropped_per_epoch: int  # by batching.drop_remainder
    padding_waste: float  # padded / all timesteps in the first epoch's batches
    padding_waste_unbucketed: float  # batches cut with no regard to length, for comparison
    seed: Optional[int]
    streamed: bool = False  # read one row group at a time rather than grouped whole
    split: Optional[str] = None  # the part read: train, validation or test; None for all
    source_sequences: Optional[int] = None  # sequences in the source, all parts together
    reading: Optional[str] = None  # how it is read, when not by row group or whole
    statistics: Optional[Any] = None  # the `seqpipe.Statistics` values are prepared with
    # "inputs.<name>" or "outputs.<name>" -> categories not in the vocabulary (id 1; a
    # label: weight 0); None until an epoch has read them
    unseen_categories: Optional[Mapping[str, int]] = None
    # "inputs.<name>" or "outputs.<name>" scaled per series -> sequences with no value to
    # compute their statistics over, kept as read; None until an epoch has read them
    unscaled_series: Optional[Mapping[str, int]] = None
    # with windows: what cutting them made and dropped (`seqpipe.batches.window_plan`)
    windows: Optional[Any] = None
    # with batching.static_shapes: the distinct (rows, timesteps) of the first epoch's
    # batches (at most one per bucket); None without
    static_shapes: Optional[int] = None
    # with batching.packing: the mean number of sequences in a packed row
    segments_per_row: Optional[float] = None
    # several processes or replicas (`seqpipe.lockstep`): "process p of P, R replicas"
    lockstep: Optional[str] = None
    # rows added empty (weight 0) to the epoch's global batches so that every process and
    # replica gets the same rows at every step
    lockstep_empty_rows: int = 0
    # the kind of batch's own lines of the summary, and its changes (see `changes`)
    batching: tuple[str, ...] = ()
    batching_changes: tuple[str, ...] = ()

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
        if self.unseen_categories and any(self.unseen_categories.values()):
            changes.append(f"mapped {sum(self.unseen_categories.values()):,} categories the "
                           f"vocabulary does not hold to 'unseen' ("
                           f"{', '.join(k for k, n in self.unseen_categories.items() if n)})")
        if self.unscaled_series and any(self.unscaled_series.values()):
            changes.append(f"kept {sum(self.unscaled_series.values()):,} series as read, "
                           f"without a train value to scale them by ("
                           f"{', '.join(k for k, n in self.unscaled_series.items() if n)})")
        changes += self.batching_changes
        if self.sequences_dropped_per_epoch:
            changes.append(f"drop_remainder leaves out {self.sequences_dropped_per_epoch:,} "
                           f"sequences per epoch")
        return changes

    def __str__(self) -> str:
        reading = self.reading or ("streamed by row group" if self.streamed
                                   else "grouped whole, in memory")
        lines = [
            f"source: {self.source} ({f'{self.files} files, ' if self.files else ''}"
            f"{self.rows:,} rows; "
            f"{reading})",
            f"sequences: {self.sequences:,}, timesteps: {self.timesteps:,}"
            + (f" (split {self.split!r}: {self.sequences:,} of the source's "
               f"{self.source_sequences:,} sequences)" if self.split else ""),
        ]
        if self.truncated_timesteps is not None:
            lines.append(f"truncated: {self.truncated_timesteps:,} timesteps in "
                         f"{self.truncated_sequences:,} sequences (padding.maxlen)")
        if self.empty_sequences_dropped:
            lines.append(f"dropped: {self.empty_sequences_dropped:,} empty sequences")
        if self.filled_values is None:
            lines.append("filled: counted as the features stream in, during the first "
                         "epoch")
        every = " (counted over every split)" if self.split else ""
        for key, count in (self.filled_values or {}).items():
            lines.append(f"filled: {count:,} NaN/null/infinite values in {key}{every}")
        if self.missing_labels is None:
            lines.append("missing labels: counted as the labels stream in, during the first "
                         "epoch")
        for name, (missing, total) in (self.missing_labels or {}).items():
            share = missing / total if total else 0.0
            lines.append(f"missing labels: {name}: {missing:,} of {total:,} ({share:.1%}), "
                         f"weight 0")
        lines += self.batching
        if self.lockstep:
            lines.append(f"lockstep: {self.lockstep}; {self.lockstep_empty_rows:,} empty rows "
                         f"(weight 0) per epoch give every part the same rows")
        for key, count in (self.unseen_categories or {}).items():
            lines.append(f"unseen categories: {count:,} values of {key} are not in its "
                         f"vocabulary (id 1; a label weighs 0)")
        for key, count in (self.unscaled_series or {}).items():
            lines.append(f"unscaled series: {count:,} sequences of {key} have no train value "
                         f"to compute their own statistics over; kept as read (shift 0, "
                         f"divisor 1)")
        if self.statistics is not None and (self.statistics.columns
                                            or self.statistics.vocabularies):
            lines.append(str(self.statistics))
        if self.sequences_dropped_per_epoch:
            lines.append(f"dropped per epoch by drop_remainder: "
                         f"{self.sequences_dropped_per_epoch:,} sequences")
        lines.append(f"shuffle seed: {self.seed}" if self.seed is not None else "shuffle: off")
        return "\n".join(lines)
