"""Paths: where materialized outputs live, a local folder or a URI, handled alike.

Local paths use the standard library, so reading a manifest does not import TensorFlow.
URIs (gs://, hdfs://, file://; s3:// with tensorflow-io) go through TensorFlow's file
systems: the ones the TFRecord readers on the training side use, so an output seqpipe can
write is one training can read.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def is_uri(path: PathLike) -> bool:
    return "://" in str(path)


def join(folder: PathLike, *names: str) -> str:
    return "/".join([str(folder).rstrip("/"), *names])


def _gfile():
    import tensorflow as tf

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
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
        temp = os.path.join(parent, f"{prefix}{os.getpid()}")
        shutil.rmtree(temp, ignore_errors=True)
    makedirs(temp)
    return temp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(temp: str, out: PathLike) -> None:
    """Moves the finished `temp` to `out`, replacing what was there. Locally the rename is
    atomic; on object stores it is a copy, and `out` is briefly absent."""
    out = str(out).rstrip("/")
    rename = _gfile().rename if is_uri(out) else os.rename
    if not exists(out):
        rename(temp, out)
        return
    old = f"{temp}-old"
    rename(out, old)
    rename(temp, out)
    remove_tree(old)
