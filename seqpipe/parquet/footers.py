"""Footers: what the Parquet footers say before any data is read, and whether a file is
still the one they were read from.

Checked from the column statistics of every row group, at build time: null ids and times,
integer features and labels that float32 cannot hold exactly, values beyond float32's
range, and labels that are all missing. A file without statistics is checked when it is
read instead. `Fingerprint` ties an index to the bytes it was built from: a file rewritten
between building and reading would otherwise be read under the old index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterable
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from seqpipe.errors import DataError

# The largest integer float32 holds exactly, and its largest finite value.
EXACT_INTEGERS = 2**24
FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """A file's size, modification time and a hash of its Parquet footer, and for a local
    file its inode and status-change time: cheap to take. A rewrite that keeps the size
    and the modification time (`cp -p`, `rsync -t`) still changes the footer's statistics
    or offsets, or else the inode (a new file renamed into place) or the status-change time
    (which no user call can set back)."""

    size: int
    mtime_ns: Optional[int]
    footer: str
    ctime_ns: Optional[int] = None
    inode: Optional[int] = None


def fingerprint(filesystem: pafs.FileSystem, path: str) -> Fingerprint:
    """The fingerprint of the Parquet file at `path`.

    Raises:
      DataError: the file cannot be read, or is not Parquet.
    """
    try:
        info = filesystem.get_file_info(path)
        with filesystem.open_input_file(path) as f:
            size = f.size()
            if size < 12:
                raise DataError(f"{path} is not a Parquet file: it holds {size} bytes")
            f.seek(size - 8)
            tail = f.read(8)
            length = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or length > size - 12:
                raise DataError(f"{path} is not a Parquet file: it does not end in a footer")
            f.seek(size - 8 - length)
            footer = f.read(length)
        local = os.stat(path) if isinstance(filesystem, pafs.LocalFileSystem) else None
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} could not be read: {' '.join(str(e).split())}") from e
    return Fingerprint(size, info.mtime_ns, hashlib.blake2b(footer, digest_size=16).hexdigest(),
                       local.st_ctime_ns if local else None, local.st_ino if local else None)


def check_unchanged(filesystem: pafs.FileSystem, path: str, built_from: Fingerprint) -> None:
    """Raises a DataError when the file at `path` is no longer the one an index was built
    from (`built_from`)."""
    try:
        now = fingerprint(filesystem, path)
    except DataError as e:
        raise DataError(f"{path} changed since the dataset was built ({e}). Build the "
                        f"dataset (or Pipeline) again to read it as it is now.") from e
    if now != built_from:
        words = {"size": "size", "mtime_ns": "modification time", "footer": "footer",
                 "inode": "inode", "ctime_ns": "status-change time"}
        what = [name for name in words if getattr(now, name) != getattr(built_from, name)]
        changed = ", ".join(words[w] for w in what)
        raise DataError(
            f"{path} changed since the dataset was built (its {changed} "
            f"{'differs' if len(what) == 1 else 'differ'}): its rows would be read under the "
            f"old index of ids, lengths and split parts. Build the dataset (or Pipeline) "
            f"again to read it as it is now.")


@dataclasses.dataclass(frozen=True)
class Checked:
    """A column the footers are checked for, with the config key that names it."""

    column: str
    key: str
    kind: str  # a `source.ColumnRole` kind
    arrow_type: pa.DataType  # as the file stores it


def check_footers(files: Iterable[tuple[Any, list[Checked]]]) -> list[str]:
    """Checks every row group's column statistics; returns the label columns whose every
    value is null.

    Args:
      files: each Parquet file fragment of the source, with the columns to check in it as
        it stores them.

    Raises:
      DataError: null ids or times; integers beyond 2^24 or finite values beyond float32's
        range in a feature or label column, naming the file, row group and column.
    """
    labels: dict = {}  # label column -> [null labels, rows, every row group counted its nulls]
    for fragment, columns in files:
        by_name = {c.column: c for c in columns}
        for c in columns:
            if c.key.startswith("outputs."):
                labels.setdefault(c.column, [0, 0, True])
        metadata = fragment.metadata
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            where = f"{fragment.path} (row group {g}, from its footer)"
            for j in range(group.num_columns):
                chunk = group.column(j)
                column = by_name.get(_column_of(chunk.path_in_schema, by_name) or "")
                if column is None:
                    continue
                stats, flat = chunk.statistics, chunk.path_in_schema == column.column
                if stats is not None:
                    _check_chunk(column, stats, where, flat)
                if column.column in labels and flat:
                    count = labels[column.column]
                    count[0] += stats.null_count if stats is not None and \
                        stats.has_null_count else 0
                    count[1] += group.num_rows
                    count[2] &= stats is not None and stats.has_null_count
    return [name for name, (nulls, rows, known) in labels.items()
            if known and rows and nulls == rows]


def _column_of(path: str, names: dict) -> Optional[str]:
    """The top-level column of a column chunk: `t` for a list's `t.list.element`."""
    if path in names:
        return path
    head = path.split(".", 1)[0]
    return head if head in names else None


def _check_chunk(column: Checked, stats: Any, where: str, flat: bool) -> None:
    if column.kind in ("key", "time"):
        if flat and stats.has_null_count and stats.null_count:
            raise DataError(
                f"{column.key} {column.column!r} has {stats.null_count:,} null values in "
                f"{where}; every row needs one")
        return
    if column.kind not in ("number", "list of numbers") or not stats.has_min_max:
        return
    value_type = column.arrow_type if flat else column.arrow_type.value_type
    error = range_error(column.column, column.key, where, value_type,
                        stats.min, stats.max)
    if error is not None:
        raise error


def range_error(column: str, key: str, where: str, value_type: pa.DataType, low: Any,
                high: Any) -> Optional[DataError]:
    """The error for feature or label values float32 cannot hold, or None when they fit:
    integers beyond 2^24 (float32 would round them) and finite values beyond its range
    (float32 would make them infinite)."""
    if pa.types.is_dictionary(value_type):
        value_type = value_type.value_type
    if low is None or high is None or pa.types.is_float16(value_type):
        return None  # float16 statistics come as raw bytes, and every float16 fits float32
    if pa.types.is_integer(value_type):
        beyond = [v for v in (low, high) if abs(v) > EXACT_INTEGERS]
        if beyond:
            scale = (f"Scale it (set {key.rsplit('.', 1)[0]}.normalize: seqpipe scales in "
                     f"float64 and casts after, which keeps it exact enough), or subtract "
                     if key.startswith("inputs.") else "Subtract ")
            return DataError(
                f"column {column!r} ({key}) holds the integer {beyond[0]:,} in {where}, "
                f"beyond 2^24 = {EXACT_INTEGERS:,}: float32, the type of every feature and "
                f"label, cannot hold it exactly. {scale}an offset or rescale the column "
                f"before seqpipe reads it.")
    elif pa.types.is_floating(value_type):
        beyond = [v for v in (low, high) if math.isfinite(v) and abs(v) > FLOAT32_MAX]
        if beyond:
            return DataError(
                f"column {column!r} ({key}) holds {beyond[0]:g} in {where}, which overflows "
                f"float32 (its largest value is {FLOAT32_MAX:.4g}). Rescale the column "
                f"before seqpipe reads it.")
    return None
