"""Reading a materialized output: one part of it as a source of sequences
(`seqpipe.index.SequenceSource`), checked against its manifest and index."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqpipe._internal import paths
from seqpipe.config import PipelineConfig, SplitConfig, load_config
from seqpipe.errors import ConfigError, DataError
from seqpipe.index import Index, KeptSteps
from seqpipe.materialized.manifest import frozen_differences, read_manifest
from seqpipe.materialized.records import id_texts, read_chunks
from seqpipe.parquet.sequences import Sequences, concat_sequences
from seqpipe.split import check_part
from seqpipe.statistics import Statistics


@dataclasses.dataclass(frozen=True)
class MaterializedPart:
    """One part of a materialized output: a `seqpipe.index.SequenceSource` of its records."""

    config: PipelineConfig
    where: str
    files: tuple
    ids: np.ndarray
    lengths: np.ndarray  # kept timesteps
    valid: Mapping[str, np.ndarray]
    rows: int
    report_fields: Mapping[str, Any]  # counted when the part was written, before truncation
    file_sequences: Optional[tuple] = None  # records per file; None from older outputs
    statistics: Optional[Statistics] = None  # the records are prepared with these
    time_dtype: Optional[str] = None  # of the times records hold; None: they hold none
    before_cutoff: Optional[np.ndarray] = None  # timesteps before split.time_cutoff
    time_part: Optional[str] = None  # the part of a time split: windows cut when loading
    streamed = False
    unlabelled: tuple = ()

    @property
    def file_count(self) -> int:
        return len(self.files)

    @functools.cached_property
    def index(self) -> Index:
        return dataclasses.replace(Index.of_lengths(self.ids, self.lengths, self.rows),
                                   before_cutoff=self.before_cutoff)

    def chunks(self, in_part: Optional[np.ndarray] = None,
               needed: Optional[np.ndarray] = None):
        """The records in order; with `needed`, only the run of files from the first to
        the last that holds a needed sequence (all of them when the output does not record
        records per file)."""
        if needed is None or self.file_sequences is None or not needed.any():
            return read_chunks(list(self.files), self.config, self.ids, self.file_sequences,
                               self.id_texts, self.time_dtype)
        ends = np.cumsum(np.asarray(self.file_sequences, dtype=np.int64))
        wanted = np.flatnonzero(needed)
        a, b = np.searchsorted(ends, [wanted[0], wanted[-1]], side="right").tolist()
        first = int(ends[a - 1]) if a else 0
        chunks = read_chunks(list(self.files[a:b + 1]), self.config,
                             self.ids[first:ends[b]], self.file_sequences[a:b + 1],
                             self.id_texts[first:ends[b]], self.time_dtype)
        return ((first + at, chunk) for at, chunk in chunks)

    def valid_labels(self, output: str, kept: KeptSteps) -> np.ndarray:
        return self.valid[output]  # counted inside the kept timesteps when written

    def sequences(self) -> Sequences:
        return concat_sequences([chunk for _, chunk in self.chunks()])

    @functools.cached_property
    def id_texts(self) -> np.ndarray:
        """The index's ids as records hold them: made once, checked every epoch."""
        return id_texts(self.ids)


def open_part(path: Union[str, os.PathLike], config: Any = None,
              split: Optional[str] = None) -> MaterializedPart:
    """Reads the manifest and index of one part of a materialized output."""
    folder = str(path).rstrip("/")
    manifest = read_manifest(folder)
    config = _loading_config(folder, manifest, config)
    # A time split writes one part, 'all'; its windows are cut at loading ('all': every one).
    by_time = config.split.by_time
    time_part = check_part(split, config.split) if by_time and split != "all" else None
    split = "all" if by_time else _part_name(folder, manifest["parts"], split)
    if time_part is None:
        config = dataclasses.replace(config, split=SplitConfig())
    info = manifest["parts"][split]
    part_folder = paths.join(folder, info["folder"])
    files = tuple(paths.join(part_folder, shard) for shard in info["shards"])
    missing = [f for f in files if not paths.exists(f)]
    if missing:
        raise DataError(f"{folder!r} is incomplete: {missing[0]} is missing "
                        f"({len(missing)} of {len(files)} shards). Materialize again.")
    index = _read_index(paths.join(part_folder, "index.parquet"), config)
    if index.num_rows != info["sequences"]:
        raise DataError(f"{paths.join(part_folder, 'index.parquet')} lists "
                        f"{index.num_rows:,} sequences, the manifest {info['sequences']:,}; "
                        f"materialize again")
    if not index.num_rows:
        raise DataError(f"part {split!r} of {folder!r} holds no sequences")
    valid = {name: index[f"valid/{name}"].to_numpy() for name in config.outputs}
    return MaterializedPart(config, str(part_folder), files,
                            index["id"].to_numpy(zero_copy_only=False),
                            index["length"].to_numpy(), valid, manifest["source"]["rows"],
                            _report_fields(folder, manifest, split),
                            _file_sequences(info, index.num_rows),
                            statistics=Statistics.from_dict(manifest["statistics"], folder)
                            if "statistics" in manifest else Statistics(),
                            time_dtype=manifest.get("time_dtype"),
                            before_cutoff=(index["before_cutoff"].to_numpy()
                                           if by_time else None),
                            time_part=time_part)


def _part_name(folder: str, parts: Mapping, split: Optional[str]) -> str:
    if split is None:
        if len(parts) > 1:
            raise ConfigError(f"{folder!r} holds the parts {', '.join(parts)}; say which "
                              f"to read: split='train' (or --split train)")
        split = next(iter(parts))
    if split not in parts:
        raise ConfigError(f"{folder!r} holds no part {split!r}; it holds "
                          f"{', '.join(parts)}")
    return split


def _loading_config(folder: str, manifest: dict, config: Any) -> PipelineConfig:
    """The config the records were written with, or `config` when it changes only what
    loading decides (batching, shuffle, weights, padding side and value)."""
    written = load_config(manifest["config"])
    if config is None:
        return written
    config = config if isinstance(config, PipelineConfig) else load_config(config)
    differences = frozen_differences(written.to_dict(), config.to_dict())
    if differences:
        raise ConfigError(
            f"the config differs from the one {folder!r} was materialized with, in "
            f"keys that decide what the records hold: {'; '.join(differences)}. "
            f"Materialize again with this config, or change only batching, shuffle, "
            f"weights, padding.side, padding.value and outputs' fill_value or weights.")
    return config


def _report_fields(folder: str, manifest: dict, split: str) -> dict:
    """What the manifest says for the report: counted when the part was written."""
    info, source = manifest["parts"][split], manifest["source"]
    return {
        "filled_values": manifest["filled_values"],
        "missing_labels": {n: tuple(v) for n, v in info["missing_labels"].items()},
        "source": f"{folder} (part {split!r}, materialized from {source['where']})",
        "timesteps": info["timesteps"], "truncated_sequences": info["truncated_sequences"],
        "truncated_timesteps": info["truncated_timesteps"],
        "empty_sequences_dropped": source["empty_sequences_dropped"],
        "split": split if split != "all" else None, "source_sequences": source["sequences"],
        "streamed": True, "reading": "streamed from its TFRecord files"}


def _read_index(file: str, config: PipelineConfig) -> pa.Table:
    """A part's index.parquet (pyarrow reads URIs too)."""
    if not paths.exists(file):
        raise DataError(f"{file} is missing: the output is incomplete or damaged. "
                        f"Materialize again.")
    try:
        index = pq.read_table(file)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{file} cannot be read ({' '.join(str(e).split())}): the output is "
                        f"incomplete or damaged. Materialize again.") from e
    needed = ["id", "length"] + [f"valid/{name}" for name in config.outputs] + (
        ["before_cutoff"] if config.split.time_cutoff is not None else [])
    missing = [c for c in needed if c not in index.column_names]
    if missing:
        raise DataError(f"{file} is damaged: it has no column {missing[0]!r}. "
                        f"Materialize again.")
    return index


def _file_sequences(info: dict, sequences: int) -> Optional[tuple]:
    counts = info.get("shard_sequences")  # absent from outputs written before it was kept
    if counts is None:
        return None
    if len(counts) != len(info["shards"]) or sum(counts) != sequences:
        raise DataError(f"the manifest's shard_sequences ({sum(counts):,} records in "
                        f"{len(counts)} files) disagree with its index ({sequences:,} sequences "
                        f"in {len(info['shards'])} files); materialize again")
    return tuple(int(c) for c in counts)
