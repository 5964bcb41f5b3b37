"""The manifest of a materialized output: its format, what decides the records, and the
checks made when it is read. A manifest names only files beside it; it is data, never a
pointer elsewhere.

Output layout (one folder per part of the split; `all` when the config does not split):

    DIR/manifest.json                  config, its hash, counts, element spec, version
    DIR/<part>/index.parquet           id, kept length and valid labels of each sequence
    DIR/<part>/part-00000.tfrecord     one tf.train.Example per sequence (`records`)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np

from seqpipe._internal import paths
from seqpipe.batches.kinds import batch_structure
from seqpipe.config import PipelineConfig, SplitConfig
from seqpipe.errors import ConfigError, DataError, SourceNotFoundError
from seqpipe.split import PARTS
from seqpipe.statistics import Statistics

FORMAT = "seqpipe.materialized"


FORMAT_VERSION = 1


MANIFEST = "manifest.json"


# Config keys that decide what the records hold. The rest (batching, shuffle, weights,
# padding side and value, label fill values) is applied when the records are loaded.
FROZEN = ("source.layout", "source.id_column", "source.time_column", "inputs",
          "outputs.*.column", "outputs.*.columns", "outputs.*.level", "outputs.*.categorical",
          "padding.maxlen", "padding.truncating", "split")


def config_hash(config: Union[PipelineConfig, Mapping]) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal hashes. A mapping is
    hashed as it is (a manifest's `config`, as written)."""
    plain = config.to_dict() if isinstance(config, PipelineConfig) else config
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def is_output(folder: str) -> bool:
    """Whether `folder` holds a manifest seqpipe materialize wrote (its format marker)."""
    try:
        manifest = json.loads(paths.read_text(paths.join(folder, MANIFEST)))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_written(manifest: dict, rows: int, layout: str, what: str) -> None:
    """Raises a DataError, before an output is published, when what was written does not
    add up to what was read: `rows` in the source (from its footers); every row in a record
    (long layout: one timestep each; nested: one sequence each, or dropped as empty).
    `what` names the run ("the Beam pipeline on DirectRunner")."""
    source, parts = manifest["source"], manifest["parts"].values()
    timesteps = sum(p["timesteps"] for p in parts)
    sequences = sum(p["sequences"] for p in parts)
    if layout == "long":
        written, unit = timesteps, "timesteps"
    else:
        written, unit = sequences + source["empty_sequences_dropped"], "sequences"
    if source["rows"] != rows or written != rows:
        raise DataError(
            f"materialize read {rows:,} rows from the footers of {source['where']}, but "
            f"{what} grouped {source['rows']:,} and wrote {written:,} {unit}: rows were lost "
            f"on the way, so the output was not published. Run it again; if it happens again, "
            f"try another runner or its default settings (Beam's DirectRunner in "
            f"multi_threading mode is known to lose rows).")


def not_written(folder: str) -> list[str]:
    """The entries of an output folder its manifest does not list: files a user added."""
    manifest = json.loads(paths.read_text(paths.join(folder, MANIFEST)))
    parts = {part.get("folder"): {"index.parquet", *part.get("shards", [])}
             for part in manifest.get("parts", {}).values() if isinstance(part, dict)}
    found = []
    for name in paths.listdir(folder):
        name = name.rstrip("/")
        if name == MANIFEST:
            continue
        inside = paths.join(folder, name)
        if name in parts and paths.isdir(inside):
            found += [f"{name}/{f.rstrip('/')}" for f in paths.listdir(inside)
                      if f.rstrip("/") not in parts[name]]
        else:
            found.append(name)
    return found


def share_of(split: SplitConfig, part: str) -> float:
    """The share of the ids in `part` ('all' when the config does not split: every id)."""
    if part == "all":
        return 1.0
    return {"train": 1 - split.validation - split.test, "validation": split.validation,
            "test": split.test}[part]


def part_number(part: str) -> int:
    """The `part_of` number of a part folder's name ('all' when the config does not split)."""
    return PARTS.index(part) if part != "all" else 0


def output_parts(split: SplitConfig, read: Optional[np.ndarray] = None) -> list[str]:
    """The part folders an output holds: those with a share of the ids, those `split.column`
    holds (`read`: each sequence's part number), or 'all'."""
    if not split.by_sequence:  # no split, or one by time: windows are cut when loading
        return ["all"]
    if split.column is not None and read is not None:
        return [PARTS[p] for p in np.unique(read)]
    return [p for p in PARTS if share_of(split, p) > 0]


def build_manifest(config: PipelineConfig, source: dict, filled_values: dict,
                   parts: dict, statistics: Statistics, time_dtype: Optional[str]) -> dict:
    """The manifest of an output: `source` holds where, files, rows, sequences, streamed and
    empty_sequences_dropped; `parts` each part's `write_part_index` summary; `statistics`
    what the records were prepared with; `time_dtype` the NumPy dtype of their times."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "seqpipe_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(), "config_sha256": config_hash(config),
        "source": source, "filled_values": filled_values,
        "element_spec": _named(batch_structure(config)),
        "record": record_layout(config),
        "statistics": statistics.to_dict(), "time_dtype": time_dtype,
        "parts": parts,
    }


def write_manifest(folder: str, manifest: dict) -> None:
    paths.write_bytes(paths.join(folder, MANIFEST), json.dumps(manifest, indent=2).encode())


def _version() -> str:
    from seqpipe import __version__

    return __version__


def _named(structure) -> dict:
    """The batch structure with its parts named, for JSON."""
    if isinstance(structure, tuple):
        return dict(zip(("x", "y", "sample_weight"), structure))
    return {"x": structure}


def record_layout(config: PipelineConfig) -> dict:
    """What each record holds, for readers that are not seqpipe."""
    layout = {"length": "int64: kept timesteps", "id": "bytes: the sequence id as text"}
    for name, spec in config.inputs.items():
        width = spec.width
        what = ("int32 ids as floats, one per timestep" if spec.categorical else
                f"float32 list, length x {width} ({', '.join(spec.columns)}"
                f"{', time delta' if spec.time_delta else ''}"
                f"{', missing flags' if spec.missing_indicators else ''}), timestep-major")
        layout[f"x/{name}"] = (what if spec.level == "timestep" else
                               f"float32 list of {width} ({', '.join(spec.columns)})")
    for name, output in config.outputs.items():
        kind = "int32 class ids as floats" if output.categorical else "float32"
        layout[f"y/{name}"] = (f"{kind}, `length` x {output.width} labels, NaN where missing"
                               if output.level == "timestep" else
                               f"{kind}: {output.width} label(s), NaN when missing")
    if config.source.time_column:
        layout["time"] = "bytes: the kept timesteps' times, raw, of dtype `time_dtype`"
    return layout


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
    if "statistics" in manifest:  # what every record was scaled and encoded with
        try:
            Statistics.from_dict(manifest["statistics"], f"{file} (its statistics)",
                                 "Materialize again rather than edit the manifest")
        except ConfigError as e:
            raise DataError(str(e)) from None
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


def frozen_differences(written: dict, wanted: dict) -> list[str]:
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
