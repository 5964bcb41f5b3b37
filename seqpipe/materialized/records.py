"""Records: the materialized format, one `tf.train.Example` per sequence.

Each record holds a sequence after grouping, ordering, truncation and preparation
(filling, scaling, categorical ids: `seqpipe.transform`):

    length      int64_list [kept timesteps]
    id          bytes_list [the sequence id, as text]
    x/<input>   float_list: a timestep input's (length, k) matrix row by row, or a sequence
                input's k values; a categorical input's int32 ids, as floats (exact)
    y/<output>  float_list: a timestep output's `length` x k labels, or a sequence output's
                k; NaN where the label is missing (its weight is made when batching)
    time        bytes_list [the kept timesteps' times, raw little-endian, of the manifest's
                `time_dtype`], when the config has a time column

Flat value lists parse in one pass each, much faster than a `SequenceExample` with a
feature per timestep, and any TensorFlow job can read them with `tf.io.parse_example`
alone. Records are encoded here with NumPy (the protobuf wire format is simple and stable),
so writing does not build a protobuf object per sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Optional

import numpy as np

from seqpipe import tuning
from seqpipe._internal.lazy import tensorflow
from seqpipe.config import PipelineConfig
from seqpipe.errors import DataError
from seqpipe.parquet.sequences import Sequences, offsets_of


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _entry(key: str, feature: bytes) -> bytes:
    """One `Features.feature` map entry: key -> Feature."""
    return _field(1, _field(1, key.encode()) + _field(2, feature))


def floats(values: np.ndarray) -> bytes:
    """A `Feature` holding a packed float_list."""
    return _field(2, _field(1, values.astype("<f4", copy=False).tobytes()))


def int64s(*values: int) -> bytes:
    """A `Feature` holding a packed int64_list of non-negative integers."""
    return _field(3, _field(1, b"".join(_varint(v) for v in values)))


def bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))


def example(features: Mapping[str, bytes]) -> bytes:
    """A serialized `tf.train.Example` from name -> encoded `Feature`."""
    return _field(1, b"".join(_entry(k, v) for k, v in features.items()))


def encode_chunk(chunk: Sequences, local: np.ndarray, start: np.ndarray, kept: np.ndarray,
                 config: PipelineConfig) -> Iterator[bytes]:
    """The records of sequences `local` of a chunk.

    Args:
      chunk: grouped sequences.
      local: which sequences of the chunk to encode, in order.
      start: (len(local),) the first kept timestep of each, within the chunk.
      kept: (len(local),) the kept timesteps of each.
      config: the pipeline config.
    """
    timestep: dict[str, np.ndarray] = {}
    sequence: dict[str, np.ndarray] = {}
    for name, spec in config.inputs.items():
        values = chunk.features[name]
        if not spec.categorical:  # one (rows, k) matrix: each record holds rows of k values
            values = np.stack(values, axis=1)
        (timestep if spec.level == "timestep" else sequence)[f"x/{name}"] = values
    for name, output in config.outputs.items():
        labels, present = chunk.labels[name], chunk.present[name]
        labels = np.where(present[:, None] if labels.ndim == 2 else present, labels,
                          np.float32(np.nan))
        (timestep if output.level == "timestep" else sequence)[f"y/{name}"] = labels
    times = chunk.times if config.source.time_column else None
    texts = id_texts(chunk.ids[local])
    for k, (i, a, n) in enumerate(zip(local.tolist(), start.tolist(), kept.tolist())):
        features = {"length": int64s(n), "id": bytes_feature(texts[k])}
        for key, values in timestep.items():
            features[key] = floats(values[a:a + n])
        for key, values in sequence.items():
            features[key] = floats(values[i:i + 1])
        if times is not None:
            features["time"] = bytes_feature(times[a:a + n].tobytes())
        yield example(features)


def id_texts(ids: np.ndarray) -> np.ndarray:
    """Sequence ids as the UTF-8 text a record holds: `str` of each id, 7 -> b'7'."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype("S")  # digits: ASCII, converted in one NumPy pass
    # numpy's own char.encode runs per element too, and several times slower
    return np.array([text.encode() for text in ids.astype(str).tolist()], dtype=bytes)


def parse_spec(config: PipelineConfig) -> dict:
    """The `tf.io.parse_example` features of a record (imports TensorFlow)."""
    tf = tensorflow()

    spec = {"length": tf.io.FixedLenFeature([], tf.int64),
            "id": tf.io.FixedLenFeature([], tf.string)}
    for name, s in config.inputs.items():
        spec[f"x/{name}"] = (tf.io.RaggedFeature(tf.float32) if s.level == "timestep"
                             else tf.io.FixedLenFeature([s.width], tf.float32))
    for name, output in config.outputs.items():
        spec[f"y/{name}"] = (tf.io.RaggedFeature(tf.float32) if output.level == "timestep"
                             else tf.io.FixedLenFeature([output.width] if output.width > 1
                                                        else [], tf.float32))
    if config.source.time_column:
        spec["time"] = tf.io.FixedLenFeature([], tf.string, default_value=b"")
    return spec


def read_chunks(files: list, config: PipelineConfig, ids: np.ndarray,
                file_sequences: Optional[tuple] = None,
                texts: Optional[np.ndarray] = None,
                time_dtype: Optional[str] = None) -> Iterator[tuple[int, Sequences]]:
    """Reads record files in order as chunks of `Sequences`, with the index of the first.

    Parsing runs in tf.data, `Tuning.read_batch` records per call, a few calls ahead. Each record's
    id is checked against the index (`ids`): shards swapped or edited would otherwise join
    sequences to the wrong ids.

    `texts`: `id_texts(ids)`, when the caller keeps it from one epoch to the next.
    `time_dtype`: the NumPy dtype of the records' times (the manifest's); None reads none.

    Raises:
      DataError: a record whose id is not the index's, a shard that cannot be read
        (truncated, corrupt), or fewer or more records than the index lists.
    """
    tf = tensorflow()

    try:
        texts = texts if texts is not None else id_texts(ids)
        yield from _read_chunks(files, config, ids, texts, file_sequences, time_dtype, tf)
    except tf.errors.OpError as e:
        raise _unreadable_shard(files, e, tf) from e


def _read_chunks(files, config, ids, texts, file_sequences, time_dtype, tf):
    spec = parse_spec(config)

    def parse(serialized):
        # Ragged lists come back as their flat values: `length` already says where each
        # sequence starts.
        return {key: value.flat_values if isinstance(value, tf.RaggedTensor) else value
                for key, value in tf.io.parse_example(serialized, spec).items()}

    records = tf.data.TFRecordDataset([str(f) for f in files]).batch(tuning.TUNING.read_batch)
    parsed = records.map(parse).prefetch(2)
    first = 0
    for batch in parsed.as_numpy_iterator():
        lengths = batch["length"]
        n = len(lengths)
        _check_ids(batch["id"], texts, first, files, file_sequences)
        offsets = offsets_of(lengths)
        features = {}
        for name, s in config.inputs.items():
            values = batch[f"x/{name}"]
            # A numeric input's columns: views of the parsed (rows, k) values, not copied.
            features[name] = (values.reshape(-1).astype(np.int32) if s.categorical
                              else tuple(values.reshape(-1, s.width).T))
        labels, present = {}, {}
        for name, output in config.outputs.items():
            values = batch[f"y/{name}"]
            if output.width > 1:
                values = values.reshape(-1, output.width)
            missing = np.isnan(values)
            present[name] = ~(missing.any(axis=1) if values.ndim == 2 else missing)
            labels[name] = np.where(missing, np.float32(output.fill_value), values).astype(
                np.int32 if output.categorical else np.float32, copy=False)
        times = (np.frombuffer(b"".join(batch["time"]), dtype=time_dtype)
                 if time_dtype and "time" in batch else None)
        yield first, Sequences(ids[first:first + n], offsets, features, labels, present, times)
        first += n
    if first != len(ids):
        raise DataError(f"the shards of {_folder(files)} hold {first:,} records where its "
                        f"index.parquet lists {len(ids):,} sequences: shards were removed, "
                        f"added or edited. Materialize again.")


def _check_ids(found: np.ndarray, texts: np.ndarray, first: int, files: list,
               file_sequences: Optional[tuple]) -> None:
    expected = texts[first:first + len(found)]
    found = np.asarray(found, dtype=bytes)
    if len(found) == len(expected) and np.array_equal(found, expected):
        return
    size = min(len(found), len(expected))
    wrong = np.flatnonzero(found[:size] != expected[:size])
    k = int(wrong[0]) if len(wrong) else size
    record = first + k
    shard = f"the shard that holds record {record:,}"
    if file_sequences is not None:
        shard = files[int(np.searchsorted(np.cumsum(file_sequences), record, side="right"))]
    got = found[k].decode() if k < len(found) else "nothing"
    raise DataError(
        f"{shard} holds sequence {got!r} as record {record:,} of its part, where index.parquet "
        f"lists {expected[k].decode() if k < len(expected) else 'no sequence'!r}: the shards "
        f"were renamed, swapped or edited, and their sequences would be joined to the wrong "
        f"ids. Materialize again.")


def _unreadable_shard(files: list, error: Exception, tf) -> DataError:
    """Which shard TensorFlow could not read: its error does not say."""
    detail = _plain_message(error)
    for file in files:
        try:
            for _ in tf.data.TFRecordDataset([str(file)]):
                pass
        except tf.errors.OpError as e:
            detail = _plain_message(e)
            return DataError(f"{file} cannot be read ({detail}): the shard is truncated or "
                             f"corrupt. Materialize again.")
    return DataError(f"the shards of {_folder(files)} cannot be read ({detail}). "
                     f"Materialize again.")


def _plain_message(error: Exception) -> str:
    """TensorFlow's message without the name of its own function and op around it."""
    text = " ".join(str(getattr(error, "message", error)).split())
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text)


def _folder(files: list) -> str:
    return str(files[0]).rsplit("/", 1)[0] if files else "this part"

