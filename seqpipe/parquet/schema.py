"""Schema: what the config asks of each column (`ColumnRole`), and the checks and casts of
Parquet schemas and tables against it.

Every column a config names has a role: the id (any type), the time (orderable), a
number, a category, or a list of one (the nested layout). A schema is checked per file
before any data is read; a table is cast so that the next stage never sees a type it did
not ask for (numbers as float32, or float64 where scaled).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.footers import range_error


@dataclasses.dataclass(frozen=True)
class ColumnRole:
    """What the config asks of one column: the key that names it and the kind it must be."""

    column: str
    key: str
    kind: str  # "key" (any type), "time" (orderable), "number", "category", or a list of one


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
    if config.split.column is not None:
        roles.append(ColumnRole(config.split.column, "split.column", "category"))
    return roles


def _value_kind(nested: bool, level: str, categorical: bool = False,
                scaled: bool = False) -> str:
    # A scaled column is read as float64 and cast to float32 only after scaling: epoch
    # seconds or large counters keep their differences, which float32 would round away.
    kind = "category" if categorical else "scaled number" if scaled else "number"
    return f"list of {_plural(kind)}" if nested and level == "timestep" else kind


def _plural(kind: str) -> str:
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"


def check_id_types(fragments: list, schemas: list, id_name: Optional[str]) -> None:
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


def check_ranges(table: pa.Table, roles: list[ColumnRole]) -> None:
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


def check_schema(schema: pa.Schema, roles: list[ColumnRole], where: str,
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


def target_schema(found: pa.Schema, roles: list[ColumnRole]) -> pa.Schema:
    fields: dict[str, pa.Field] = {}
    for role in roles:  # a column read for a scaled input and for something else: float64
        if role.column not in fields or "scaled" in role.kind:
            fields[role.column] = pa.field(
                role.column, _target_type(role.kind, found.field(role.column).type))
    return pa.schema(list(fields.values()))


def cast_columns(table: pa.Table, roles: list[ColumnRole]) -> pa.Table:
    schema = target_schema(table.schema, roles)
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as e:
        raise DataError(f"could not convert the in-memory data to {schema}: {e}") from e
