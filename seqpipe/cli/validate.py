"""Validate: checks a config against the data's schema from the Parquet footers alone,
and, asked to, every value of the data.

`validate` reads nothing but footers: a config can be checked in a job's first second,
before anything expensive starts. `validate_data` reads every value, about as fast as an
epoch, and reports every problem in one run. Neither imports TensorFlow.
"""

from __future__ import annotations

import pyarrow as pa

from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.grouping import group_sequences
from seqpipe.parquet.regroup import status
from seqpipe.parquet.schema import KIND_TEXT, column_roles
from seqpipe.parquet.source import SourceTable, open_source, read_schema
from seqpipe.parquet.stream import read_row_group, stream_order


def validate(config: PipelineConfig) -> list[str]:
    """Checks the config's source against the config and says what was checked, a line
    each.

    Raises:
      SeqpipeError: the first problem found: a file that is not Parquet, a missing column,
        a type the config cannot use.
    """
    files = open_source(config)  # checks every file's schema against the config
    fragments = list(files.dataset.get_fragments())
    rows = sum(f.metadata.num_rows for f in fragments)
    row_groups = sum(f.metadata.num_row_groups for f in fragments)
    lines = [f"source: {files.where}: {len(fragments)} Parquet file"
             f"{'s' if len(fragments) != 1 else ''}, {rows:,} rows in {row_groups} row groups "
             f"(from the footers)"]
    lines.append("columns, checked in every file:")
    found: dict[str, str] = {}
    for fragment in fragments:
        for field in read_schema(fragment):
            found.setdefault(field.name, str(field.type))
    roles = column_roles(config)
    width = max(len(r.column) for r in roles)
    for role in roles:
        kind = found.get(role.column, "partition key")
        target = files.schema.field(role.column).type
        read_as = "" if str(target) == kind or role.kind == "key" else f", read as {target}"
        lines.append(f"  ok  {role.column:<{width}}  {kind}: {role.key} ("
                     f"{KIND_TEXT[role.kind]}{read_as})")
    order = stream_order(files, config)
    lines.append(f"reading: {status(files, config, order.whole_because)}")
    split = config.split
    if split.time_cutoff is not None:
        lines.append(f"split by time at {split.time_cutoff} ({config.source.time_column}): "
                     f"train windows end before it, validation windows start at or after it")
    elif split.holdout_last is not None:
        lines.append(f"split by time: each series' last {split.holdout_last} timesteps held "
                     f"out; train windows end before them, validation windows start in them")
    elif split.column is not None:
        lines.append(f"split by column {split.column!r}: each sequence's part is its value "
                     f"there (train, validation or test)")
    elif split.enabled:
        train = 1 - split.validation - split.test
        lines.append(f"split by {config.source.id_column}: train {train:.0%}, validation "
                     f"{split.validation:.0%}, test {split.test:.0%} (seed {split.seed})")
    return lines


def validate_data(config: PipelineConfig) -> tuple[list[str], list[str]]:
    """Reads every value of the source, without TensorFlow, and finds every problem that
    reading would raise one at a time: unreadable or corrupt pages, null or NaN ids and
    times, repeated times, conflicting per-sequence values, unequal nested lists, NaN
    features without `fill_value`, infinite labels.

    A streamed source is checked a row group at a time, as an epoch reads it; a source
    grouped whole is checked whole, as building groups it.

    Returns:
      (what was read, a line each; the problems found, a message each naming the file and
      row group, with counts).
    """
    files = open_source(config)
    order = stream_order(files, config)
    problems: list = []
    tables, rows = [], 0
    for row_group in order.row_groups:
        try:
            table = read_row_group(row_group, files.schema)
        except DataError as e:
            problems.append(e)
            continue
        rows += table.num_rows
        if order.whole_because is None:
            _group(SourceTable(table, row_group.where, (row_group.file,)), config, problems)
        else:
            tables.append(table)
    if tables:
        _group(SourceTable(pa.concat_tables(tables), files.where, files.files), config,
               problems)
    how = ("a row group at a time, as it streams" if order.whole_because is None
           else "whole, as it is grouped in memory")
    read = [f"data: read every value of {len(order.row_groups):,} row groups, {rows:,} rows, {how}"]
    return read, [str(p) for p in problems]


def _group(source: SourceTable, config: PipelineConfig, problems: list) -> None:
    """Groups `source`, keeping the problems found; one that stops grouping ends it."""
    if not source.table.num_rows:
        return
    try:
        group_sequences(source, config, chunk=True, problems=problems)
    except DataError as e:
        problems.append(e)
