"""Beam: the preprocessing step as an Apache Beam pipeline, when one machine cannot group.

`seqpipe materialize CONFIG --out DIR --runner R` writes what the local materialize writes
(`seqpipe.materialize`): the same records, index and manifest, with the rows of a sequence
anywhere in any number of files. Grouping them is a distributed group-by:

    row groups (footers read here, on the launching machine)
      -> the rows of each id in each row group, as Arrow IPC      (read on the workers)
      -> GroupByKey(id)
      -> batches of whole sequences -> the local path's grouping, ordering, truncation,
         filling and record encoding (`group_sequences`, `encode_for_parts`), prepared
         with the statistics (`seqpipe.transform`) that a combiner over the same batches
         computed first from the train part (`statistics.Tally`), when the config scales
         or has categories
      -> GroupByKey((part, shard)) -> one TFRecord file per shard, records in id order
      -> each part's index.parquet and the manifest, from the shards' summaries

Sequences go to shards by a hash of their id: shards are balanced and do not depend on the
order in which workers see the rows. The shard count per part is estimated from the
footers' uncompressed sizes, so that a shard holds about `shard_bytes`.

Everything is written into a temporary folder beside DIR and renamed to DIR once the
pipeline has finished, as locally. Paths may be anything pyarrow reads (sources) and
TensorFlow's file system writes (DIR): local paths, gs://, hdfs://. Workers need seqpipe
installed (on Dataflow, say, pass `--requirements_file` or a custom container).

Only this module imports apache_beam, and only when a pipeline is built or run, so the
module itself imports without it: `pip install "seqpipe[beam]"`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqpipe import tuning
from seqpipe._internal import paths
from seqpipe._internal.lazy import tensorflow
from seqpipe.batches.kinds import kind_of
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import ConfigError, DataError, SeqpipeError
from seqpipe.index import missing_labels, truncate
from seqpipe.materialized.manifest import (
    MANIFEST,
    build_manifest,
    check_written,
    output_parts,
    part_number,
    share_of,
    write_manifest,
)
from seqpipe.materialized.write import (
    SHARD_BYTES,
    check_out,
    check_storable,
    encode_for_parts,
    output_folder,
    write_part_index,
)
from seqpipe.parquet.grouping import check_no_nulls, group_sequences, id_runs
from seqpipe.parquet.source import SourceFiles, SourceTable, open_source
from seqpipe.parquet.stream import RowGroup, read_row_group
from seqpipe.split import PARTS, held_back, id_hash, parts_of, timesteps_before
from seqpipe.statistics import Statistics, Tally, needed
from seqpipe.transform import Transform, changes_values

logger = logging.getLogger("seqpipe")
SHARD_SEED = 0x5E9_51A2D


def materialize_on_beam(config: Union[PipelineConfig, Any], out: Union[str, os.PathLike],
                        runner: str = "DirectRunner", pipeline_args: Sequence[str] = (),
                        overwrite: bool = False, shard_bytes: int = SHARD_BYTES) -> dict:
    """Runs materialize as a Beam pipeline on `runner` and returns the manifest.

    Args:
      config: the pipeline config (a `PipelineConfig`, mapping or YAML path).
      out: the output folder; it must not exist unless `overwrite`.
      runner: a Beam runner name: DirectRunner, DataflowRunner, FlinkRunner, ...
      pipeline_args: more Beam pipeline options, as on a command line
        (`--project=...`, `--direct_num_workers=2`).
      overwrite: replace an existing `out`, once the new output is complete.
      shard_bytes: about this many bytes of records per shard file.

    Raises:
      SeqpipeError: bad config or data. Schemas are checked here, from the footers, before
        the pipeline starts; data errors found on the workers (say, two rows of a sequence
        at the same time) fail the pipeline and are raised here with their message.
    """
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ConfigError(f"--runner needs Apache Beam, which is not installed ({e}): "
                          f"pip install 'seqpipe[beam]'") from e

    config = config if isinstance(config, PipelineConfig) else load_config(config)
    if not config.source.id_column:
        raise ConfigError("materialize on Beam needs source.id_column: the rows of a sequence "
                          "are grouped by their id. Set source.id_column.")
    if config.split.column is not None:
        raise ConfigError(
            f"materialize on Beam does not read split.column ({config.split.column!r}) yet: "
            f"run it without --runner (it streams with bounded memory), or split by id "
            f"(split.validation, split.test).")
    check_storable(config)
    out = output_folder(out, config)
    check_out(out, overwrite)
    files = open_source(config)
    pieces = _row_groups(files)
    source_bytes = sum(p.fragment.row_groups[0].total_byte_size for p in pieces)
    parts = output_parts(config.split)
    shards = {part: max(1, math.ceil(source_bytes * share_of(config.split, part) / shard_bytes))
              for part in parts}
    facts = {"where": config.source.path, "files": len(files.files), "runner": runner}
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args), runner=runner))
    except ValueError as e:  # Beam's word for a runner it does not know
        raise ConfigError(f"--runner {runner!r}: {' '.join(str(e).split())}") from e
    with paths.output_lock(out):
        temp = paths.temporary_beside(out)
        for part in parts:
            paths.makedirs(paths.join(temp, part))
        try:
            _build(pipeline, config, files.schema, pieces, shards, temp, facts)
            _run_watched(pipeline, temp, runner)
            paths.remove_tree(paths.join(temp, STARTED))
            manifest = json.loads(paths.read_text(paths.join(temp, MANIFEST)))
            check_written(manifest, sum(piece.rows for piece in pieces),
                          config.source.layout, f"the Beam pipeline on {runner}")
            check_out(out, overwrite)  # again: the folder may have changed while this ran
            paths.publish(temp, out, overwrite)
        except BaseException as e:
            paths.remove_tree(temp)
            found = _seqpipe_error(e)
            if found is not None and found is not e:
                raise found from e
            if found is None and isinstance(e, Exception):
                detail = " ".join(str(e).split())[:500]
                raise DataError(
                    f"the Beam pipeline on {runner} failed outside seqpipe "
                    f"({type(e).__name__}: {detail}); nothing was written to {out}. Check the "
                    f"runner's options and logs, or run without --runner to materialize "
                    f"locally.") from e
            raise
    return manifest


STARTED = ".workers-started"  # a folder in the temporary output: one file per worker process
_ANNOUNCED: set = set()  # temporary outputs this worker process has announced itself in


def _run_watched(pipeline, temp: str, runner: str) -> None:
    """Runs the pipeline (as `with pipeline:` does) in a thread of its own, so that Ctrl-C
    reaches this one at once and cancels the run, and says so when no worker has started
    after `tuning.TUNING.beam_silent_seconds`: a worker pool or cluster whose workers
    cannot start (a Python without Beam or seqpipe) makes a runner wait forever."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = pipeline.run()
            outcome["result"].wait_until_finish()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, name="seqpipe-beam", daemon=True)
    thread.start()
    started, warned = time.monotonic(), False
    try:
        while thread.is_alive():
            thread.join(0.5)
            silent = time.monotonic() - started
            if not warned and silent > tuning.TUNING.beam_silent_seconds and \
                    not paths.exists(paths.join(temp, STARTED)):
                warned = True
                logger.warning(
                    "seqpipe: the Beam pipeline on %s has run %.0f s and no worker has started "
                    "reading yet. If the runner uses a worker pool or a cluster, check that its "
                    "workers run a Python with apache-beam and seqpipe installed (their logs say "
                    "why they fail); Ctrl-C stops this run.", runner, silent)
    except KeyboardInterrupt:
        result = outcome.get("result")
        if result is not None:
            with contextlib.suppress(Exception):
                result.cancel()
        raise
    if "error" in outcome:
        raise outcome["error"]


def _announce(temp: str) -> None:
    """Marks, once per worker process, that a worker started reading (see `_run_watched`)."""
    if temp not in _ANNOUNCED:
        _ANNOUNCED.add(temp)
        folder = paths.join(temp, STARTED)
        paths.makedirs(folder)
        paths.write_bytes(paths.join(folder, f"{socket.gethostname()}-{os.getpid()}"), b"")


def _row_groups(files: SourceFiles) -> list[RowGroup]:
    """Every row group that holds rows: the pieces Beam's workers read."""
    pieces = [RowGroup(piece, fragment.path, piece.row_groups[0].id, piece.row_groups[0].num_rows,
                   built_from=files.fingerprints[fragment.path])
              for fragment in files.dataset.get_fragments()
              for piece in fragment.split_by_row_group() if piece.row_groups[0].num_rows]
    if not pieces:
        raise DataError(f"no sequences: {files.where} has no rows")
    return pieces


def _build(p, config: PipelineConfig, schema: pa.Schema, pieces: list, shards: dict,
           temp: str, facts: dict) -> None:
    """The pipeline's stages (see the module docstring)."""
    import apache_beam as beam

    batches = (
        p
        | "Row groups" >> beam.Create(pieces, reshuffle=True)
        | "Rows by id" >> beam.FlatMap(rows_by_id, config, schema, temp)
        | "Group by id" >> beam.GroupByKey()
        | "Batch sequences" >> beam.BatchElements(min_batch_size=1,
                                                  max_batch_size=tuning.TUNING.beam_sequences_per_batch))
    statistics: Any = Statistics()
    if needed(config):
        statistics = beam.pvalue.AsSingleton(
            batches | "Statistics" >> beam.CombineGlobally(_statistics_fn(config, schema)))
    encoded = batches | "Group, truncate, encode" >> beam.FlatMap(
        encode_batch, config, schema, shards, statistics).with_outputs("counts",
                                                                      main="records")
    summaries = (
        encoded.records
        | "Group by shard" >> beam.GroupByKey()
        | "Write shards" >> beam.Map(write_shard, temp))
    counts = encoded.counts | "Add counts" >> beam.CombineGlobally(add_counts)
    (p
     | "Once" >> beam.Create([None])
     | "Index and manifest" >> beam.Map(
         write_index_and_manifest, beam.pvalue.AsList(summaries),
         beam.pvalue.AsSingleton(counts), config, list(shards), temp, facts, statistics))


def rows_by_id(piece: RowGroup, config: PipelineConfig, schema: pa.Schema,
               temp: str) -> Iterator[tuple[Any, bytes]]:  # (key, value): GroupByKey checks
    """The rows of each id in one row group: (id, one Arrow IPC record batch)."""
    _announce(temp)
    table = read_row_group(piece, schema)
    id_name = config.source.id_column or ""  # materialize_on_beam requires one
    check_no_nulls(table[id_name], "source.id_column", id_name, piece.where)
    starts = id_runs(table[id_name])
    if starts is None:
        table = table.take(pc.sort_indices(table[id_name]))
        starts = id_runs(table[id_name])
    if starts is None:
        raise AssertionError("ids not in runs after sorting (a seqpipe bug; please report it)")
    batch = table.combine_chunks().to_batches()
    if not batch:
        return
    batch, ids = batch[0], table[id_name].combine_chunks()
    ends = np.append(starts[1:], len(ids))
    # IPC carries only the rows of the slice; pickling a slice would carry its whole buffers.
    for key, a, b in zip(ids.take(pa.array(starts)).to_pylist(), starts.tolist(),
                         ends.tolist()):
        yield key, batch.slice(a, b - a).serialize().to_pybytes()


def _grouped(batch: list, config: PipelineConfig, schema: pa.Schema):
    """A batch of whole sequences' rows (Arrow IPC), grouped as the local path groups them."""
    table = pa.Table.from_batches(
        [pa.ipc.read_record_batch(piece, schema) for _, pieces in batch for piece in pieces],
        schema=schema)
    return group_sequences(SourceTable(table, config.source.path or "", ()), config,
                           chunk=True)


def _statistics_fn(config: PipelineConfig, schema: pa.Schema):
    """Beam's combiner of `statistics.Tally`s: the statistics a local pipeline of the train
    part computes (every sequence without a split), from batches of whole sequences."""
    import apache_beam as beam

    kind = kind_of(config)

    class StatisticsFn(beam.CombineFn):
        def create_accumulator(self):
            return Tally(config)

        def add_input(self, tally, batch):
            chunk, _ = _grouped(batch, config, schema)
            if len(chunk):
                train = (parts_of(config.split, chunk.ids, chunk.parts) == PARTS.index("train")
                         if config.split.enabled else np.ones(len(chunk), dtype=bool))
                steps = kind.counted(config, chunk.offsets, train, _before(chunk, config))
                tally.add(chunk, steps.skipped, steps.length, steps.counted)
            return tally

        def merge_accumulators(self, tallies):
            tallies = iter(tallies)
            first = next(tallies)
            for tally in tallies:
                first.merge(tally)
            return first

        def extract_output(self, tally):
            return tally.result(f"{kind.statistics_over(config)} of {config.source.path}")

    return StatisticsFn()


def _before(chunk, config: PipelineConfig) -> Optional[np.ndarray]:
    """Split by time, each sequence's timesteps before its held-out ones; else None."""
    before = (None if config.split.time_cutoff is None else
              timesteps_before(chunk.times, chunk.offsets, config.split,
                               config.source.time_column or "", config.source.path or ""))
    return held_back(config.split, chunk.lengths, before)


def encode_batch(batch: list, config: PipelineConfig, schema: pa.Schema,
                 shards: dict, statistics: Statistics) -> Iterator:
    """Groups a batch of whole sequences as the local path does, prepares them with the
    statistics, and encodes their records.

    Yields ((part, shard), (id, record, kept, length, valid)) per sequence, and the batch's
    counts (rows, dropped, filled, missing labels, the dtype of its times) as the tagged
    output 'counts'."""
    from apache_beam.pvalue import TaggedOutput

    chunk, counts = _grouped(batch, config, schema)
    missing = {}
    if len(chunk):
        kept = truncate(chunk.offsets, config.padding)
        if changes_values(config):
            every = np.ones(len(chunk), dtype=bool)
            own = kind_of(config).counted(config, chunk.offsets, every, _before(chunk, config))
            chunk, _ = Transform(config, statistics, kept.start - chunk.offsets[:-1], every,
                                 (own.skipped, own.length)).apply(0, chunk)
        encoded = encode_for_parts(chunk, kept.length, config)
        names = list(config.outputs)
        for part in shards:
            mine = encoded.part == part_number(part)
            missing[part] = {name: [int(v) for v in pair] for name, pair in missing_labels(
                chunk.present, mine, chunk.lengths, config.levels).items()}
        shard = id_hash(chunk.ids, SHARD_SEED)
        for i, (key, record) in enumerate(zip(chunk.ids.tolist(), encoded.records)):
            part = _part_name(int(encoded.part[i]), shards)
            yield ((part, int(shard[i] % np.uint64(shards[part]))),
                   (key, record, int(encoded.kept[i]), int(encoded.lengths[i]),
                    tuple(int(encoded.valid[name][i]) for name in names),
                    -1 if encoded.before_cutoff is None else int(encoded.before_cutoff[i])))
    yield TaggedOutput("counts", {
        "rows": counts.rows, "empty_sequences_dropped": counts.empty_sequences_dropped,
        "filled_values": dict(counts.filled_values), "missing_labels": missing,
        "time_dtype": chunk.times.dtype.str if chunk.times is not None else None})


def _part_name(number: int, shards: dict) -> str:
    return "all" if "all" in shards else PARTS[number]


def add_counts(counts: Iterable[dict]) -> dict:
    """Sums the counts of many batches (Beam's combiner: order does not matter)."""
    total: dict[str, Any] = {"rows": 0, "empty_sequences_dropped": 0, "filled_values": {},
                             "missing_labels": {}, "time_dtype": None}
    for c in counts:
        total["time_dtype"] = total["time_dtype"] or c["time_dtype"]
        total["rows"] += c["rows"]
        total["empty_sequences_dropped"] += c["empty_sequences_dropped"]
        for key, n in c["filled_values"].items():
            total["filled_values"][key] = total["filled_values"].get(key, 0) + n
        for part, outputs in c["missing_labels"].items():
            into = total["missing_labels"].setdefault(part, {})
            for name, (m, t) in outputs.items():
                before = into.get(name, (0, 0))
                into[name] = [before[0] + m, before[1] + t]
    return total


def write_shard(item: tuple, temp: str) -> dict:
    """Writes one shard's records in id order; returns what the part's index needs."""
    tf = tensorflow()

    (part, shard), rows = item
    rows = sorted(rows, key=lambda row: row[0])
    name = f"part-{shard:05d}.tfrecord"
    with tf.io.TFRecordWriter(paths.join(temp, part, name)) as writer:
        for row in rows:
            writer.write(row[1])
    return {"part": part, "shard": shard, "name": name, "ids": [r[0] for r in rows],
            "kept": [r[2] for r in rows], "lengths": [r[3] for r in rows],
            "valid": [r[4] for r in rows], "before": [r[5] for r in rows],
            "bytes": sum(len(r[1]) for r in rows)}


def write_index_and_manifest(_, summaries: list, counts: dict, config: PipelineConfig,
                             parts: list, temp: str, facts: dict,
                             statistics: Statistics) -> None:
    """The last step: every part's index.parquet, then manifest.json."""
    written = {}
    for part in parts:
        mine = sorted((s for s in summaries if s["part"] == part), key=lambda s: s["shard"])
        valid = np.array([v for s in mine for v in s["valid"]], dtype=np.int64).reshape(
            -1, len(config.outputs))
        missing = counts["missing_labels"].get(part, {})
        written[part] = write_part_index(
            paths.join(temp, part), config, np.array([i for s in mine for i in s["ids"]]),
            np.array([k for s in mine for k in s["kept"]], dtype=np.int64),
            np.array([n for s in mine for n in s["lengths"]], dtype=np.int64),
            {name: valid[:, j] for j, name in enumerate(config.outputs)},
            {name: missing.get(name, (0, 0)) for name in config.outputs},
            [s["name"] for s in mine], [len(s["ids"]) for s in mine],
            sum(s["bytes"] for s in mine),
            np.array([b for s in mine for b in s["before"]], dtype=np.int64)
            if config.split.time_cutoff is not None else None)
    sequences = sum(w["sequences"] for w in written.values())
    if not sequences:
        raise DataError(f"no sequences: every sequence in {facts['where']} is empty")
    source = {"where": facts["where"], "files": facts["files"], "rows": counts["rows"],
              "sequences": sequences, "streamed": False,
              "empty_sequences_dropped": counts["empty_sequences_dropped"],
              "grouped_by": f"Apache Beam ({facts['runner']})"}
    write_manifest(temp, build_manifest(config, source, counts["filled_values"], written,
                                        statistics, counts["time_dtype"]))


def _seqpipe_error(error: BaseException) -> Optional[SeqpipeError]:
    """The seqpipe error a failed pipeline carries: runners re-raise a worker's exception
    as its own type with the stage's name appended, or wrap it in their own."""
    seen = set()
    found: Optional[BaseException] = error
    while found is not None and id(found) not in seen:
        if isinstance(found, SeqpipeError):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


__all__ = ["materialize_on_beam"]
