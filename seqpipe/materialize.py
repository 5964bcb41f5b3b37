"""Materialize: the preprocessing step. Writes the processed sequences once, as sharded
TFRecord files plus a manifest, so that many training runs read them without Parquet.

Output layout (one folder per part of the split; `all` when the config does not split):

    DIR/manifest.json                  config, its hash, counts, element spec, version
    DIR/<part>/index.parquet           id, kept length and valid labels of each sequence
    DIR/<part>/part-00000.tfrecord     one tf.train.Example per sequence (`seqpipe.records`)

Everything is written into a hidden temporary folder next to DIR and renamed to DIR at the
end, manifest last: an interrupted run never leaves a DIR that looks complete.
`load_materialized` batches the records exactly as `build_dataset` batches the Parquet
source: the same plan, padding and weights, batch for batch.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqpipe import paths
from seqpipe.batching import Windows
from seqpipe.config import PipelineConfig, SplitConfig, load_config
from seqpipe.dataset import batch_structure
from seqpipe.errors import ConfigError, DataError, SourceNotFoundError
from seqpipe.index import Index, missing_labels, valid_per_sequence
from seqpipe.pipeline import Pipeline
from seqpipe.progress import Progress
from seqpipe.records import encode_chunk, id_texts, read_chunks
from seqpipe.sequences import Sequences, concat_sequences
from seqpipe.shard import Shard, contiguous_runs
from seqpipe.split import PARTS, part_of

FORMAT = "seqpipe.materialized"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# A new shard starts once the current one holds this many bytes: big enough to read
# efficiently, small enough to share among workers.
SHARD_BYTES = 64 << 20

# Config keys that decide what the records hold. The rest (batching, shuffle, weights,
# padding side and value, label fill values) is applied when the records are loaded.
FROZEN = ("source.layout", "source.id_column", "source.time_column", "inputs",
          "outputs.*.column", "outputs.*.level", "padding.maxlen", "padding.truncating",
          "split")


def config_hash(config: Union[PipelineConfig, Mapping]) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal hashes. A mapping is
    hashed as it is (a manifest's `config`, as written)."""
    plain = config.to_dict() if isinstance(config, PipelineConfig) else config
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
    import tensorflow as tf

    config = config if isinstance(config, PipelineConfig) else load_config(config)
    out = str(out)
    check_out(out, overwrite)
    pipeline = Pipeline(dataclasses.replace(config, split=SplitConfig()))
    with paths.output_lock(out):
        return _write(pipeline, config, out, overwrite, shard_bytes, progress, tf)


def _write(pipeline: Pipeline, config: PipelineConfig, out: str, overwrite: bool,
           shard_bytes: int, progress: bool, tf) -> dict:
    report = pipeline.report
    bar = Progress(report.sequences) if progress else None
    parts = output_parts(config.split)
    temp, writers = paths.temporary_beside(out), {}
    try:
        for part in parts:
            writers[part] = _PartWriter(paths.join(temp, part), config, shard_bytes, tf)
        kept_all = pipeline.windows.length
        for first, chunk in pipeline.chunks():
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
                     "sequences": report.sequences, "streamed": report.streamed,
                     "empty_sequences_dropped": report.empty_sequences_dropped},
            dict(report.filled_values or {}),
            {part: w.close() for part, w in writers.items()})
        write_manifest(temp, manifest)
        check_out(out, overwrite)  # again: the folder may have changed while this ran
        paths.publish(temp, out, overwrite)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        paths.remove_tree(temp)
        raise
    return manifest


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


def is_output(folder: str) -> bool:
    """Whether `folder` holds a manifest seqpipe materialize wrote (its format marker)."""
    try:
        manifest = json.loads(paths.read_text(paths.join(folder, MANIFEST)))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _share(split: SplitConfig, part: str) -> float:
    """The share of the ids in `part` ('all' when the config does not split: every id)."""
    if part == "all":
        return 1.0
    return {"train": 1 - split.validation - split.test, "validation": split.validation,
            "test": split.test}[part]


def part_number(part: str) -> int:
    """The `part_of` number of a part folder's name ('all' when the config does not split)."""
    return PARTS.index(part) if part != "all" else 0


def output_parts(split: SplitConfig) -> list[str]:
    """The part folders an output holds: those with a share of the ids, or 'all'."""
    return [p for p in PARTS if _share(split, p) > 0] if split.enabled else ["all"]


@dataclasses.dataclass(frozen=True)
class EncodedChunk:
    """A chunk's sequences as records, with what each part's index needs."""

    ids: np.ndarray
    part: np.ndarray  # `part_of` number of each sequence
    kept: np.ndarray  # timesteps written
    lengths: np.ndarray  # timesteps before truncation
    records: list  # serialized tf.train.Example of each sequence
    valid: Mapping[str, np.ndarray]  # output -> valid labels among the kept timesteps

    def select(self, local: np.ndarray) -> EncodedChunk:
        return EncodedChunk(self.ids[local], self.part[local], self.kept[local],
                            self.lengths[local], [self.records[i] for i in local.tolist()],
                            {name: v[local] for name, v in self.valid.items()})


def encode_for_parts(chunk: Sequences, kept: np.ndarray, config: PipelineConfig) -> EncodedChunk:
    """Encodes grouped sequences as records, each keeping `kept` timesteps (truncation), and
    says which part of the split each belongs to: the one step both materialize paths
    (local and Beam) share, so they write the same records."""
    n = len(chunk)
    skip = chunk.lengths - kept if config.padding.truncating == "pre" else 0
    start = chunk.offsets[:-1] + skip
    records = list(encode_chunk(chunk, np.arange(n), start, kept, config))
    valid = {name: valid_per_sequence(chunk.present[name], spec.level, Windows(start, kept))
             for name, spec in config.outputs.items()}
    return EncodedChunk(chunk.ids, part_of(chunk.ids, config.split), kept, chunk.lengths,
                        records, valid)


def build_manifest(config: PipelineConfig, source: dict, filled_values: dict,
                   parts: dict) -> dict:
    """The manifest of an output: `source` holds where, files, rows, sequences, streamed and
    empty_sequences_dropped; `parts` each part's `write_part_index` summary."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "seqpipe_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(), "config_sha256": config_hash(config),
        "source": source, "filled_values": filled_values,
        "element_spec": _named(batch_structure(config)),
        "record": record_layout(config),
        "parts": parts,
    }


def write_manifest(folder: str, manifest: dict) -> None:
    paths.write_bytes(paths.join(folder, MANIFEST), json.dumps(manifest, indent=2).encode())


def write_part_index(folder: str, config: PipelineConfig, ids: np.ndarray, kept: np.ndarray,
                     lengths: np.ndarray, valid: Mapping[str, np.ndarray],
                     missing: Mapping[str, np.ndarray], shards: list,
                     shard_sequences: list, written_bytes: int) -> dict:
    """Writes a part's index.parquet (ids in the order of their records across the shards)
    and returns the part's manifest entry. `folder` may be any path TensorFlow writes."""
    columns = {"id": pa.array(ids), "length": pa.array(kept, pa.int64())}
    for name in config.outputs:
        columns[f"valid/{name}"] = pa.array(valid[name], pa.int64())
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


def _version() -> str:
    from seqpipe import __version__

    return __version__


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
            self.shards, self.shard_sequences, self.bytes)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _named(structure) -> dict:
    """The batch structure with its parts named, for JSON."""
    if isinstance(structure, tuple):
        return dict(zip(("x", "y", "sample_weight"), structure))
    return {"x": structure}


def record_layout(config: PipelineConfig) -> dict:
    """What each record holds, for readers that are not seqpipe."""
    layout = {"length": "int64: kept timesteps", "id": "bytes: the sequence id as text"}
    for name, spec in config.inputs.items():
        width = len(spec.columns)
        layout[f"x/{name}"] = (f"float32 list, length x {width} ({', '.join(spec.columns)}), "
                               f"timestep-major" if spec.level == "timestep" else
                               f"float32 list of {width} ({', '.join(spec.columns)})")
    for name, output in config.outputs.items():
        layout[f"y/{name}"] = ("float32 list of `length` labels, NaN where missing"
                               if output.level == "timestep" else
                               "float32: one label, NaN when missing")
    return layout


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
    shared: bool = False  # cut down to one input pipeline's files (`share`)
    streamed = False
    unlabelled: tuple = ()

    @property
    def file_count(self) -> int:
        return len(self.files)

    @functools.cached_property
    def index(self) -> Index:
        return Index.of_lengths(self.ids, self.lengths, self.rows)

    def chunks(self, in_part: Optional[np.ndarray] = None):
        return read_chunks(list(self.files), self.config, self.ids, self.file_sequences,
                           self.id_texts)

    def valid_labels(self, output: str, windows: Windows) -> np.ndarray:
        return self.valid[output]  # counted inside the kept timesteps when written

    def sequences(self) -> Sequences:
        return concat_sequences([chunk for _, chunk in self.chunks()])

    @functools.cached_property
    def id_texts(self) -> np.ndarray:
        """The index's ids as records hold them: made once, checked every epoch."""
        return id_texts(self.ids)

    def share(self, shard: Optional[Shard]) -> MaterializedPart:
        """This part cut down to `shard`'s run of files (`seqpipe.shard`); itself when there
        are fewer files than pipelines, or the output does not record records per file
        (the pipeline then takes its share by id hash)."""
        if (shard is None or self.file_sequences is None
                or len(self.files) < shard.count):
            return self
        counts = np.asarray(self.file_sequences, dtype=np.int64)
        runs = contiguous_runs(counts, shard.count)
        start, stop = int(runs[shard.index]), int(runs[shard.index + 1])
        first, last = int(counts[:start].sum()), int(counts[:stop].sum())
        return dataclasses.replace(
            self, files=self.files[start:stop], ids=self.ids[first:last],
            lengths=self.lengths[first:last],
            valid={name: v[first:last] for name, v in self.valid.items()},
            file_sequences=tuple(self.file_sequences[start:stop]), shared=True)


def read_manifest(path: Union[str, os.PathLike]) -> dict:
    """The manifest of a materialized output folder.

    Raises:
      SourceNotFoundError: no such folder, or no manifest in it.
      DataError: the manifest is not one seqpipe wrote, or from a newer format.
    """
    folder = str(path)
    if not paths.isdir(folder):
        raise SourceNotFoundError(f"materialized output not found: {folder!r} is not a "
                                  f"folder")
    file = paths.join(folder, MANIFEST)
    if not paths.exists(file):
        raise SourceNotFoundError(
            f"{folder!r} holds no {MANIFEST}: it is not the output of seqpipe "
            f"materialize, or a run that did not finish. Run seqpipe materialize again.")
    try:
        manifest = json.loads(paths.read_text(file))
    except (OSError, ValueError) as e:
        raise DataError(f"{file} is not readable JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{file} is not a seqpipe materialize manifest: its format is "
                        f"{found!r}, not {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{file} has format version {manifest['format_version']}, newer than "
                        f"this seqpipe reads ({FORMAT_VERSION}); upgrade seqpipe")
    _check_shape(manifest, _MANIFEST_KEYS, file, "")
    for name, part in manifest["parts"].items():
        _check_shape(part, _PART_KEYS, file, f"parts.{name}.")
        for key, entry in [("folder", part["folder"])] + [("shards", s) for s in part["shards"]]:
            if not _inside(entry):
                raise DataError(
                    f"{file} is damaged: parts.{name}.{key} names {entry!r}, which is not a "
                    f"file in the output's own folder; a manifest names only files beside it "
                    f"(a materialized folder is data, never a pointer elsewhere). Materialize "
                    f"again.")
    _check_shape(manifest["source"], _SOURCE_KEYS, file, "source.")
    if config_hash(manifest["config"]) != manifest["config_sha256"]:
        raise DataError(
            f"{file} was edited: its config no longer matches its config_sha256, so it no "
            f"longer says how the records were written. Materialize again rather than edit "
            f"the manifest (to load with other batching, pass config= to load_materialized).")
    return manifest


# What a manifest must hold for loading, and of which type.
_MANIFEST_KEYS = {"config": dict, "config_sha256": str, "source": dict, "filled_values": dict,
                  "parts": dict}
_PART_KEYS = {"folder": str, "sequences": int, "timesteps": int, "truncated_sequences": int,
              "truncated_timesteps": int, "missing_labels": dict, "shards": list}
_SOURCE_KEYS = {"where": str, "rows": int, "sequences": int, "empty_sequences_dropped": int}


def _inside(name: Any) -> bool:
    """Whether a manifest's entry names a file or folder directly inside the output."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and ":" not in name)


def _check_shape(found: Any, keys: dict, file: str, prefix: str) -> None:
    if not isinstance(found, dict):
        raise DataError(f"{file} is damaged: {prefix.rstrip('.')} is not a mapping. "
                        f"Materialize again.")
    for key, kind in keys.items():
        if key not in found:
            raise DataError(f"{file} is damaged: it has no key {prefix + key!r}. "
                            f"Materialize again.")
        if not isinstance(found[key], kind) or isinstance(found[key], bool):
            raise DataError(f"{file} is damaged: {prefix + key} must be a "
                            f"{_KIND_NAMES[kind]}; got {found[key]!r}. Materialize again.")


_KIND_NAMES = {dict: "mapping", str: "string", int: "whole number", list: "list"}


def _frozen_differences(written: dict, wanted: dict) -> list[str]:
    differences = []
    for key in FROZEN:
        section, _, rest = key.partition(".")
        if rest.startswith("*."):
            names = sorted(set(written.get(section, {})) | set(wanted.get(section, {})))
            pairs = [(f"{section}.{n}.{rest[2:]}",
                      written.get(section, {}).get(n, {}).get(rest[2:]),
                      wanted.get(section, {}).get(n, {}).get(rest[2:])) for n in names]
        elif rest:
            pairs = [(key, written.get(section, {}).get(rest), wanted.get(section, {}).get(rest))]
        else:
            pairs = [(key, written.get(section), wanted.get(section))]
        differences += [f"{k}: written with {a!r}, asked for {b!r}" for k, a, b in pairs if a != b]
    return differences


def open_part(path: Union[str, os.PathLike], config: Any = None,
              split: Optional[str] = None) -> MaterializedPart:
    """Reads the manifest and index of one part of a materialized output."""
    folder = str(path).rstrip("/")
    manifest = read_manifest(folder)
    written = load_config(manifest["config"])
    parts = manifest["parts"]
    if split is None:
        if len(parts) > 1:
            raise ConfigError(f"{folder!r} holds the parts {', '.join(parts)}; say which "
                              f"to read: split='train' (or --split train)")
        split = next(iter(parts))
    if split not in parts:
        raise ConfigError(f"{folder!r} holds no part {split!r}; it holds "
                          f"{', '.join(parts)}")
    if config is None:
        config = written
    else:
        config = config if isinstance(config, PipelineConfig) else load_config(config)
        differences = _frozen_differences(written.to_dict(), config.to_dict())
        if differences:
            raise ConfigError(
                f"the config differs from the one {folder!r} was materialized with, in "
                f"keys that decide what the records hold: {'; '.join(differences)}. "
                f"Materialize again with this config, or change only batching, shuffle, "
                f"weights, padding.side, padding.value and outputs' fill_value or weights.")
    config = dataclasses.replace(config, split=SplitConfig())
    info = parts[split]
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
    source = manifest["source"]
    report_fields = {
        "filled_values": manifest["filled_values"],
        "missing_labels": {n: tuple(v) for n, v in info["missing_labels"].items()},
        "source": f"{folder} (part {split!r}, materialized from {source['where']})",
        "timesteps": info["timesteps"], "truncated_sequences": info["truncated_sequences"],
        "truncated_timesteps": info["truncated_timesteps"],
        "empty_sequences_dropped": source["empty_sequences_dropped"],
        "split": split if split != "all" else None, "source_sequences": source["sequences"]}
    return MaterializedPart(config, str(part_folder), files,
                            index["id"].to_numpy(zero_copy_only=False),
                            index["length"].to_numpy(), valid, source["rows"], report_fields,
                            _file_sequences(info, index.num_rows))


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
    needed = ["id", "length"] + [f"valid/{name}" for name in config.outputs]
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


def load_materialized(path: Union[str, os.PathLike], config: Any = None,
                      split: Optional[str] = None, *, input_context: Any = None,
                      service: Optional[str] = None, processing_mode: str = "distributed_epoch",
                      job_name: Optional[str] = None):
    """The `(x, y, sample_weight)` dataset of a materialized output, batched on the fly.

    With the same config and seed, it yields exactly the batches `build_dataset` yields
    from the Parquet source, in the same order, epoch after epoch.

    Args:
      path: the folder `seqpipe materialize` wrote.
      config: None uses the config it was written with. Another config may change
        batching, shuffle, weights, padding side and value, and label fill values; the
        keys that decide what the records hold (`FROZEN`) must match.
      split: the part to read ('train', 'validation', 'test'); needed when there are several.
      input_context: a `tf.distribute.InputContext`: read this input pipeline's share of
        the shard files and batch per replica, as `build_dataset` does.
      service: a tf.data service dispatcher, 'grpc://HOST:PORT': the workers read and
        batch, in TensorFlow ops alone (`seqpipe.service`), so the batches are not the
        NumPy plan's (see there). Every worker must read `path` at the same path.
      processing_mode: with `service`: 'distributed_epoch' hands each shard file to one
        worker, so all consumers together get every sequence once per epoch;
        'parallel_epochs' has every worker run whole epochs.
      job_name: with `service`: consumers that give the same name share one job.

    Raises:
      SeqpipeError: no such output, an unfinished one, or a config that does not fit it.

    Example::

      model.fit(seqpipe.load_materialized("out/", split="train"),
                validation_data=seqpipe.load_materialized("out/", split="validation"))
    """
    from seqpipe.dataset import build_dataset, sharded_pipeline

    part = open_part(path, config, split)
    if service is None:
        return build_dataset(sharded_pipeline(part.config, input_context, source=part))
    from seqpipe.service import PROCESSING_MODES, records_dataset

    if processing_mode not in PROCESSING_MODES:
        raise ConfigError(f"processing_mode must be one of {', '.join(PROCESSING_MODES)}; "
                          f"got {processing_mode!r}")
    if input_context is not None:
        raise ConfigError("give service or input_context, not both: with the tf.data "
                          "service the dispatcher shares out the files")
    import tensorflow as tf

    return records_dataset(part).apply(tf.data.experimental.service.distribute(
        processing_mode, service, job_name=job_name))
