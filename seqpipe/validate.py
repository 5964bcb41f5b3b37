"""Validate: checks a config against the data's schema from the Parquet footers alone.

Nothing but footers is read and TensorFlow is not imported: a config can be checked in a
job's first second, before anything expensive starts.
"""

from __future__ import annotations

from seqpipe.config import PipelineConfig
from seqpipe.source import KIND_TEXT, column_roles, open_source, read_schema
from seqpipe.stream import stream_order


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
    found = {}
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
    lines.append("streaming: row groups hold disjoint id ranges; the source streams by row "
                 "group" if order.whole_because is None else
                 f"streaming: no, it will be grouped whole, in memory: {order.whole_because}. "
                 f"Sort the rows by {config.source.id_column} to stream it.")
    split = config.split
    if split.enabled:
        train = 1 - split.validation - split.test
        lines.append(f"split by {config.source.id_column}: train {train:.0%}, validation "
                     f"{split.validation:.0%}, test {split.test:.0%} (seed {split.seed})")
    return lines
