"""Source: finds the Parquet files, checks their schemas against the config, reads columns.

The result is one Arrow table holding only the columns the config names, numeric columns
cast to float32 (list<float32> for list columns), so that the next stage never sees a
type it did not ask for. Schemas are checked per file from the Parquet footers before any
data is read, so a missing or mistyped column is reported with its file.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from seqpipe._internal import paths
from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError, SourceNotFoundError
from seqpipe.parquet.footers import (
    Checked,
    Fingerprint,
    check_footers,
    check_unchanged,
    fingerprint,
)
from seqpipe.parquet.schema import (
    KIND_TEXT,
    cast_columns,
    check_id_types,
    check_ranges,
    check_schema,
    column_roles,
    target_schema,
)

_GLOB_CHARS = set("*?[")


@dataclasses.dataclass(frozen=True)
class SourceTable:
    """The columns the config needs, cast, with where they came from."""

    table: pa.Table
    where: str  # names the source in error messages: a path, or "the in-memory data"
    files: tuple[str, ...]
    # Where each run of equal ids begins, when a stream found it already (rows sorted by
    # id); None: not known.
    id_starts: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The Parquet files of `source.path`, their schemas checked against the config."""

    dataset: pads.Dataset  # the files, with their hive partitioning
    where: str
    schema: pa.Schema  # the columns the config reads, with the types they are cast to
    fingerprints: Mapping[str, Fingerprint] = dataclasses.field(default_factory=dict)
    null_labels: tuple[str, ...] = ()  # label columns whose every value is null
    # A regrouped copy's open lease file (`seqpipe.parquet.regroup`): its shared lock keeps the copy
    # from being removed while this source may read it.
    lease: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.dataset.files)

    def check_unchanged(self, path: str) -> None:
        """Raises a DataError when the file at `path` is not the one this was opened on."""
        check_unchanged(self.dataset.filesystem, path, self.fingerprints[path])


def open_source(config: PipelineConfig) -> SourceFiles:
    """Finds the files of `source.path` and checks each one's schema, reading only footers.

    Raises:
      SourceNotFoundError: the path names no file or matches no Parquet file.
      DataError: a column is missing or has a type the config cannot use.
    """
    if not config.source.path:
        raise DataError("source.path is not set and no in-memory data was passed. Set "
                        "source.path to a Parquet file, directory or glob, or pass data=.")
    found = _open_dataset(config.source.path)
    roles = column_roles(config)
    fragments = list(found.get_fragments())
    partition_fields = _partition_keys(found, fragments)
    schemas = [read_schema(fragment) for fragment in fragments]
    for fragment, schema in zip(fragments, schemas):
        check_schema(schema, roles, fragment.path, partition_fields)
    if config.source.id_column not in partition_fields:
        check_id_types(fragments, schemas, config.source.id_column)
    _check_partition_values(fragments, roles, partition_fields)
    null_labels = check_footers([
        (fragment, [Checked(r.column, r.key, r.kind, schema.field(r.column).type)
                    for r in roles if r.column not in partition_fields])
        for fragment, schema in zip(fragments, schemas)])
    fingerprints = {f.path: fingerprint(found.filesystem, f.path) for f in fragments}
    schema = target_schema(found.schema, roles)
    dataset = pads.dataset(found.files, schema=schema, format=PARQUET,
                           filesystem=found.filesystem, partitioning=found.partitioning)
    return SourceFiles(dataset, config.source.path, schema, fingerprints,
                       tuple(null_labels))


# Pages written with a CRC (pyarrow's `write_page_checksum`, Spark, parquet-mr) are verified
# as they are read: a corrupt page is an error rather than wrong values in a batch.
CHECKSUMS = pads.ParquetFragmentScanOptions(page_checksum_verification=True)
PARQUET = pads.ParquetFileFormat(default_fragment_scan_options=CHECKSUMS)


def _check_partition_values(fragments: list, roles: list, partition_fields: set) -> None:
    """A hive partition key read as a number or time must be one in every folder name."""
    for role in roles:
        if role.column not in partition_fields or role.kind == "key":
            continue
        for fragment in fragments:
            value = pads.get_partition_keys(fragment.partition_expression).get(role.column)
            if value is not None and not _is_numeric_text(value):
                raise DataError(
                    f"hive partition key {role.column!r} ({role.key}) is {value!r} in the "
                    f"folder of {fragment.path}; {role.key} must be {KIND_TEXT[role.kind]}. "
                    f"Rename the folders, or leave the key out of {role.key}.")


def source_schema(path: str) -> pa.Schema:
    """The schema of the Parquet files at `path` (a file, directory or glob), from footers."""
    return _open_dataset(path).schema


def read_source(config: PipelineConfig, data: Any = None,
                files: Optional[SourceFiles] = None) -> SourceTable:
    """Reads the columns the config needs from `source.path` or from in-memory `data`.

    Args:
      config: a validated pipeline config.
      data: a pandas DataFrame or pyarrow Table to use instead of `source.path`.
      files: the source already opened (`open_source`), so that it is not opened again.

    Returns:
      A `SourceTable` whose numeric columns are float32 (or list<float32>).

    Raises:
      SourceNotFoundError: the path names no file or matches no Parquet file.
      DataError: a column is missing or has a type the config cannot use.
    """
    if data is not None:
        roles = column_roles(config)
        table = _as_table(data)
        check_schema(table.schema, roles, "the in-memory data", set())
        check_ranges(table, roles)
        return SourceTable(cast_columns(table, roles), "the in-memory data", ())
    source = files if files is not None else open_source(config)
    try:
        table = source.dataset.to_table(columns=list(source.schema.names))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"could not read {source.where!r}: {read_error(e)}") from e
    for path in source.files:  # a file rewritten while it was read
        source.check_unchanged(path)
    return SourceTable(table, source.where, source.files)


def read_error(error: Exception) -> str:
    """pyarrow's reason a read failed, with what to do: it raises OSError for bytes it
    cannot decode, ArrowInvalid for values that do not convert to the types read."""
    detail = " ".join(str(error).split()).rstrip(".")
    if isinstance(error, OSError):
        return f"{detail}. The file is corrupt or unreadable; write it again."
    return f"{detail}. Its values do not fit the types the config reads them as."


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise DataError(f"data must be a pandas DataFrame or a pyarrow Table; "
                    f"got {type(data).__name__}")


def _open_dataset(path: str) -> pads.Dataset:
    if paths.is_uri(path):
        return _open_uri(path)
    if _GLOB_CHARS & set(path):
        files = sorted(glob.glob(path, recursive=True))
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise SourceNotFoundError(f"source.path {path!r} matched no files")
        try:
            return pads.dataset(files, format="parquet")
        except (pa.ArrowException, OSError) as e:
            raise _not_parquet(path, files) from e
    if not os.path.exists(path):
        raise SourceNotFoundError(
            f"source.path {path!r} does not exist (relative paths are relative to the "
            f"working directory, {os.getcwd()!r})")
    return _directory_or_file(path, os.path.isdir(path), None, path)


def _open_uri(uri: str) -> pads.Dataset:
    """A source on any file system pyarrow knows by its URI scheme (gs://, s3://,
    hdfs://, file://); a file or a folder, not a glob."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise SourceNotFoundError(f"source.path {uri!r}: pyarrow cannot open this URI: "
                                  f"{' '.join(str(e).split())}") from e
    if _GLOB_CHARS & set(path):
        raise SourceNotFoundError(f"source.path {uri!r}: glob patterns work on local paths "
                                  f"only; give the folder that holds the files")
    try:
        info = filesystem.get_file_info(path)
    except (pa.ArrowException, OSError) as e:
        raise SourceNotFoundError(f"source.path {uri!r} could not be looked up: {e}") from e
    if info.type == pafs.FileType.NotFound:
        raise SourceNotFoundError(f"source.path {uri!r} does not exist")
    return _directory_or_file(path, info.type == pafs.FileType.Directory, filesystem, uri)


def _directory_or_file(path: str, directory: bool, filesystem, where: str) -> pads.Dataset:
    try:
        dataset = pads.dataset(path, format="parquet", filesystem=filesystem,
                               partitioning="hive" if directory else None,
                               exclude_invalid_files=False)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"source.path {where!r} is not readable as Parquet: {e}") from e
    if not dataset.files:
        raise SourceNotFoundError(f"source.path {where!r} is a directory with no Parquet "
                                  f"files")
    return dataset


def _not_parquet(pattern: str, files: list[str]) -> DataError:
    """The error for a glob that matched a file pyarrow cannot read as Parquet."""
    for file in files:
        try:
            pq.read_metadata(file)
        except (pa.ArrowException, OSError) as e:
            return DataError(
                f"source.path {pattern!r} matched {file}, which is not a Parquet file "
                f"({' '.join(str(e).split())}). Narrow the pattern (to *.parquet, say) or "
                f"move the file.")
    return DataError(f"source.path {pattern!r}: the files it matched could not be opened "
                     f"together as Parquet")


def _is_numeric_text(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _partition_keys(dataset: pads.FileSystemDataset, fragments: list) -> set[str]:
    """Hive partition keys: the `key=value` folders below a directory source, which
    pyarrow parsed into each file's partition expression."""
    if dataset.partitioning is None:
        return set()
    keys = set()
    for fragment in fragments:
        keys.update(pads.get_partition_keys(fragment.partition_expression))
    return keys


def read_schema(fragment: pads.ParquetFileFragment) -> pa.Schema:
    """One file's schema, from its footer, on whatever file system it is on."""
    try:
        return fragment.physical_schema
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{fragment.path} is not a readable Parquet file: {e}") from e
