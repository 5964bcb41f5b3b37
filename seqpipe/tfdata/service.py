"""Service: materialized records batched in TensorFlow ops alone, for tf.data service workers.

`load_materialized(DIR, service=...)` cannot ship seqpipe's NumPy planner to a worker: a
tf.data service worker runs a serialized graph and no Python. So this pipeline is built
from TensorFlow ops only: the shard files (the unit the dispatcher hands out in
`distributed_epoch` mode), `parse_single_example`, a shuffle buffer, then stretches of
records sorted by length and cut into batches (`records_dataset`), padding, and the sample
weights made with the same rules as `seqpipe.weights`.

What differs from `build_dataset`: the batches are not the NumPy plan's, the order is not
reproducible from the seed, bucket boundaries and `max_timesteps` are not used, and
`global_mean` divides by the part's valid labels per batch estimated from the index.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqpipe import tuning
from seqpipe._internal.lazy import tensorflow
from seqpipe.batches.kinds import kind_of
from seqpipe.batches.whole import WholeSequences
from seqpipe.config import PipelineConfig
from seqpipe.errors import ConfigError
from seqpipe.materialized.records import parse_spec

PROCESSING_MODES = ("distributed_epoch", "parallel_epochs")


def check(config: PipelineConfig) -> None:
    """Raises a ConfigError for what the service path cannot do: batches of any kind but
    whole sequences (the others are made by seqpipe's NumPy pipeline), batches sized by
    `batching.max_timesteps` or padded to bucket boundaries (`static_shapes`)."""
    kind = kind_of(config)
    if not issubclass(kind, WholeSequences):
        raise ConfigError(
            f"the tf.data service path batches whole sequences in TensorFlow ops; {kind.name} "
            f"are made by seqpipe's own pipeline. Load the output without service= (each "
            f"worker of a tf.distribute job reads its share with input_context=).")
    if config.batching.max_timesteps is not None:
        raise ConfigError("batching.max_timesteps is not supported with the tf.data service "
                          "yet; set it to null and use batch_size (or read without service)")
    if config.batching.static_shapes:
        raise ConfigError("batching.static_shapes is not supported with the tf.data service "
                          "yet (its batches pad to their longest sequence); set it to false "
                          "or read without service")


def records_dataset(part: Any):
    """The `(x, y, sample_weight)` batches of a materialized part, in TensorFlow ops only.

    Records are shuffled in a buffer of `shuffle.buffer_size`, taken `Tuning.sort_batches`
    batches' worth at a time, sorted by length within that stretch and cut into batches of
    `batch_size`, which go out in random order: padding stays low without bucket
    boundaries. (tf.data's `bucket_by_sequence_length` after a shuffle delivered every
    sequence once per worker under `distributed_epoch` in our tests, TF 2.21, so it is not
    used.)

    Raises:
      ConfigError: see `check`.
    """
    config = part.config
    check(config)
    tf = tensorflow()
    size = config.batching.batch_size
    batches = max(1, -(-len(part.lengths) // size))
    mean_valid = {name: float(np.asarray(part.valid[name]).sum()) / batches
                  for name in config.outputs}
    files = tf.data.Dataset.from_tensor_slices([str(f) for f in part.files])
    dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=1).map(_parse(config))
    if config.shuffle.buffer_size:
        dataset = dataset.shuffle(config.shuffle.buffer_size, seed=config.shuffle.seed)
    pad = np.float32(config.padding.value)
    categorical = {f"x/{name}" for name, s in config.inputs.items() if s.categorical}

    def padding_value(key):
        if key == "length":
            return tf.constant(0, tf.int32)
        return tf.constant(np.nan if key.startswith("y/") else
                           0 if key in categorical else pad, tf.float32)

    padding_values = {key: padding_value(key) for key in dataset.element_spec}
    dataset = dataset.padded_batch(tuning.TUNING.sort_batches * size,
                                   padding_values=padding_values)
    return dataset.flat_map(_cut_sorted(config)).map(_finish(config, mean_valid))


def _parse(config: PipelineConfig):
    """The function that parses one record into its length and arrays."""
    tf = tensorflow()
    spec = parse_spec(config)

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        length = tf.cast(example["length"], tf.int32)
        element = {"length": length}
        for name, s in config.inputs.items():  # categorical ids: no last axis
            lead = [length] if s.level == "timestep" else []
            element[f"x/{name}"] = tf.reshape(example[f"x/{name}"], lead + list(s.tail))
        for name, output in config.outputs.items():
            lead = [length] if output.level == "timestep" else []
            element[f"y/{name}"] = tf.reshape(example[f"y/{name}"], lead + [output.width])
        return element  # times are not batched here

    return parse


def _cut_sorted(config: PipelineConfig):
    """The function that sorts one stretch of records by length and cuts it into batches,
    in random order when shuffling."""
    tf = tensorflow()
    size = config.batching.batch_size
    timestep_keys = {f"x/{n}" for n, s in config.inputs.items() if s.level == "timestep"} | {
        f"y/{n}" for n, s in config.outputs.items() if s.level == "timestep"}

    def cut(stretch):
        order = tf.argsort(stretch["length"], stable=True)
        stretch = {key: tf.gather(values, order) for key, values in stretch.items()}
        count = tf.shape(order)[0]
        starts = tf.range(0, count, size)
        if config.batching.drop_remainder:
            starts = starts[:count // size]

        def batch(start):
            stop = tf.minimum(start + size, count)
            steps = tf.reduce_max(stretch["length"][start:stop])
            return {key: values[start:stop, :steps] if key in timestep_keys
                    else values[start:stop] for key, values in stretch.items()}

        if config.shuffle.buffer_size:
            starts = tf.random.shuffle(starts)
        return tf.data.Dataset.from_tensor_slices(starts).map(batch)

    return cut


def _finish(config, mean_valid: dict):
    """Turns a padded batch of parsed records into `(x, y, sample_weight)`."""
    tf = tensorflow()

    side, pad = config.padding.side, np.float32(config.padding.value)

    timestep_input = next(n for n, s in config.inputs.items() if s.level == "timestep")

    def finish(batch):
        length = batch["length"]
        steps = tf.shape(batch[f"x/{timestep_input}"])[1]  # the config requires one
        real = tf.sequence_mask(length, steps)

        def to_side(values):  # post-padded by batching; pre padding moves the real part
            if side == "post":
                return values
            return tf.reverse(tf.reverse_sequence(values, length, seq_axis=1, batch_axis=0),
                              axis=[1])

        x = {}
        for name, s in config.inputs.items():
            values = batch[f"x/{name}"]
            values = to_side(values) if s.level == "timestep" else values
            x[name] = tf.cast(values, tf.int32) if s.categorical else values
        if config.padding.mask:
            x[config.padding.mask] = to_side(real)
        if not config.outputs:
            return x
        y, w = {}, {}
        for name, output in config.outputs.items():
            labels = batch[f"y/{name}"]
            missing = tf.reduce_any(tf.math.is_nan(labels), axis=-1)
            if output.level == "timestep":
                present = real & ~missing
                fill = np.float32(output.fill_value)
                filled = tf.where(present[..., None], labels,
                                  tf.where(real[..., None], fill, pad))
                present, filled = to_side(present), to_side(filled)
            else:
                present = ~missing
                filled = tf.where(present[..., None], labels, np.float32(output.fill_value))
            y[name] = tf.cast(filled, tf.int32) if output.categorical else filled
            w[name] = _weigh(config.weight_mode(name), present, mean_valid[name])
        return x, y, w

    return finish


def _weigh(mode: str, valid, mean_valid: float):
    """The sample weights of one output of a batch, in TensorFlow ops (`seqpipe.weights`
    says what each mode means)."""
    tf = tensorflow()
    valid = tf.cast(valid, tf.float32)
    elements = tf.cast(tf.size(valid), tf.float32)
    if mode == "binary":
        return valid
    if mode == "global_mean":
        return valid * (elements / mean_valid) if mean_valid else valid * 0
    if mode == "sequence_mean" and valid.shape.rank == 2:
        per_row = tf.reduce_sum(valid, axis=1, keepdims=True)
        rows = tf.reduce_sum(tf.cast(per_row > 0, tf.float32))
        return tf.math.divide_no_nan(valid * elements, rows * tf.maximum(per_row, 1.0))
    return tf.math.divide_no_nan(valid * elements, tf.reduce_sum(valid))  # batch_mean


def serve(args: Any) -> None:
    """`seqpipe serve dispatcher|worker`: starts the server and blocks until it stops.

    Raises:
      ConfigError: a port out of range or in use, a worker timeout that is not positive,
        a dispatcher address that is not HOST:PORT, or a server TensorFlow cannot start.
    """
    _check_port(args.port, "--port", free=args.port != 0)
    if args.server == "dispatcher":
        if not args.worker_timeout > 0:
            raise ConfigError(f"--worker-timeout must be a positive number of seconds; got "
                              f"{args.worker_timeout}")
    else:
        host, _, port = args.dispatcher.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--dispatcher must be HOST:PORT, such as localhost:5050; got "
                              f"{args.dispatcher!r}")
        _check_port(int(port), "the --dispatcher port")
    tf = tensorflow()

    service = tf.data.experimental.service
    try:
        if args.server == "dispatcher":
            server = service.DispatchServer(service.DispatcherConfig(
                port=args.port, worker_timeout_ms=int(args.worker_timeout * 1000)))
            print(f"seqpipe: tf.data service dispatcher at {server.target}", flush=True)
        else:
            server = service.WorkerServer(service.WorkerConfig(
                dispatcher_address=args.dispatcher, worker_address=args.address,
                port=args.port))
            print(f"seqpipe: tf.data service worker for {args.dispatcher}", flush=True)
    except RuntimeError as e:
        raise ConfigError(f"could not start the tf.data service {args.server} on port "
                          f"{args.port}: {e}") from e
    print("seqpipe: warning: the tf.data service has no authentication or encryption: "
          "anyone who can reach this server's port can read what it serves and send it work. "
          "Run it inside a private network only.", flush=True)
    server.join()


def _check_port(port: int, what: str, free: bool = False) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} must be a port number from 0 to 65535; got {port}")
    if free:  # gRPC reuses ports, so a second server would start beside the first unseen
        import socket

        with socket.socket() as probe:
            # Past connections in TIME_WAIT (a restarted worker's) do not make it busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as e:
                raise ConfigError(f"{what} {port} is in use ({e.strerror}); pick another, or "
                                  f"0 for any free port") from e
