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
import pyarrow.compute as pc
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
    range_error,
)

_GLOB_CHARS = set("*?[")


@dataclasses.dataclass(frozen=True)
class ColumnRole:
    """What the config asks of one column: the key that names it and the kind it must be."""

    column: str
    key: str
    kind: str  # "key" (any type), "time" (orderable), "number", "category", or a list of one


@dataclasses.dataclass(frozen=True)
class SourceTable:
    """The columns the config needs, cast, with where they came from."""

    table: pa.Table
    where: str  # names the source in error messages: a path, or "the in-memory data"
    files: tuple[str, ...]
    # Where each run of equal ids begins, when a stream found it already (rows sorted by
    # id); None: not known.
    id_starts: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)


def column_roles(config: PipelineConfig) -> list[ColumnRole]:
    """Every column the config reads, with the key naming it and the type it needs."""
    source = config.source
    nested = source.layout == "nested"
    roles = []
    if source.id_column:
        roles.append(ColumnRole(source.id_column, "source.id_column", "key"))
    if source.time_column:
        roles.append(ColumnRole(source.time_column, "source.time_column",
                                "list of times" if nested else "time"))
    for name, spec in config.inputs.items():
        kind = _value_kind(nested, spec.level, spec.categorical, bool(spec.normalize))
        roles += [ColumnRole(c, f"inputs.{name}.columns", kind) for c in spec.columns]
    for name, output in config.outputs.items():
        key = f"outputs.{name}.column" + ("s" if output.columns else "")
        kind = _value_kind(nested, output.level, output.categorical)
        roles += [ColumnRole(c, key, kind) for c in output.label_columns]
    return roles


def _value_kind(nested: bool, level: str, categorical: bool = False,
                scaled: bool = False) -> str:
    # A scaled column is read as float64 and cast to float32 only after scaling: epoch
    # seconds or large counters keep their differences, which float32 would round away.
    kind = "category" if categorical else "scaled number" if scaled else "number"
    return f"list of {_plural(kind)}" if nested and level == "timestep" else kind


def _plural(kind: str) -> str:
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"


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
        _check_schema(schema, roles, fragment.path, partition_fields)
    if config.source.id_column not in partition_fields:
        _check_id_types(fragments, schemas, config.source.id_column)
    _check_partition_values(fragments, roles, partition_fields)
    null_labels = check_footers([
        (fragment, [Checked(r.column, r.key, r.kind, schema.field(r.column).type)
                    for r in roles if r.column not in partition_fields])
        for fragment, schema in zip(fragments, schemas)])
    fingerprints = {f.path: fingerprint(found.filesystem, f.path) for f in fragments}
    schema = _target_schema(found.schema, roles)
    dataset = pads.dataset(found.files, schema=schema, format=PARQUET,
                           filesystem=found.filesystem, partitioning=found.partitioning)
    return SourceFiles(dataset, config.source.path, schema, fingerprints,
                       tuple(null_labels))


# Pages written with a CRC (pyarrow's `write_page_checksum`, Spark, parquet-mr) are verified
# as they are read: a corrupt page is an error rather than wrong values in a batch.
CHECKSUMS = pads.ParquetFragmentScanOptions(page_checksum_verification=True)
PARQUET = pads.ParquetFileFormat(default_fragment_scan_options=CHECKSUMS)


def _check_id_types(fragments: list, schemas: list, id_name: Optional[str]) -> None:
    """Ids of one kind in every file: '0' in one file and 0 in another would otherwise be
    merged into one sequence, or fail to compare."""
    if not id_name:
        return
    first = None
    for fragment, schema in zip(fragments, schemas):
        kind = _id_kind(schema.field(id_name).type)
        if first is None:
            first = (fragment.path, schema.field(id_name).type, kind)
        elif kind != first[2]:
            raise DataError(
                f"source.id_column {id_name!r} is {first[1]} in {first[0]} but "
                f"{schema.field(id_name).type} in {fragment.path}; every file must store "
                f"its ids as one kind (all integers or all strings), or '0' and 0 would be "
                f"taken for different sequences. Write the ids with one type.")


def _id_kind(t: pa.DataType) -> str:
    """Id types that compare equal across files: int32 and int64, string and large_string."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    for kind, test in (("integer", pa.types.is_integer), ("floating", pa.types.is_floating),
                       ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
                        or pa.types.is_string_view(t)),
                       ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)
                        or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t))):
        if test(t):
            return kind
    return str(t)


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
        _check_schema(table.schema, roles, "the in-memory data", set())
        _check_ranges(table, roles)
        return SourceTable(_cast(table, roles), "the in-memory data", ())
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


def _check_ranges(table: pa.Table, roles: list[ColumnRole]) -> None:
    """In-memory data has no footers: its feature and label values are checked whole."""
    for role in roles:
        if role.kind not in ("number", "list of numbers"):
            continue
        column = table[role.column]
        if role.kind == "list of numbers":
            column = pc.list_flatten(column)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            finite = column if pa.types.is_integer(column.type) else pc.filter(
                column, pc.is_finite(column))
            bounds = pc.min_max(finite)
            error = range_error(role.column, role.key, "the in-memory data", column.type,
                                bounds["min"].as_py(), bounds["max"].as_py())
            if error is not None:
                raise error


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


def _check_schema(schema: pa.Schema, roles: list[ColumnRole], where: str,
                  partition_fields: set[str]) -> None:
    for role in roles:
        if role.column in partition_fields:
            continue
        if role.column not in schema.names:
            raise DataError(
                f"column {role.column!r} ({role.key}) not found in {where}; "
                f"it has columns: {', '.join(schema.names)}")
        field_type = schema.field(role.column).type
        if not _fits(field_type, role.kind):
            raise DataError(
                f"column {role.column!r} in {where} is {field_type}; {role.key} must be "
                f"{KIND_TEXT[role.kind]}{_categorical_hint(role, field_type)}")


def _categorical_hint(role: ColumnRole, found: pa.DataType) -> str:
    """A string column where numbers are wanted is most often categories."""
    if "number" not in role.kind or not _is_category(
            found.value_type if _is_list(found) else found):
        return ""
    owner = role.key.rsplit(".", 1)[0]
    return (f". If its values are categories, set {owner}.categorical: true (one column "
            f"per input) to turn them into int32 ids")


KIND_TEXT = {
    "key": "any type",
    "time": "numeric, a date or a timestamp, so timesteps can be ordered",
    "list of times": "a list of numbers, dates or timestamps in the nested layout",
    "number": "numeric (integer, float, boolean or decimal)",
    "list of numbers": "a list of numbers in the nested layout (one value per timestep)",
    "scaled number": "numeric (integer, float, boolean or decimal)",
    "list of scaled numbers": "a list of numbers in the nested layout (one value per "
                              "timestep)",
    "category": "a string, integer, boolean or dictionary column",
    "list of categories": "a list of strings, integers or booleans in the nested layout",
}


def _is_number(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_decimal(t) or pa.types.is_null(t))


def _is_time(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t)
            or (pa.types.is_temporal(t) and not pa.types.is_interval(t)))  # months: no order


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_category(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_null(t))


def _fits(t: pa.DataType, kind: str) -> bool:
    if kind == "key":
        return True
    if kind == "time":
        return _is_time(t)
    if kind in ("number", "scaled number"):
        return _is_number(t)
    if kind == "category":
        return _is_category(t)
    if kind == "list of times":
        return _is_list(t) and _is_time(t.value_type)
    if kind == "list of categories":
        return _is_list(t) and _is_category(t.value_type)
    return _is_list(t) and _is_number(t.value_type)  # list of (scaled) numbers


def _target_type(kind: str, found: pa.DataType) -> pa.DataType:
    if kind in ("key", "category") and pa.types.is_dictionary(found):
        return found.value_type  # categorical ids sort by their values, not their codes
    if kind == "category":
        return pa.string() if pa.types.is_large_string(found) else found
    if kind == "list of categories":
        value = found.value_type
        value = value.value_type if pa.types.is_dictionary(value) else value
        return pa.list_(pa.string() if pa.types.is_large_string(value) else value)
    if kind == "number":
        return pa.float32()
    if kind == "scaled number":
        return pa.float64()
    if kind == "list of numbers":
        return pa.list_(pa.float32())
    if kind == "list of scaled numbers":
        return pa.list_(pa.float64())
    if kind == "list of times":
        return pa.list_(_sortable(found.value_type))
    return _sortable(found)


def _sortable(kind: pa.DataType) -> pa.DataType:
    """float16 as float32: Arrow cannot sort float16 (pyarrow 26), and every value fits."""
    return pa.float32() if kind == pa.float16() else kind


def _target_schema(found: pa.Schema, roles: list[ColumnRole]) -> pa.Schema:
    fields: dict[str, pa.Field] = {}
    for role in roles:  # a column read for a scaled input and for something else: float64
        if role.column not in fields or "scaled" in role.kind:
            fields[role.column] = pa.field(
                role.column, _target_type(role.kind, found.field(role.column).type))
    return pa.schema(list(fields.values()))


def _cast(table: pa.Table, roles: list[ColumnRole]) -> pa.Table:
    schema = _target_schema(table.schema, roles)
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as e:
        raise DataError(f"could not convert the in-memory data to {schema}: {e}") from e

