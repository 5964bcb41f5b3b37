"""Regroup: a source whose sequences are spread over row groups, sorted once into a cache.

Time-partitioned data (a file per day, each holding a slice of every sequence) cannot be
streamed a row group at a time. Rather than grouping it whole in memory at every build, it
is sorted by (id, time) once, out of core, by DuckDB (`memory_limit`, spilling to disk),
into one Parquet file whose row groups hold disjoint id ranges; the pipeline then streams
that file like any sorted source.

The cache lives in `source.cache.dir`, one folder per source: `<source>-<content>`, where
`<source>` hashes the source's resolved absolute path and the columns read, and `<content>`
also every file's fingerprint (`seqpipe.parquet.footers.Fingerprint`). An unchanged source finds
its folder and reuses it once its sorted file is checked to be the one written (size and
footer); a changed one builds a new folder and removes the stale one, unless a live process
still reads it. A folder is written under a temporary name and renamed when complete, so a
half-written cache never looks complete, and two processes building the same cache each
write their own and the second rename finds the first's in place.

Every process that streams a copy holds a shared lock on its `lease` file for as long as
it may read it; a stale copy is removed only under an exclusive lock, which it cannot get
while any reader holds one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Optional

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from seqpipe._internal import paths
from seqpipe._internal.progress import Progress
from seqpipe.config import CacheConfig, PipelineConfig
from seqpipe.errors import ConfigError, DataError
from seqpipe.parquet.footers import fingerprint
from seqpipe.parquet.source import PARQUET, SourceFiles, open_source

logger = logging.getLogger("seqpipe")
FORMAT = 1
DATA, DONE, LEASE = "sorted.parquet", "complete.json", "lease"
ROW_GROUP_ROWS = 1 << 20  # rows per row group of the cache: a streamed read's unit


@dataclasses.dataclass(frozen=True)
class Cache:
    """Where a source's regrouped copy is, or would be."""

    folder: Path
    stale: tuple[Path, ...]  # earlier copies of the same source, from other contents

    @property
    def complete(self) -> bool:
        return (self.folder / DONE).exists()

    @property
    def data(self) -> Path:
        return self.folder / DATA


def locate(files: SourceFiles, config: PipelineConfig) -> Cache:
    """The cache folder of `files` as `config` reads them (no data is read)."""
    cache = config.source.regroup or CacheConfig()
    root = Path(cache.dir).expanduser() if cache.dir else paths.user_cache("seqpipe",
                                                                            "regrouped")
    columns = sorted((f.name, str(f.type)) for f in files.schema)  # as a set: order is free
    # Resolved, so that two projects whose configs both say `path: data` never share a copy.
    where = os.path.realpath(os.path.expanduser(str(files.where)))
    source = _digest({"where": where, "columns": columns, "format": FORMAT})[:16]
    content = _digest({"source": source, "files": {
        path: dataclasses.asdict(fp) for path, fp in sorted(files.fingerprints.items())},
        "id": config.source.id_column, "time": config.source.time_column})[:16]
    folder = root / f"{source}-{content}"
    stale = tuple(p for p in root.glob(f"{source}-*")
                  if p != folder and not p.name.startswith("."))
    return Cache(folder, stale)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def regrouped(files: SourceFiles, config: PipelineConfig,
              progress: Optional[bool] = None) -> SourceFiles:
    """The regrouped copy of `files`, built first when there is none for their content.

    Args:
      files: a long-layout source whose rows of one sequence are spread over row groups.
      config: the pipeline config (`source.cache`).
      progress: show progress on stderr (a bar on a terminal, a line every 10 s elsewhere);
        None: only on a terminal.

    Returns:
      The sorted copy, opened as a source of its own (its schema checked like any other).

    Raises:
      DataError: the sort failed (DuckDB's message is given), or the cache folder cannot be
        written.
    """
    cache = locate(files, config)
    lease = _lease(cache) if cache.complete else None
    if lease is not None:
        logger.info("seqpipe streams %s from its regrouped copy in %s", files.where,
                    cache.folder)
    else:
        _build(files, config, cache, progress)
        lease = _lease(cache)
        if lease is None:
            raise DataError(f"the regrouped copy of {files.where} in {cache.folder} could "
                            f"not be used right after it was written (see the warning above); "
                            f"remove {cache.folder} and build again.")
    for old in cache.stale:  # the same source, as it was before it changed
        _remove_unless_read(old)
    try:
        copy = open_source(dataclasses.replace(
            config, source=dataclasses.replace(config.source, path=str(cache.data))))
    except DataError as e:  # found in the copy's footers: say whose copy it is
        raise DataError(str(e).replace(str(cache.data), f"{files.where} (its regrouped "
                                                        f"copy, {cache.data})")) from e
    # Read as the source's own types (DuckDB writes timestamps in microseconds, say), so
    # that the copy gives the values the source gives.
    dataset = pads.dataset(list(copy.files), schema=files.schema, format=PARQUET,
                           filesystem=copy.dataset.filesystem)
    return dataclasses.replace(copy, dataset=dataset, schema=files.schema, lease=lease)


def _lease(cache: Cache) -> Optional[IO]:
    """A shared lock on a complete copy that holds until the returned file is closed (the
    source that streams it keeps it open); None when the copy is gone, incomplete, or not
    the file it was written as (a damaged copy is removed, to be built again)."""
    try:
        held = open(cache.folder / LEASE, "a+")  # held while the copy is read
    except OSError:
        return None
    fcntl.flock(held, fcntl.LOCK_SH)  # waits while a cleaner removes the folder
    problem = _damage(cache)
    if problem is None:
        return held
    held.close()
    if problem != "incomplete":
        logger.warning("seqpipe: the regrouped copy in %s is damaged (%s); it is built again",
                       cache.folder, problem)
        _remove_unless_read(cache.folder)
    return None


def _damage(cache: Cache) -> Optional[str]:
    """What is wrong with a copy's sorted file, or None when it is as written."""
    try:
        written = json.loads((cache.folder / DONE).read_text())
    except (OSError, ValueError):
        return "incomplete"
    try:
        found = fingerprint(pafs.LocalFileSystem(), str(cache.data))
    except DataError as e:
        return str(e)
    if written.get("bytes") != found.size or written.get("footer") != found.footer:
        return (f"{DATA} holds {found.size:,} bytes, {written.get('bytes')!r} were written, "
                f"or its footer changed")
    return None


def _remove_unless_read(folder: Path) -> None:
    """Removes a copy unless a live process holds its lease (it may be reading it)."""
    try:
        lock = open(folder / LEASE, "a+")
    except OSError:
        return  # gone already
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            logger.info("seqpipe: %s may still be read (a live pipeline holds its lease); "
                        "left in place", folder)
            return
        shutil.rmtree(folder, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Removes a half-written copy. Right after a Ctrl-C, DuckDB's threads may still write
    a file into it while it is being removed, which leaves the folder behind: try again
    for a few seconds."""
    deadline = time.monotonic() + 5
    shutil.rmtree(folder, ignore_errors=True)
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        shutil.rmtree(folder, ignore_errors=True)


def _build(files: SourceFiles, config: PipelineConfig, cache: Cache,
           progress: Optional[bool]) -> None:
    limit = (config.source.regroup or CacheConfig()).memory_limit
    temporary = cache.folder.parent / f".{cache.folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir(parents=True)
    except OSError as e:
        raise DataError(f"cannot write the regrouping cache in {cache.folder.parent} ({e}); "
                        f"set source.cache.dir to a writable folder, or source.cache: false "
                        f"to group the source in memory") from e
    started = time.monotonic()
    rows = sum(f.count_rows() for f in files.dataset.get_fragments())
    logger.warning("seqpipe regroups %s (%s rows in %d files, sequences spread over row "
                   "groups) into %s, once, within %s of memory", files.where, f"{rows:,}",
                   len(files.files), cache.folder, limit)
    try:
        _sort(files, config, temporary, limit, rows, progress)
        written = fingerprint(pafs.LocalFileSystem(), str(temporary / DATA))
        (temporary / LEASE).touch()
        (temporary / DONE).write_text(json.dumps({
            "format": FORMAT, "source": str(files.where), "files": list(files.files),
            "rows": rows, "bytes": written.size, "footer": written.footer,
            "seconds": round(time.monotonic() - started, 3)}, indent=1))
        try:
            os.rename(temporary, cache.folder)
        except OSError:
            if not (cache.folder / DONE).exists():  # not another process's finished copy
                raise
    finally:
        _remove(temporary)
    logger.warning("seqpipe regrouped %s in %.1f s; later builds stream from %s",
                   files.where, time.monotonic() - started, cache.folder)


def _sort(files: SourceFiles, config: PipelineConfig, folder: Path, limit: str, rows: int,
          progress: Optional[bool]) -> None:
    """Sorts the source's columns by (id, time) into `folder`/DATA with DuckDB."""
    try:
        import duckdb
    except ImportError as e:  # a dependency; an environment without it can still group
        raise ConfigError(f"regrouping {files.where} needs DuckDB ({e}): pip install duckdb, "
                          f"or set source.cache: false to group it in memory") from e
    source = config.source
    local = [str(Path(f).resolve()) for f in files.files]
    # Without a time column a sequence's timesteps are in source order: files in the
    # source's order, rows in file order.
    keys = [_quoted(source.id_column or "")] + (
        [_quoted(source.time_column)] if source.time_column else
        [f"list_position({_strings(local)}, filename)", "file_row_number"])
    hive = files.dataset.partitioning is not None
    query = (f"COPY (SELECT {', '.join(_quoted(n) for n in files.schema.names)} "
             f"FROM read_parquet({_strings(local)}, hive_partitioning = {str(hive).lower()}"
             f"{'' if source.time_column else ', filename = true, file_row_number = true'}) "
             f"ORDER BY {', '.join(keys)}) TO {_string(str(folder / DATA))} "
             f"(FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
    connection = duckdb.connect()
    try:
        connection.execute(f"SET memory_limit = {_string(limit)}")
        connection.execute(f"SET temp_directory = {_string(str(folder / 'spill'))}")
        connection.execute("SET preserve_insertion_order = false")
        connection.execute(f"SET threads = {max(1, os.cpu_count() or 1)}")
        with _Watch(connection, rows, progress):
            connection.execute(query)
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None  # Ctrl-C: the caller removes the half-written copy
    except RuntimeError as e:  # how DuckDB reports a Ctrl-C that Python caught first
        if "interrupted" in str(e).lower():
            raise KeyboardInterrupt from None
        raise
    except duckdb.Error as e:
        raise DataError(f"regrouping {files.where} failed: {' '.join(str(e).split())}. "
                        f"Raise source.cache.memory_limit, free disk space in "
                        f"{folder.parent}, or set source.cache: false.") from e
    finally:
        connection.close()
    shutil.rmtree(folder / "spill", ignore_errors=True)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _strings(texts: list) -> str:
    return "[" + ", ".join(_string(t) for t in texts) + "]"


class _Watch:
    """Shows the sort's progress, polling DuckDB's estimate of how much of the query is done,
    as rows done out of the source's, with the rate and the time left."""

    def __init__(self, connection, rows: int, show: Optional[bool]) -> None:
        self.connection, self.rows = connection, rows
        self.bar = Progress(rows, "rows")
        if show is None:
            show = self.bar.tty
        self.show = show
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="seqpipe-regroup-progress",
                                        daemon=True)

    def __enter__(self) -> _Watch:
        if self.show:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.show:
            self._stop.set()
            self._thread.join()
            if exc[0] is None:
                self.bar.update(self.rows - self.bar.done)
                self.bar.close()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            try:
                share = self.connection.query_progress()
            except Exception:  # progress is advice: the sort goes on without it
                return
            if share is not None and share >= 0:
                done = int(self.rows * min(share, 100.0) / 100)
                if done > self.bar.done:
                    self.bar.update(done - self.bar.done)


def status(files: SourceFiles, config: PipelineConfig, whole_because: Optional[str]) -> str:
    """How the source will be read, in words, for `inspect` and `validate`."""
    if whole_because is None:
        return "streams by row group (row groups hold disjoint id ranges)"
    if not can_regroup(files, config):
        return f"grouped whole, in memory: {whole_because}"
    cache = locate(files, config)
    if cache.complete:
        return f"streams from its regrouped copy in {cache.folder} ({whole_because})"
    return (f"needs regrouping, once, into {cache.folder} (source.cache; within "
            f"{(config.source.regroup or CacheConfig()).memory_limit}): {whole_because}")


def can_regroup(files: SourceFiles, config: PipelineConfig) -> bool:
    """Whether this source is regrouped rather than grouped in memory: long layout with an
    id column, `source.cache` on, and local files (DuckDB reads them directly)."""
    source = config.source
    return (source.regroup is not None and source.layout == "long" and bool(source.id_column)
            and _local(files))


def _local(files: SourceFiles) -> bool:
    import pyarrow.fs as pafs

    return isinstance(files.dataset.filesystem, pafs.LocalFileSystem)
