"""Inspection: what a dataset looks like before a config is frozen, and what padding costs.

Reads the id column (one list column in the nested layout) and the label columns whole;
the feature columns a config file names are scanned a record batch at a time for missing
values, and, when the config scales or has categories, a pipeline of its train part
computes the statistics (`seqpipe.statistics`). TensorFlow is never imported. The padding
estimates come from the same planner the pipeline uses.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe.batches.kind import Preview
from seqpipe.batches.kinds import kind_of
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError, DataError, SeqpipeError
from seqpipe.parquet.grouping import list_columns
from seqpipe.parquet.regroup import status
from seqpipe.parquet.schema import column_roles
from seqpipe.parquet.source import open_source, read_schema, source_schema
from seqpipe.parquet.stream import stream_order
from seqpipe.split import PARTS, cutoff_value, held_back, part_of
from seqpipe.statistics import Statistics, needed

PERCENTILES = (0, 5, 25, 50, 75, 90, 95, 99, 100)
HISTOGRAM_BINS = 12
BAR = 40
# Column names taken for the sequence id when inspecting a bare path.
ID_NAMES = ("id", "sequence_id", "seq_id")


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What `seqpipe inspect` found."""

    where: str
    files: int
    rows: int
    row_groups: int
    schema: list  # (column, type, the config keys that use it)
    reading: str  # how a pipeline reads it: streams, needs regrouping, has a regrouped copy
    lengths: np.ndarray  # timesteps per sequence, before truncation
    maxlen: Optional[int]
    batch_size: int
    shuffle_buffer: int
    missing_labels: Mapping[str, tuple[int, int]]  # output -> (missing, all)
    parts: Mapping[str, int]  # split part -> sequences; empty without a split
    batches: Preview  # what the kind of batch says (padding waste, windows)
    # "inputs.<name>.<column>" -> (missing values, all values); empty for a bare path
    missing_features: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    statistics: Optional[Statistics] = None  # when the config scales or has categories
    statistics_error: Optional[str] = None  # why they could not be computed

    @property
    def kept(self) -> np.ndarray:
        return self.lengths if self.maxlen is None else np.minimum(self.lengths, self.maxlen)


def config_for(target: str, overrides: Optional[Mapping[str, Any]] = None
               ) -> tuple[PipelineConfig, bool]:
    """The config to inspect, and whether it came from a file: a YAML file as it is, or for
    a Parquet path a stand-in config that names its id column (found by name, or from
    `--set source.id_column=...`) and one numeric column as a feature."""
    if str(target).endswith((".yaml", ".yml")):
        return load_config(target, overrides), True
    schema = source_schema(str(target))
    overrides = dict(overrides or {})
    layout = overrides.get("source.layout") or (
        "nested" if any(pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                        for f in schema) else "long")
    id_column = overrides.get("source.id_column") or _guess_id(schema, layout, target)
    numeric = [f.name for f in schema if f.name != id_column and _plain_or_list_number(f.type)]
    if not numeric:
        raise DataError(f"{target} has no numeric columns to use as features; it has "
                        f"{', '.join(schema.names)}")
    level_of = {f.name: f.type for f in schema}
    if layout == "nested":
        numeric = [c for c in numeric if pa.types.is_list(level_of[c]) or
                   pa.types.is_large_list(level_of[c])] or numeric
    raw = {"source": {"path": str(target), "layout": layout, "id_column": id_column},
           "inputs": {"columns": {"columns": numeric[:1]}}}
    return load_config(raw, overrides), False


def _plain_or_list_number(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _guess_id(schema: pa.Schema, layout: str, target) -> Optional[str]:
    names = [n for n in schema.names if n.lower() in ID_NAMES] or \
        [n for n in schema.names if n.lower().endswith("_id")]
    if len(names) == 1:
        return names[0]
    if layout == "nested":
        return None
    found = f"candidates: {', '.join(names)}" if names else \
        f"no column is named id or *_id; columns: {', '.join(schema.names)}"
    raise ConfigError(f"which column of {target} is the sequence id? ({found}). Say it with "
                      f"--set source.id_column=NAME, or inspect a config file.")


def inspect(config: PipelineConfig, from_file: bool = True) -> Inspection:
    """Reads what inspection needs from the config's source.

    Args:
      config: the config to inspect.
      from_file: False for the stand-in config of a bare Parquet path: its feature and
        bucket boundaries are not the user's, so they are not shown.
    """
    files = open_source(config)
    order = stream_order(files, config)
    roles = [r for r in column_roles(config) if from_file or r.key.startswith("source.")]
    used: dict = {}
    for role in roles:
        used.setdefault(role.column, []).append(role.key)
    fragments = list(files.dataset.get_fragments())
    first_schema = read_schema(fragments[0]) if fragments else files.dataset.schema
    schema = [(f.name, str(f.type), used.get(f.name, [])) for f in first_schema]
    row_groups = sum(len(p.row_groups) for p in fragments)
    source = config.source
    labels = [c for s in config.outputs.values() for c in s.label_columns]
    times = [source.time_column] if config.split.time_cutoff is not None else []
    before = None
    if source.layout == "long":
        keys = [source.id_column or ""]  # the long layout always has one
        table = files.dataset.to_table(columns=list(dict.fromkeys(keys + labels + times)))
        counts = pc.value_counts(table[source.id_column])
        lengths = counts.field("counts").to_numpy().astype(np.int64)
        ids = counts.field("values")
        if times:
            group = pc.index_in(table[source.id_column], value_set=ids).to_numpy()
            before = _before(table[times[0]], group, len(ids), config, files.where)
        missing = _missing_long(table, config)
    else:
        length_column = list_columns(config)[0][0]
        keys = [source.id_column] if source.id_column else []
        table = files.dataset.to_table(columns=list(dict.fromkeys(keys + [length_column]
                                                                  + labels + times)))
        lengths = pc.fill_null(pc.list_value_length(table[length_column]), 0).to_numpy(
            zero_copy_only=False).astype(np.int64)
        ids = table[source.id_column] if source.id_column else None
        if times:
            column = table[times[0]].combine_chunks()
            group = pc.list_parent_indices(column).to_numpy()
            before = _before(pc.list_flatten(column), group, len(lengths), config,
                             files.where)
        missing = _missing_nested(table, config)
    rows = table.num_rows
    if not len(lengths):
        raise DataError(f"no sequences: {files.where} has no rows")
    inspection = Inspection(files.where, len(files.files), rows, row_groups, schema,
                            status(files, config, order.whole_because), lengths,
                            config.padding.maxlen, config.batching.batch_size,
                            config.shuffle.buffer_size, missing, _parts(ids, config),
                            kind_of(config).preview(config, lengths, ids,
                                                    held_back(config.split, lengths, before),
                                                    from_file))
    statistics, error = _statistics(config) if from_file else (None, None)
    return dataclasses.replace(
        inspection,
        missing_features=_missing_features(files, config) if from_file else {},
        statistics=statistics, statistics_error=error)


def _missing_features(files, config: PipelineConfig) -> dict:
    """Null, NaN and infinite values of every input column, a record batch at a time."""
    keys: dict[str, list[str]] = {c: [] for spec in config.inputs.values() for c in spec.columns}
    for name, spec in config.inputs.items():
        for c in spec.columns:
            keys[c].append(f"inputs.{name}.{c}")
    counts = {c: [0, 0] for c in keys}
    for batch in files.dataset.to_batches(columns=list(keys)):
        for c in keys:
            values = batch.column(c)
            if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
                values = pc.list_flatten(values)
            missing = values.null_count
            if pa.types.is_floating(values.type):
                missing += len(values) - values.null_count - (
                    pc.sum(pc.is_finite(values)).as_py() or 0)
            counts[c][0] += missing
            counts[c][1] += len(values)
    return {key: (counts[c][0], counts[c][1]) for c, names in keys.items() for key in names}


def _statistics(config: PipelineConfig) -> tuple[Optional[Statistics], Optional[str]]:
    """The statistics a pipeline of the config computes, or why it could not."""
    if not needed(config):
        return None, None
    from seqpipe.pipeline import Pipeline  # numba: only when there are statistics to compute

    try:
        split = "train" if config.split.enabled else None
        return Pipeline(config, split=split).statistics, None
    except SeqpipeError as e:
        return None, str(e)


def _before(times: Any, group: np.ndarray, count: int, config: PipelineConfig,
            where: str) -> np.ndarray:
    """(count,) timesteps of each sequence before split.time_cutoff."""
    values = times.to_numpy() if isinstance(times, pa.ChunkedArray) else times.to_numpy(
        zero_copy_only=False)
    below = values < cutoff_value(config.split, values.dtype,
                                  config.source.time_column or "", where)
    return np.bincount(group, weights=below, minlength=count).astype(np.int64)


def _parts(ids, config: PipelineConfig) -> dict:
    if ids is None or not config.split.by_id:
        return {}
    counts = np.bincount(part_of(ids, config.split), minlength=len(PARTS))
    return dict(zip(PARTS, counts.tolist()))


def _nan_to_null(values) -> Any:
    if pa.types.is_floating(values.type):
        return pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    return values


def _missing_long(table: pa.Table, config: PipelineConfig) -> dict:
    missing = {}
    id_name = config.source.id_column
    for name, output in config.outputs.items():
        values = _label_missing(table, output)
        if output.level == "timestep":
            missing[name] = (int(values.null_count), len(values))
            continue
        labelled = pa.table({"id": table[id_name], "label": values}).group_by("id").aggregate(
            [("label", "count")])
        present = labelled["label_count"].to_numpy() > 0
        missing[name] = (int((~present).sum()), len(present))
    return missing


def _missing_nested(table: pa.Table, config: PipelineConfig) -> dict:
    missing = {}
    for name, output in config.outputs.items():
        flat = {c: pc.list_flatten(table[c]) if output.level == "timestep" else table[c]
                for c in output.label_columns}
        values = _label_missing(pa.table(flat), output)
        missing[name] = (int(values.null_count), len(values))
    return missing


def _label_missing(table: pa.Table, output) -> Any:
    """An output's labels, null where any of its columns is null or NaN."""
    columns = [_nan_to_null(table[c]) for c in output.label_columns]
    if len(columns) == 1:
        return columns[0]
    present = pc.and_(*[pc.is_valid(c) for c in columns[:2]])
    for c in columns[2:]:
        present = pc.and_(present, pc.is_valid(c))
    return pc.if_else(present, pa.scalar(1.0), pa.scalar(None, pa.float64()))


def histogram(lengths: np.ndarray, bins: int = HISTOGRAM_BINS) -> list[tuple[int, int, int]]:
    """(low, high, count) per bin, bins evenly spaced on a log scale: lengths of time
    series are skewed, and a linear scale puts nearly everything in the first bin."""
    low, high = int(lengths.min()), int(lengths.max())
    edges = np.unique(np.round(np.geomspace(max(low, 1), high + 1, bins + 1)).astype(np.int64))
    if len(edges) < 2:
        edges = np.array([low, high + 1])
    edges[0], edges[-1] = min(edges[0], low), max(edges[-1], high + 1)
    counts = np.histogram(lengths, bins=edges)[0]
    return [(int(a), int(b) - 1, int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts)]


def format_inspection(found: Inspection) -> str:
    """The text `seqpipe inspect` prints."""
    lengths, kept = found.lengths, found.kept
    lines = [f"source: {found.where} ({found.files} file{'s' if found.files != 1 else ''}, "
             f"{found.rows:,} rows, {found.row_groups} row groups)"]
    lines.append(f"  {found.reading}")
    lines.append("schema:")
    width = max(len(name) for name, _, _ in found.schema)
    for name, kind, keys in found.schema:
        lines.append(f"  {name:<{width}}  {kind:<14} {', '.join(keys)}".rstrip())
    lines.append(f"sequences: {len(lengths):,}, timesteps: {int(lengths.sum()):,}, "
                 f"mean length {lengths.mean():,.1f}")
    values = np.percentile(lengths, PERCENTILES, method="lower")
    lines.append("length percentiles: " + ", ".join(
        f"{'min' if p == 0 else 'max' if p == 100 else f'p{p}'} {int(v):,}"
        for p, v in zip(PERCENTILES, values)))
    if found.maxlen is not None:
        cut = lengths > found.maxlen
        lines.append(f"truncated by padding.maxlen={found.maxlen}: {int(cut.sum()):,} "
                     f"sequences, {int((lengths - kept).sum()):,} timesteps")
    lines.append("length histogram:")
    bins = histogram(lengths)
    top = max(c for _, _, c in bins) or 1
    label = max(len(f"{a:,}-{b:,}") for a, b, _ in bins)
    for a, b, c in bins:
        lines.append(f"  {f'{a:,}-{b:,}':>{label}} {'#' * round(BAR * c / top):<{BAR}} {c:,}")
    for name, (missing, total) in found.missing_labels.items():
        share = missing / total if total else 0.0
        lines.append(f"missing labels: {name}: {missing:,} of {total:,} ({share:.1%})")
    for key, (missing, total) in found.missing_features.items():
        if missing:
            lines.append(f"missing feature values: {key}: {missing:,} of {total:,} "
                         f"({missing / total:.1%})")
    if found.statistics is not None:
        lines.append(str(found.statistics))
    if found.statistics_error is not None:
        lines.append(f"statistics: not computed: {found.statistics_error}")
    if found.parts:
        lines.append("split by id: " + ", ".join(f"{part} {count:,}"
                                                 for part, count in found.parts.items()))
    lines += found.batches.lines
    return "\n".join(lines)


def plot(found: Inspection, path: os.PathLike) -> None:
    """Writes a length histogram with the bucket boundaries drawn (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DataError("--plot needs matplotlib: pip install 'seqpipe[plot]'") from e
    kept = found.kept
    figure, axes = plt.subplots(figsize=(8, 4))
    low, high = max(int(kept.min()), 1), int(kept.max()) + 1
    if high / low > 20:  # skewed lengths read better on a log scale
        axes.hist(kept, bins=np.geomspace(low, high, 80).tolist(), color="0.6")
        axes.set_xscale("log")
    else:
        axes.hist(kept, bins=min(80, high - low), color="0.6")
    for p in found.batches.padding:
        for b in p.boundaries or ():
            axes.axvline(b, color="C0" if p.label.startswith("auto") else "C3", lw=1)
    handles = [plt.Line2D([], [], color="C0",
                          label=f"auto boundaries ({found.batches.padding[-1].waste:.1%} padding)")]
    configured = [p for p in found.batches.padding if p.boundaries is not None and
                  not p.label.startswith("auto") and p.boundaries]
    if configured:
        handles.append(plt.Line2D([], [], color="C3",
                                  label=f"config boundaries ({configured[0].waste:.1%} padding)"))
    axes.legend(handles=handles)
    axes.set_xlabel("timesteps per sequence" + (f" (after maxlen {found.maxlen})"
                                                 if found.maxlen else ""))
    axes.set_ylabel("sequences")
    axes.set_title(f"{len(kept):,} sequences in {found.where}")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)

