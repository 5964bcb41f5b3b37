"""One epoch of variable-length sequences from Parquet to padded batches, six ways.

    python benchmarks/epoch.py            # everything (about 15 minutes on 2 cores)
    python benchmarks/epoch.py --quick    # skips the two slow baselines and the 5x file

The reference data (seeded): 50 k sequences, lengths lognormal (median 89, mean 124,
max 2000), about 6.2 M rows sorted by id and time, 8 float features, a per-timestep label
with 20 % missing and a per-sequence label with 30 % missing. It is written once to
benchmarks/data/, with a copy whose rows are shuffled and a file 5x as large.

Every approach runs in its own process, so that its peak memory is its own; each process
also times `pyarrow.parquet.read_table` of the same file (in its steady state, after three
untimed calls), and the ratio is taken against that, because absolute times on shared
machines are noisy. Each approach likewise runs one untimed epoch first: a process's first
epoch also pays one-time costs (loading compiled code, TensorFlow's first use of its ops);
the table shows that first epoch too. Times are medians of `--repeats` further runs (three
times as many for an approach whose epoch, after the warm-up, takes under 3 s).
Padding waste is padded timesteps / all timesteps of the emitted batches. Peak memory is
resident memory above what the process used after importing TensorFlow, taken for each
epoch on its own (the kernel's record of the peak is reset before each) and reported as
the median over the timed epochs, with the largest of all, warm-up included, beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(8)]
MAXLEN = 512
HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def make_reference(path: Path, sequences: int, seed: int = 0, shuffle_rows: bool = False,
                   row_group_size: int = 1 << 20) -> None:
    """Writes the reference data. Each 50 k-sequence block uses its own seed, so the 5x
    file has the same distribution."""
    writer = None
    for block, first in enumerate(range(0, sequences, 50_000)):
        table = _block(min(50_000, sequences - first), first, seed + block)
        if shuffle_rows:
            order = np.random.default_rng(seed).permutation(table.num_rows)
            table = table.take(pa.array(order))
        if writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=row_group_size)
    writer.close()


def _block(sequences: int, first_id: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(2 * np.log(124 / 89))  # lognormal with median 89 and mean 124
    lengths = np.clip(np.round(rng.lognormal(np.log(89), sigma, sequences)), 1, 2000)
    lengths = lengths.astype(np.int64)
    rows = int(lengths.sum())
    sequence = np.repeat(np.arange(sequences), lengths)
    columns = {"id": sequence + first_id,
               "t": np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)}
    for name in FEATURES:
        columns[name] = rng.normal(size=rows).astype(np.float32)
    label = rng.normal(size=rows).astype(np.float32)
    label[rng.random(rows) < 0.2] = np.nan
    outcome = rng.integers(0, 2, sequences).astype(np.float32)
    outcome[rng.random(sequences) < 0.3] = np.nan
    columns.update(label=label, outcome=outcome[sequence])
    return pa.table(columns)


def seqpipe_config(path: Path, **batching) -> dict:
    return {
        "source": {"path": str(path), "layout": "long", "id_column": "id",
                   "time_column": "t"},
        "inputs": {"features": {"columns": FEATURES}},
        "outputs": {"label": {"column": "label"},
                    "outcome": {"column": "outcome", "level": "sequence"}},
        "padding": {"maxlen": MAXLEN, "truncating": "pre"},
        "batching": {"batch_size": 64, "bucket_boundaries": "auto", **batching},
        "weights": {"mode": "batch_mean"},
        "shuffle": {"buffer_size": 10000, "seed": 42},
    }


# ---- the approaches, each returning an iterable of batches whose first item is x ----

def _grouped(path: Path):
    """Rows sorted by id: each sequence's rows as offsets, as a user of pyarrow finds them."""
    table = pq.read_table(path)
    ids = table["id"].to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    offsets = np.append(starts, len(ids))
    x = np.stack([table[f].to_numpy() for f in FEATURES], axis=1)
    label = table["label"].to_numpy()
    return offsets, x, np.nan_to_num(label), (~np.isnan(label)).astype(np.float32)


def pandas_pad_sequences(path: Path):
    import keras
    import tensorflow as tf

    frame = pq.read_table(path).to_pandas()
    xs, ys, ws = [], [], []
    for _, rows in frame.groupby("id", sort=True):
        label = rows["label"].to_numpy()
        xs.append(rows[FEATURES].to_numpy())
        ys.append(np.nan_to_num(label))
        ws.append(~np.isnan(label))
    pad = dict(maxlen=MAXLEN, dtype="float32", padding="post", truncating="pre")
    x, y, w = (keras.utils.pad_sequences(v, **pad) for v in (xs, ys, ws))
    return tf.data.Dataset.from_tensor_slices((x, y, w)).batch(64)


def generator_padded_batch(path: Path):
    import tensorflow as tf

    offsets, x, y, w = _grouped(path)

    def sequences():
        for a, b in zip(offsets[:-1], offsets[1:]):
            a = max(a, b - MAXLEN)
            yield x[a:b], y[a:b], w[a:b]

    spec = (tf.TensorSpec((None, len(FEATURES)), tf.float32),
            tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(sequences, output_signature=spec).padded_batch(64)


def _ragged(path: Path):
    import tensorflow as tf

    offsets, x, y, w = _grouped(path)
    parts = [tf.RaggedTensor.from_row_splits(v, offsets)[:, -MAXLEN:] for v in (x, y, w)]
    # Slices of a RaggedTensor come out with a ragged spec; padded_batch needs dense ones.
    return tf.data.Dataset.from_tensor_slices(tuple(parts)).map(
        lambda *v: tuple(tf.identity(t) for t in v))


def ragged_padded_batch(path: Path):
    return _ragged(path).padded_batch(64)


def ragged_bucket_by_sequence_length(path: Path):
    import tensorflow as tf

    return _ragged(path).bucket_by_sequence_length(
        lambda x, y, w: tf.shape(x)[0], bucket_boundaries=[64, 128, 256],
        bucket_batch_sizes=[64] * 4)


def seqpipe_dataset(path: Path):
    import seqpipe

    return seqpipe.build_dataset(seqpipe.load_config(seqpipe_config(path)))


APPROACHES = {
    "pandas group-by + keras pad_sequences + from_tensor_slices": (
        pandas_pad_sequences, "reference", True),
    "from_generator, one sequence at a time, + padded_batch": (
        generator_padded_batch, "reference", True),
    "Arrow -> tf.RaggedTensor -> padded_batch": (ragged_padded_batch, "reference", False),
    "Arrow -> tf.RaggedTensor -> bucket_by_sequence_length (4 buckets)": (
        ragged_bucket_by_sequence_length, "reference", False),
    "seqpipe build_dataset (streamed)": (seqpipe_dataset, "reference", False),
    "seqpipe build_dataset, rows shuffled (grouped whole)": (
        seqpipe_dataset, "shuffled", False),
    "seqpipe build_dataset, file 5x as large (streamed)": (seqpipe_dataset, "large", True),
}


# An approach whose first timed epoch takes less than this many seconds times
# FAST_REPEATS times as many epochs: a median of three one-second epochs moves with this
# machine's second-to-second speed, and more cost little.
QUICK_SECONDS = 3.0
FAST_REPEATS = 3


def run_one(name: str, path: Path, repeats: int) -> dict:
    """In a fresh process: the approach's epoch time, padding and peak memory, and
    read_table of the same file, both as medians of `repeats` runs (`FAST_REPEATS` times
    as many for a quick approach)."""
    import logging

    import tensorflow as tf

    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    tf.constant(0)  # TensorFlow's start-up is not the pipeline's
    build = APPROACHES[name][0]
    baseline = _rss_mb()
    times, peaks, padded, runs = [], [], 0, repeats
    while len(times) <= runs:  # the first is the untimed warm-up, reported apart
        each_epoch = _reset_peak()
        start = time.perf_counter()
        padded = 0
        for batch in build(path):
            padded += int(np.prod(_first(batch).shape[:2]))
        times.append(time.perf_counter() - start)
        peaks.append(_peak_mb() - baseline)
        if len(times) == 2 and times[1] < QUICK_SECONDS:
            runs = FAST_REPEATS * repeats
    first, times = times[0], times[1:]
    # Each epoch's own peak, median over the timed ones, as for times; where the kernel
    # cannot reset its record, the process's peak stands for every epoch.
    peak = statistics.median(peaks[1:]) if each_epoch else max(peaks)
    lengths = _lengths(path)
    real = int(np.minimum(lengths, MAXLEN).sum())
    # read_table is slow for its first few calls after the approach (0.6 s, then 0.4, 0.3,
    # down to 0.15 s on this machine: its memory pool pages in again). The ratio is taken
    # against its steady state, which is the stricter baseline: three calls are untimed.
    for _ in range(3):
        pq.read_table(path)
    reads = []
    for _ in range(max(5, runs)):
        start = time.perf_counter()
        pq.read_table(path)
        reads.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "read_table": statistics.median(reads),
            "padding": 1 - real / padded, "peak_mb": peak, "largest_peak_mb": max(peaks),
            "peaks": peaks, "runs": times, "reads": reads, "first_seconds": first}


def _first(batch):
    x = batch[0] if isinstance(batch, tuple) else batch
    return next(iter(x.values())) if isinstance(x, dict) else x


def _lengths(path: Path) -> np.ndarray:
    ids = pq.read_table(path, columns=["id"])["id"].to_numpy()
    return np.unique(ids, return_counts=True)[1]


def _reset_peak() -> bool:
    """Resets the kernel's record of this process's peak resident memory (Linux: 5 written
    to /proc/self/clear_refs), so that the next epoch's peak is its own. False where it
    cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak resident memory since the last `_reset_peak` (or the process's start), MB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def lstm_epoch(path: Path, padded_to_maxlen: bool) -> float:
    """Seconds to train a small LSTM for one epoch on seqpipe's batches, or on the same
    batches padded to maxlen, as a plain pad_sequences pipeline would feed it."""
    import keras
    import tensorflow as tf

    import seqpipe

    config = seqpipe.load_config(seqpipe_config(path), {"outputs": {"label": {
        "column": "label"}}})
    dataset = seqpipe.build_dataset(config)
    if padded_to_maxlen:
        def to_maxlen(x, y, w):
            grow = MAXLEN - tf.shape(w["label"])[1]
            return ({"features": tf.pad(x["features"], [[0, 0], [0, grow], [0, 0]])},
                    {"label": tf.pad(y["label"], [[0, 0], [0, grow], [0, 0]])},
                    {"label": tf.pad(w["label"], [[0, 0], [0, grow]])})
        dataset = dataset.map(to_maxlen)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, len(FEATURES)), name="features")
    hidden = keras.layers.LSTM(32, return_sequences=True)(inputs)
    model = keras.Model(inputs, {"label": keras.layers.Dense(1, name="label")(hidden)})
    model.compile("adam", {"label": "mse"})
    model.fit(dataset.take(1), verbose=0)  # builds and traces; not timed
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start


def ensure_data(quick: bool, lstm_sequences: int) -> dict:
    paths = {"reference": DATA / "reference-50000.parquet",
             "shuffled": DATA / "reference-50000-shuffled.parquet",
             "large": DATA / "reference-250000.parquet",
             "lstm": DATA / f"reference-{lstm_sequences}.parquet"}
    makers = {"reference": (50_000, False), "shuffled": (50_000, True),
              "large": (250_000, False), "lstm": (lstm_sequences, False)}
    for key, path in paths.items():
        if quick and key == "large":
            continue
        if not path.exists():
            print(f"writing {path.name} ...", file=sys.stderr, flush=True)
            make_reference(path, *makers[key][:1], shuffle_rows=makers[key][1])
        with open(path, "rb") as f:  # warm the page cache
            while f.read(1 << 24):
                pass
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="skip the two slow baselines and the 5x file")
    parser.add_argument("--lstm-sequences", type=int, default=5000,
                        help="sequences in the file the LSTM trains on for one epoch")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--lstm", choices=["maxlen", "seqpipe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.path), args.repeats)))
        return
    if args.lstm:
        print(json.dumps(lstm_epoch(Path(args.path), args.lstm == "maxlen")))
        return
    paths = ensure_data(args.quick, args.lstm_sequences)
    # seqpipe's compiled code is compiled and cached once, on the small file, before any
    # measured process: otherwise the first seqpipe process compiles it (on a fresh
    # checkout, always the reference row), and its epochs' peaks keep the compiler's memory.
    child_json(__file__, ["--one", "seqpipe build_dataset (streamed)", "--path", str(paths["lstm"]),
            "--repeats", "1"])
    results = {}
    for name, (_, data, slow) in APPROACHES.items():
        if args.quick and slow:
            continue
        print(f"running: {name} ...", file=sys.stderr, flush=True)
        results[name] = child_json(__file__, ["--one", name, "--path", str(paths[data]),
                                "--repeats", str(args.repeats)])
    lstm = {mode: child_json(__file__, ["--lstm", mode, "--path", str(paths["lstm"])])
            for mode in ("maxlen", "seqpipe")}
    print_table(results, lstm, args)


def child_json(script: str, arguments: list, python: str = sys.executable) -> Any:
    """Runs `script` with `arguments` in a process of its own (so that its peak memory is
    its own) and returns the JSON its last line of output holds."""
    done = subprocess.run([python, script, *map(str, arguments)], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        sys.exit(f"benchmark step {arguments[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: dict, lstm: dict, args) -> None:
    rows = pq.ParquetFile(DATA / "reference-50000.parquet").metadata.num_rows
    print(f"reference file: {rows:,} rows, 50,000 sequences, {len(FEATURES)} float features; "
          f"{os.cpu_count()} CPU cores; medians of {args.repeats} runs after one untimed "
          f"warm-up run ({FAST_REPEATS * args.repeats} runs where an epoch takes under "
          f"{QUICK_SECONDS:g} s)")
    print()
    print("| approach | one epoch, s | x read_table (same process) | padding waste | "
          "peak memory, MB: median epoch (largest, warm-up included) | "
          "first epoch in the process, s |")
    print("|---|---|---|---|---|---|")
    print(f"| pyarrow.parquet.read_table (warm cache), median over the processes | "
          f"{statistics.median(r['read_table'] for r in results.values()):.2f} | 1.0 | - | - "
          f"| - |")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / r['read_table']:.2f} | "
              f"{r['padding']:.1%} | {r['peak_mb']:,.0f} ({r['largest_peak_mb']:,.0f}) | "
              f"{r['first_seconds']:.2f} |")
    print()
    print(f"LSTM(32), one training epoch over {args.lstm_sequences:,} sequences: batches "
          f"padded to maxlen {lstm['maxlen']:.1f} s, seqpipe's batches {lstm['seqpipe']:.1f} s"
          f": {lstm['maxlen'] / lstm['seqpipe']:.1f}x faster")


if __name__ == "__main__":
    main()
