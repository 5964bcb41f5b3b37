"""Materialize: the preprocessing step. Writes the processed sequences once, as TFRecord
files plus a manifest (see `manifest`), so that many training runs read them without Parquet.

Everything is written into a hidden temporary folder next to DIR and renamed to DIR at the
end, manifest last: an interrupted run never leaves a DIR that looks complete.
`seqpipe.load_materialized` batches the records exactly as `build_dataset` batches the
Parquet source: the same plan, padding and weights, batch for batch.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqpipe._internal import paths
from seqpipe._internal.lazy import tensorflow
from seqpipe._internal.progress import Progress
from seqpipe.config import PipelineConfig, SplitConfig, load_config
from seqpipe.errors import ConfigError, DataError
from seqpipe.index import KeptSteps, missing_labels, valid_per_sequence
from seqpipe.materialized.manifest import (
    build_manifest,
    check_written,
    is_output,
    not_written,
    output_parts,
    part_number,
    write_manifest,
)
from seqpipe.materialized.records import encode_chunk
from seqpipe.parquet.sequences import Sequences
from seqpipe.pipeline import Pipeline
from seqpipe.scaling import scale_input
from seqpipe.split import parts_of, timesteps_before
from seqpipe.statistics import needed

# A new shard starts once the current one holds this many bytes: big enough to read
# efficiently, small enough to share among workers.
SHARD_BYTES = 64 << 20


def materialize(config: Union[PipelineConfig, Mapping, str, os.PathLike],
                out: Union[str, os.PathLike], overwrite: bool = False,
                shard_bytes: int = SHARD_BYTES, progress: bool = False) -> dict:
    """Writes the config's processed sequences to `out` and returns the manifest.

    Args:
      config: the pipeline config (its `split` section decides the parts).
      out: the output folder; it must not exist unless `overwrite`.
      overwrite: replace an existing `out` (only once the new output is complete).
      shard_bytes: start a new TFRecord file after this many bytes.
      progress: show a progress bar on stderr (log lines when it is not a terminal).

    Raises:
      SeqpipeError: bad config or data (before anything is written); `out` exists.
    """
    tf = tensorflow()

    config = config if isinstance(config, PipelineConfig) else load_config(config)
    check_storable(config)
    out = output_folder(out, config)
    check_out(out, overwrite)
    # Statistics come from the train part, as a pipeline of that part computes them; the
    # records of every part are then prepared with them.
    # The parts split.column holds are read with that pipeline's index too: the pipeline
    # that writes every part reads the source without the split.
    train = (Pipeline(config, split="train") if config.split.enabled
             and (needed(config) or config.split.column is not None) else None)
    statistics = train.statistics if train is not None and needed(config) else None
    parts = train.source.index.parts if train is not None else None
    pipeline = Pipeline(dataclasses.replace(config, split=SplitConfig()), statistics=statistics)
    with paths.output_lock(out):
        return _write(pipeline, config, out, overwrite, shard_bytes, progress, tf, parts)


def _write(pipeline: Pipeline, config: PipelineConfig, out: str, overwrite: bool,
           shard_bytes: int, progress: bool, tf, read_parts: Optional[np.ndarray]) -> dict:
    report = pipeline.report
    bar = Progress(len(pipeline.source.index.ids)) if progress else None
    parts = output_parts(config.split, read_parts)
    temp, writers = paths.temporary_beside(out), {}
    try:
        for part in parts:
            writers[part] = _PartWriter(paths.join(temp, part), config, shard_bytes, tf)
        kept_all, time_dtype = pipeline.kept_steps.length, None
        for first, chunk in pipeline.chunks():
            if chunk.times is not None:
                time_dtype = chunk.times.dtype.str
            if read_parts is not None:  # split.column's, read by the train pipeline
                chunk = dataclasses.replace(chunk, parts=read_parts[first:first + len(chunk)])
            encoded = encode_for_parts(chunk, kept_all[first:first + len(chunk)], config)
            for part, writer in writers.items():
                mine = encoded.part == part_number(part)
                if mine.any():
                    writer.add(encoded.select(np.flatnonzero(mine)),
                               missing_labels(chunk.present, mine, chunk.lengths, config.levels))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        report = pipeline.report  # now with the fills counted during the pass
        manifest = build_manifest(
            config, {"where": report.source, "files": report.files, "rows": report.rows,
                     "sequences": len(pipeline.source.index.ids), "streamed": report.streamed,
                     "empty_sequences_dropped": report.empty_sequences_dropped},
            dict(report.filled_values or {}),
            {part: w.close() for part, w in writers.items()}, pipeline.statistics, time_dtype)
        write_manifest(temp, manifest)
        check_written(manifest, report.rows, config.source.layout, "this run")
        check_out(out, overwrite)  # again: the folder may have changed while this ran
        paths.publish(temp, out, overwrite)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        paths.remove_tree(temp)
        raise
    return manifest


def output_folder(out: Union[str, os.PathLike], config: PipelineConfig) -> str:
    """Where materialize writes `out`: a local symlink resolved to the folder it names, so
    that `--overwrite` replaces that folder and the link goes on naming it.

    Raises:
      DataError: `out` lies inside the source's folder, where its index files would become
        part of the source the next time it is read.
    """
    out = str(out).rstrip("/")
    if paths.is_uri(out):
        return out
    out = os.path.realpath(out)
    folder = _source_folder(config.source.path)
    if folder and (out == folder or out.startswith(folder.rstrip(os.sep) + os.sep)):
        raise DataError(
            f"--out {out} lies inside the source folder {folder} (source.path "
            f"{config.source.path!r}): its files would be read as part of the source from "
            f"then on. Choose an --out outside {folder}.")
    return out


def _source_folder(path: Optional[str]) -> Optional[str]:
    """The folder a local source reads everything below: the folder itself, or a glob's
    fixed part; None for a single file or a URI."""
    if not path or paths.is_uri(path):
        return None
    fixed = re.split(r"[*?\[]", path, maxsplit=1)[0]
    if fixed == path:
        return os.path.realpath(path) if os.path.isdir(path) else None
    return os.path.realpath(fixed if fixed.endswith(os.sep) else os.path.dirname(fixed) or ".")


def check_storable(config: PipelineConfig) -> None:
    """Raises a ConfigError for what records cannot hold: a per-series scale input (the
    records hold values already scaled, not each series' scales)."""
    for key, specs in (("inputs", config.inputs), ("outputs", config.outputs)):
        for name, spec in specs.items():
            if scale_input(spec, "series"):
                raise ConfigError(
                    f"{key}.{name}.normalize.input: a materialized output stores values "
                    f"already scaled per series, not each series' scales, so it cannot feed "
                    f"the scale input {scale_input(spec, 'series')!r}. Train from the Parquet "
                    f"source, or scale per window (made when the output is loaded).")


def check_out(out: str, overwrite: bool) -> None:
    """Raises a DataError when `out` cannot take an output: it is a file or below one, or
    an existing folder that is not empty. `overwrite` replaces only an earlier seqpipe
    output: a data tool never deletes what it did not write.
    """
    paths.check_output(out)
    if not paths.exists(out):
        return
    found = paths.listdir(out)
    if not found:
        return  # an empty folder is used
    if not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite (overwrite=True) to replace "
                        f"it, or choose another --out")
    if not is_output(out):
        shown = ", ".join(found[:5]) + (f", ... ({len(found)} entries)" if len(found) > 5 else "")
        raise DataError(
            f"--overwrite replaces only an earlier seqpipe materialize output or an empty "
            f"folder, and {out} is neither (it holds {shown}); nothing was touched. Choose "
            f"another --out.")
    others = not_written(out)
    if others:
        shown = ", ".join(others[:5]) + (f", ... ({len(others)} in all)" if len(others) > 5
                                         else "")
        raise DataError(
            f"--overwrite replaces only what seqpipe wrote, and {out} also holds files it did "
            f"not write: {shown}; nothing was touched. Move them out of {out}, or choose "
            f"another --out.")


@dataclasses.dataclass(frozen=True)
class EncodedChunk:
    """A chunk's sequences as records, with what each part's index needs."""

    ids: np.ndarray
    part: np.ndarray  # `part_of` number of each sequence
    kept: np.ndarray  # timesteps written
    lengths: np.ndarray  # timesteps before truncation
    records: list  # serialized tf.train.Example of each sequence
    valid: Mapping[str, np.ndarray]  # output -> valid labels among the kept timesteps
    before_cutoff: Optional[np.ndarray] = None  # timesteps before split.time_cutoff

    def select(self, local: np.ndarray) -> EncodedChunk:
        return EncodedChunk(self.ids[local], self.part[local], self.kept[local],
                            self.lengths[local], [self.records[i] for i in local.tolist()],
                            {name: v[local] for name, v in self.valid.items()},
                            None if self.before_cutoff is None else self.before_cutoff[local])


def encode_for_parts(chunk: Sequences, kept: np.ndarray, config: PipelineConfig) -> EncodedChunk:
    """Encodes grouped sequences as records, each keeping `kept` timesteps (truncation), and
    says which part of the split each belongs to: the one step both materialize paths
    (local and Beam) share, so they write the same records."""
    n = len(chunk)
    skip = chunk.lengths - kept if config.padding.truncating == "pre" else 0
    start = chunk.offsets[:-1] + skip
    records = list(encode_chunk(chunk, np.arange(n), start, kept, config))
    valid = {name: valid_per_sequence(chunk.present[name], spec.level, KeptSteps(start, kept))
             for name, spec in config.outputs.items()}
    before = None
    if config.split.time_cutoff is not None and chunk.times is not None:
        before = timesteps_before(chunk.times, chunk.offsets, config.split,
                                  config.source.time_column or "", config.source.path or "")
    return EncodedChunk(chunk.ids, parts_of(config.split, chunk.ids, chunk.parts), kept,
                        chunk.lengths, records, valid, before)


def write_part_index(folder: str, config: PipelineConfig, ids: np.ndarray, kept: np.ndarray,
                     lengths: np.ndarray, valid: Mapping[str, np.ndarray],
                     missing: Mapping[str, np.ndarray], shards: list,
                     shard_sequences: list, written_bytes: int,
                     before_cutoff: Optional[np.ndarray] = None) -> dict:
    """Writes a part's index.parquet (ids in the order of their records across the shards)
    and returns the part's manifest entry. `folder` may be any path TensorFlow writes."""
    columns = {"id": pa.array(ids), "length": pa.array(kept, pa.int64())}
    for name in config.outputs:
        columns[f"valid/{name}"] = pa.array(valid[name], pa.int64())
    if before_cutoff is not None:  # windows are split by time when loading
        columns["before_cutoff"] = pa.array(before_cutoff, pa.int64())
    buffer = pa.BufferOutputStream()  # pyarrow does not write to a GFile directly
    pq.write_table(pa.table(columns), buffer)
    paths.write_bytes(paths.join(folder, "index.parquet"), buffer.getvalue().to_pybytes())
    return {"folder": folder.rstrip("/").rsplit("/", 1)[-1], "sequences": int(len(ids)),
            "timesteps": int(lengths.sum()), "kept_timesteps": int(kept.sum()),
            "truncated_sequences": int((kept < lengths).sum()),
            "truncated_timesteps": int((lengths - kept).sum()),
            "missing_labels": {n: [int(m), int(t)] for n, (m, t) in missing.items()},
            "shards": list(shards), "shard_sequences": list(shard_sequences),
            "bytes": int(written_bytes)}


class _PartWriter:
    """Writes one part's records into shards, and its index."""

    def __init__(self, folder: str, config: PipelineConfig, shard_bytes: int, tf) -> None:
        paths.makedirs(folder)
        self.folder, self.config, self.shard_bytes, self.tf = folder, config, shard_bytes, tf
        self.shards: list[str] = []
        self.writer: Any = None  # tf.io.TFRecordWriter of the current shard
        self.written = 0
        self.shard_sequences: list[int] = []  # records in each shard: sharing out by file
        self.ids: list[np.ndarray] = []
        self.kept: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.valid: dict[str, list[np.ndarray]] = {name: [] for name in config.outputs}
        self.before: list[np.ndarray] = []
        self.missing = {name: np.zeros(2, dtype=np.int64) for name in config.outputs}
        self.bytes = 0

    def add(self, encoded: EncodedChunk, missing: dict) -> None:
        """Writes some sequences' records and notes their index rows and label counts."""
        for record in encoded.records:
            if self.writer is None or self.written >= self.shard_bytes:
                self._next_shard()
            self.writer.write(record)
            self.shard_sequences[-1] += 1
            self.written += len(record)
            self.bytes += len(record)
        self.ids.append(encoded.ids)
        self.kept.append(encoded.kept)
        self.lengths.append(encoded.lengths)
        for name in self.config.outputs:
            self.valid[name].append(encoded.valid[name])
            self.missing[name] += missing[name]
        if encoded.before_cutoff is not None:
            self.before.append(encoded.before_cutoff)

    def _next_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        name = f"part-{len(self.shards):05d}.tfrecord"
        self.shards.append(name)
        self.shard_sequences.append(0)
        self.writer = self.tf.io.TFRecordWriter(paths.join(self.folder, name))
        self.written = 0

    def close(self) -> dict:
        if self.writer is not None:
            self.writer.close()

        def joined(arrays, dtype):
            return np.concatenate(arrays) if arrays else np.empty(0, dtype)

        return write_part_index(
            self.folder, self.config, joined(self.ids, np.int64),
            joined(self.kept, np.int64), joined(self.lengths, np.int64),
            {name: joined(v, np.int64) for name, v in self.valid.items()}, self.missing,
            self.shards, self.shard_sequences, self.bytes,
            joined(self.before, np.int64) if self.config.split.time_cutoff is not None
            else None)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
