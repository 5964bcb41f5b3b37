"""Paths: where materialized outputs live, a local folder or a URI, handled alike.

Local paths use the standard library, so reading a manifest does not import TensorFlow.
URIs (gs://, hdfs://, file://; s3:// with tensorflow-io) go through TensorFlow's file
systems: the ones the TFRecord readers on the training side use, so an output seqpipe can
write is one training can read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from seqpipe._internal.lazy import tensorflow
from seqpipe.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]


def user_cache(*names: str) -> Path:
    """A folder under the user's cache directory ($XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, *names)


def is_uri(path: PathLike) -> bool:
    return "://" in str(path)


def join(folder: PathLike, *names: str) -> str:
    return "/".join([str(folder).rstrip("/"), *names])


def _gfile():
    tf = tensorflow()

    return tf.io.gfile


def exists(path: PathLike) -> bool:
    return _gfile().exists(str(path)) if is_uri(path) else os.path.exists(path)


def isdir(path: PathLike) -> bool:
    return _gfile().isdir(str(path)) if is_uri(path) else os.path.isdir(path)


def makedirs(path: PathLike) -> None:
    if is_uri(path):
        _gfile().makedirs(str(path))
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
    """The names in a folder, sorted."""
    return sorted(_gfile().listdir(str(path)) if is_uri(path) else os.listdir(path))


def read_text(path: PathLike) -> str:
    if is_uri(path):
        with _gfile().GFile(str(path)) as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_bytes(path: PathLike, data: bytes) -> None:
    if is_uri(path):
        with _gfile().GFile(str(path), "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def remove_tree(path: PathLike) -> None:
    """Removes a folder and everything in it, if it exists."""
    if is_uri(path):
        if _gfile().exists(str(path)):
            _gfile().rmtree(str(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def temporary_beside(out: PathLike) -> str:
    """A fresh hidden folder beside `out`, on the same file system, for writing an output
    that appears at `out` only when complete (`publish`). Locally, leftovers of killed runs
    for the same `out` are removed first."""
    out = str(out).rstrip("/")
    parent, _, name = out.rpartition("/") if is_uri(out) else (
        os.path.dirname(out) or ".", "/", os.path.basename(out))
    prefix = f".{name}.seqpipe-tmp-"
    if is_uri(out):
        temp = join(parent, prefix + uuid.uuid4().hex[:12])
    else:
        os.makedirs(parent, exist_ok=True)
        for stale in os.listdir(parent):
            pid = stale[len(prefix):] if stale.startswith(prefix) else ""
            if pid.isdigit() and not _alive(int(pid)):
                _remove_if_ours(os.path.join(parent, stale))
        temp = os.path.join(parent, f"{prefix}{os.getpid()}")
        _remove_if_ours(temp)
    makedirs(temp)
    write_bytes(join(temp, TEMPORARY_MARKER), b"")
    return temp


# Every temporary folder seqpipe writes holds this file; only such folders are ever removed
# as leftovers, whatever their name.
TEMPORARY_MARKER = ".seqpipe-temporary"


def _remove_if_ours(folder: str) -> None:
    if os.path.isfile(os.path.join(folder, TEMPORARY_MARKER)):
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(out: PathLike) -> None:
    """Raises a DataError, before any work, when `out` cannot become an output folder: it
    is a file, a file stands in its path, or it is the working directory."""
    out = str(out).rstrip("/")
    if is_uri(out):
        return
    if os.path.isfile(out):
        raise DataError(f"--out {out} is a file, and materialize writes a folder; choose "
                        f"another --out (--overwrite replaces only a folder)")
    if os.path.abspath(out) == os.getcwd() or os.path.dirname(os.path.abspath(out)) == \
            os.path.abspath(out):
        raise DataError(f"--out {out} is the working directory or a root folder; choose a "
                        f"folder of its own, such as {os.path.join(out, 'materialized')}")
    above = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise DataError(f"--out {out} cannot be made: {above} is a file, not a folder; "
                        f"choose another --out")


@contextlib.contextmanager
def output_lock(out: PathLike) -> Iterator[None]:
    """Holds a lock file beside a local `out` while an output is written there, so that a
    second run into the same `out` fails at once instead of one run silently replacing the
    other's output. A lock left by a run that was killed is taken over. Object stores have
    no atomic create to lock with: there, runs into one `out` must be kept apart by hand."""
    out = str(out).rstrip("/")
    if is_uri(out):
        yield
        return
    lock = os.path.join(os.path.dirname(out) or ".", f".{os.path.basename(out)}.seqpipe-lock")
    _take(lock, out)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def _take(lock: str, out: str) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and _alive(holder):
                raise DataError(
                    f"another seqpipe run (process {holder}) is writing {out} now (it holds "
                    f"{lock}); wait for it to finish, or choose another --out") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return
    raise DataError(f"could not lock {out}: {lock} keeps reappearing; is another run "
                    f"starting? Try again")


def _holder(lock: str):
    try:
        with open(lock) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def publish(temp: str, out: PathLike, overwrite: bool) -> None:
    """Moves the finished `temp` to `out`. An empty folder at `out` is used; anything else
    there is replaced only when `overwrite` is set (the caller has checked that it may be).
    Locally the rename is atomic; on object stores it is a copy, and `out` is briefly
    absent."""
    out = str(out).rstrip("/")
    rename = _gfile().rename if is_uri(out) else os.rename
    marker = join(temp, TEMPORARY_MARKER)
    if exists(marker):  # the output is no longer temporary
        _gfile().remove(marker) if is_uri(marker) else os.remove(marker)
    if exists(out) and isdir(out) and not listdir(out):
        _gfile().rmtree(out) if is_uri(out) else os.rmdir(out)  # rmdir: only if still empty
    if not exists(out):
        rename(temp, out)
        return
    if not overwrite:
        raise DataError(f"{out} appeared while this run was writing (another run finished "
                        f"first?); it was left as it is and this run's output dropped. Pass "
                        f"--overwrite to replace it, or choose another --out")
    old = f"{temp}-old"
    rename(out, old)
    rename(temp, out)
    remove_tree(old)
