"""One epoch of variable-length sequences from Parquet to padded batches: seqpipe against
the pipelines a competent user writes, paired in one process.

    python benchmarks/epoch.py              # 7 pairs of everything (about 12 minutes)
    python benchmarks/epoch.py --pairs 11
    python benchmarks/epoch.py --quick      # seqpipe's own pairs and memory only

The reference data (seeded): 50 k sequences, lengths lognormal (median 89, mean 124,
max 2000), about 6.2 M rows sorted by id and time, 8 float features, a per-timestep label
with 20 % missing and a per-sequence label with 30 % missing. It is written once to
benchmarks/data/, with a file 5x as large (which does not fit seqpipe's default memory
budget, so every epoch streams it).

The competent alternatives, each the shortest fast code a user who knows the library writes:

- pandas: `read_table().to_pandas()`, `np.split` at the id changes, `keras.utils.
  pad_sequences` to maxlen, `tf.data.Dataset.from_tensor_slices(...).batch(64)`: padded
  arrays in memory, not shuffled (which flatters it: a shuffle buffer copies every row).
- tf.data ragged: offsets from the id column, `tf.RaggedTensor.from_row_splits`, then
  `bucket_by_sequence_length` over 4 buckets, batch 64.
- Grain: the same offsets as a random-access source, `MapDataset.shuffle`, `.batch(64)`
  with a `batch_fn` that pads to the batch's longest sequence.

seqpipe runs its default config (batch 64, maxlen 512, `auto` buckets, `batch_mean`,
shuffled; later epochs come from the prepared sequences the first kept in memory, within
`source.memory_mb`).

1. Build and first epoch, in one process, the approaches one after another in rounds
   (each round starting with the next approach, after a garbage collection): each pair is
   one round's seqpipe tf.data time and another's in the same round.
2. Epoch 2 and later, in one process: every dataset built and read once, then rounds of
   one epoch each, ordered the same way.
3. Peak resident memory above the process's after importing TensorFlow, over building
   and three epochs, each approach in a process of its own.
4. A small LSTM trained one epoch on seqpipe's batches, and on the same batches padded to
   maxlen.

Ratios are per pair, taken in the same run (these machines are noisy): median and range.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
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




# ---- the approaches: each builds a re-iterable dataset; one pass is one epoch ----

def _grouped(path: Path):
    """Rows sorted by id: each sequence's rows as offsets, as a user of pyarrow finds them."""
    table = pq.read_table(path)
    ids = table["id"].to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    offsets = np.append(starts, len(ids))
    x = np.stack([table[f].to_numpy() for f in FEATURES], axis=1)
    label = table["label"].to_numpy()
    return offsets, x, np.nan_to_num(label), (~np.isnan(label)).astype(np.float32)


def pandas_dataset(path: Path):
    """pandas, np.split, pad_sequences to maxlen, from_tensor_slices: padded in memory."""
    import keras
    import tensorflow as tf

    frame = pq.read_table(path).to_pandas()  # sorted by id and time
    ids = frame["id"].to_numpy()
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    label = frame["label"].to_numpy()
    pad = dict(maxlen=MAXLEN, dtype="float32", padding="post", truncating="pre")
    x = keras.utils.pad_sequences(np.split(frame[FEATURES].to_numpy(), cuts), **pad)
    y = keras.utils.pad_sequences(np.split(np.nan_to_num(label), cuts), **pad)
    w = keras.utils.pad_sequences(np.split((~np.isnan(label)).astype(np.float32), cuts), **pad)
    return tf.data.Dataset.from_tensor_slices((x, y, w)).batch(64)


def ragged_dataset(path: Path):
    """Arrow offsets -> tf.RaggedTensor -> bucket_by_sequence_length (4 buckets)."""
    import tensorflow as tf

    offsets, x, y, w = _grouped(path)
    parts = [tf.RaggedTensor.from_row_splits(v, offsets)[:, -MAXLEN:] for v in (x, y, w)]
    # Slices of a RaggedTensor come out with a ragged spec; the buckets need dense ones.
    return tf.data.Dataset.from_tensor_slices(tuple(parts)).map(
        lambda *v: tuple(tf.identity(t) for t in v)).bucket_by_sequence_length(
        lambda x, y, w: tf.shape(x)[0], bucket_boundaries=[64, 128, 256],
        bucket_batch_sizes=[64] * 4)


def grain_dataset(path: Path):
    """Arrow offsets as a Grain source, shuffled, batches padded to their longest."""
    import grain

    offsets, x, y, w = _grouped(path)
    starts, ends = np.maximum(offsets[:-1], offsets[1:] - MAXLEN), offsets[1:]

    class Sequences:
        def __len__(self):
            return len(ends)

        def __getitem__(self, i):
            a, b = starts[i], ends[i]
            return x[a:b], y[a:b], w[a:b]

    def pad(items):
        longest = max(len(item[0]) for item in items)
        out = [np.zeros((len(items), longest) + part.shape[1:], np.float32)
               for part in items[0]]
        for row, item in enumerate(items):
            for array, part in zip(out, item):
                array[row, :len(part)] = part
        return tuple(out)

    return grain.MapDataset.source(Sequences()).shuffle(seed=42).batch(64, batch_fn=pad)


def seqpipe_dataset(path: Path, format: str = "tf", **overrides):
    import seqpipe

    config = seqpipe.load_config(seqpipe_config(path), overrides)
    return seqpipe.build_dataset(config, format=format)


SEQPIPE = {
    "seqpipe, tf.data": lambda path: seqpipe_dataset(path),
    "seqpipe, NumPy": lambda path: seqpipe_dataset(path, "numpy"),
    "seqpipe, tf.data, source.memory_mb: 0": lambda path: seqpipe_dataset(
        path, **{"source.memory_mb": 0}),
}
OTHERS = {
    "pandas + pad_sequences + from_tensor_slices": pandas_dataset,
    "tf.data ragged + bucket_by_sequence_length": ragged_dataset,
    "Grain, batches padded to their longest": grain_dataset,
}
APPROACHES = {**SEQPIPE, **OTHERS}


def epoch(dataset, count_steps: bool = False) -> tuple[float, int, int]:
    """Seconds for one pass and the batches; with `count_steps`, the timesteps they hold
    (padding included), which a timed pass does not count: reading a tf.Tensor's shape in
    Python costs about 12 µs a batch, as much as some approaches' own work."""
    start = time.perf_counter()
    batches = steps = 0
    for batch in dataset:
        batches += 1
        if count_steps:
            steps += int(np.prod(_first(batch).shape[:2]))
    return time.perf_counter() - start, batches, steps


def _first(batch):
    x = batch[0] if isinstance(batch, tuple) else batch
    return next(iter(x.values())) if isinstance(x, dict) else x


def _rotated(names: list, round: int) -> list:
    """The round's order: each approach goes first in turn, so that none always follows
    the same one (whose freed memory and garbage the next one meets)."""
    k = round % len(names)
    return names[k:] + names[:k]


def first_epochs(path: Path, names: list, pairs: int) -> dict:
    """Build + first epoch of each approach, in rounds (one untimed round first)."""
    times: dict = {name: [] for name in names}
    for round in range(pairs + 1):
        for name in _rotated(names, round):
            gc.collect()  # the last approach's garbage, not this one's time
            start = time.perf_counter()
            epoch(APPROACHES[name](path))
            if round:
                times[name].append(time.perf_counter() - start)
    return times


def later_epochs(path: Path, names: list, pairs: int) -> tuple[dict, dict]:
    """Epoch 2 and later of each approach, in rounds, each dataset built and read once
    before; and each approach's padding waste."""
    datasets = {name: APPROACHES[name](path) for name in names}
    waste = {}
    real = int(np.minimum(_lengths(path), MAXLEN).sum())
    for name, dataset in datasets.items():
        waste[name] = 1 - real / epoch(dataset, count_steps=True)[2]
    times: dict = {name: [] for name in names}
    for round in range(pairs):
        for name in _rotated(names, round):
            gc.collect()
            times[name].append(epoch(datasets[name])[0])
    return times, waste


def peak(name: str, path: Path) -> dict:
    """Peak resident memory (MB) above the process's after importing TensorFlow, over
    building and three epochs."""
    import tensorflow as tf

    tf.constant(0)
    base = _rss_mb()
    _reset_peak()
    dataset = APPROACHES[name](path)
    seconds = [epoch(dataset)[0] for _ in range(3)]
    return {"peak_mb": _peak_mb() - base, "seconds": seconds}


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


def _lengths(path: Path) -> np.ndarray:
    ids = pq.read_table(path, columns=["id"])["id"].to_numpy()
    return np.unique(ids, return_counts=True)[1]


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


def summary(ratios: list) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="seqpipe's own pairs and memory only")
    parser.add_argument("--lstm-sequences", type=int, default=5000,
                        help="sequences in the file the LSTM trains on for one epoch")
    parser.add_argument("--peak", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--lstm", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    if args.peak:
        print(json.dumps(peak(args.peak[0], Path(args.peak[1]))))
        return
    if args.lstm:
        print(json.dumps(lstm_epoch(Path(args.lstm[1]), args.lstm[0] == "maxlen")))
        return
    paths = ensure_data(False, args.lstm_sequences)
    reference, large = paths["reference"], paths["large"]
    # seqpipe's compiled code is compiled and cached once before any measured process.
    child_json(__file__, ["--peak", "seqpipe, NumPy", paths["lstm"]])
    rows = pq.ParquetFile(reference).metadata.num_rows
    others = [] if args.quick else list(OTHERS)
    print(f"reference file: {rows:,} rows, 50,000 sequences; {os.cpu_count()} CPU cores; "
          f"{args.pairs} pairs; ratio per pair, median (range)")

    print("\n1. Build and first epoch, one process\n")
    first = first_epochs(reference, list(SEQPIPE) + others, args.pairs)
    tf_times = first["seqpipe, tf.data"]
    print("| approach | seconds, median | / seqpipe tf.data, per pair |")
    print("|---|---|---|")
    for name, times in first.items():
        print(f"| {name} | {statistics.median(times):.3f} | "
              f"{summary([t / s for t, s in zip(times, tf_times)])} |")
    numpy, streamed = first["seqpipe, NumPy"], first["seqpipe, tf.data, source.memory_mb: 0"]
    print(f"\nseqpipe tf.data / NumPy, per pair: "
          f"{summary([t / n for t, n in zip(tf_times, numpy)])}")
    print(f"seqpipe tf.data, memory_mb default / 0, per pair: "
          f"{summary([t / s for t, s in zip(tf_times, streamed)])}")

    print("\n2. Epoch 2 and later, one process\n")
    later, waste = later_epochs(reference, ["seqpipe, tf.data", "seqpipe, NumPy"] + others,
                                args.pairs)
    against = later.get("pandas + pad_sequences + from_tensor_slices")
    print("| approach | seconds, median | padding waste | / pandas, per pair |")
    print("|---|---|---|---|")
    for name, times in later.items():
        ratio = summary([t / p for t, p in zip(times, against)]) if against else "-"
        print(f"| {name} | {statistics.median(times):.3f} | {waste[name]:.1%} | {ratio} |")
    pairs = zip(later["seqpipe, tf.data"], later["seqpipe, NumPy"])
    print(f"\nseqpipe tf.data / NumPy, per pair: {summary([t / n for t, n in pairs])}")

    print("\n3. Peak memory over building and three epochs, a process each\n")
    print("| approach | file | peak MB | epochs, s |")
    print("|---|---|---|---|")
    runs = [(name, reference) for name in ("seqpipe, tf.data",
                                           "seqpipe, tf.data, source.memory_mb: 0")]
    runs += [("seqpipe, tf.data", large)] + [(name, reference) for name in others]
    for name, path in runs:
        result = child_json(__file__, ["--peak", name, path])
        print(f"| {name} | {path.name} | {result['peak_mb']:,.0f} | "
              f"{', '.join(f'{s:.2f}' for s in result['seconds'])} |")

    if not args.quick:
        lstm = {mode: child_json(__file__, ["--lstm", mode, paths["lstm"]])
                for mode in ("maxlen", "seqpipe")}
        print(f"\n4. LSTM(32), one training epoch over {args.lstm_sequences:,} sequences: "
              f"batches padded to maxlen {lstm['maxlen']:.1f} s, seqpipe's batches "
              f"{lstm['seqpipe']:.1f} s: {lstm['maxlen'] / lstm['seqpipe']:.1f}x faster")


def child_json(script: str, arguments: list, python: str = sys.executable) -> Any:
    """Runs `script` with `arguments` in a process of its own (so that its peak memory is
    its own) and returns the JSON its last line of output holds."""
    done = subprocess.run([python, script, *map(str, arguments)], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        sys.exit(f"benchmark step {arguments[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
