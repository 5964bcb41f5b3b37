"""One seqpipe epoch over the reference file, next to pyarrow.parquet.read_table of it.

    python benchmarks/epoch_vs_read_table.py [--sequences 50000] [--repeats 3]

The reference data (seeded): 50 k sequences, lengths lognormal (median 89, mean 124,
max 2000), about 6.2 M rows sorted by id and time, 8 float features, a per-timestep label
with 20 % missing and a per-sequence label with 30 % missing. It is written once to
benchmarks/data/. Times are medians of several runs; the ratio is taken in the same run,
because absolute times on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(8)]
HERE = Path(__file__).resolve().parent


def make_reference(path: Path, sequences: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(2 * np.log(124 / 89))  # lognormal with median 89 and mean 124
    lengths = np.clip(np.round(rng.lognormal(np.log(89), sigma, sequences)), 1, 2000)
    lengths = lengths.astype(np.int64)
    rows = int(lengths.sum())
    sequence = np.repeat(np.arange(sequences), lengths)
    columns = {"id": sequence, "t": np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths,
                                                                lengths)}
    for name in FEATURES:
        columns[name] = rng.normal(size=rows).astype(np.float32)
    label = rng.normal(size=rows).astype(np.float32)
    label[rng.random(rows) < 0.2] = np.nan
    outcome = rng.integers(0, 2, sequences).astype(np.float32)
    outcome[rng.random(sequences) < 0.3] = np.nan
    columns.update(label=label, outcome=outcome[sequence])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=1 << 20)


def config_for(path: Path) -> dict:
    return {
        "source": {"path": str(path), "layout": "long", "id_column": "id",
                   "time_column": "t"},
        "inputs": {"features": {"columns": FEATURES}},
        "outputs": {"label": {"column": "label"},
                    "outcome": {"column": "outcome", "level": "sequence"}},
        "padding": {"maxlen": 512},
        "batching": {"batch_size": 64, "bucket_boundaries": "auto"},
        "weights": {"mode": "batch_mean"},
        "shuffle": {"buffer_size": 10000, "seed": 42},
    }


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = HERE / "data" / f"reference-{args.sequences}.parquet"
    if not path.exists():
        make_reference(path, args.sequences)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    import seqpipe

    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    config = seqpipe.load_config(config_for(path))
    rows = pq.ParquetFile(path).metadata.num_rows
    import tensorflow as tf  # imported before timing: its start-up is not the pipeline's

    tf.constant(0)

    def read_table():
        pq.read_table(path)

    def numpy_epoch():
        for _ in seqpipe.Pipeline(config).batches():
            pass

    def tf_epoch():
        for _ in seqpipe.build_dataset(config):
            pass

    read_table()  # warm the page cache
    read = timed(read_table, max(5, args.repeats))
    numpy_time = timed(numpy_epoch, args.repeats)
    tf_time = timed(tf_epoch, args.repeats)
    report = seqpipe.Pipeline(config).report
    print(f"reference file: {rows:,} rows, {report.sequences:,} sequences, "
          f"{len(FEATURES)} features; {os.cpu_count()} CPU cores")
    print(f"{'approach':<52}{'median s':>10}{'x read_table':>14}")
    for name, seconds in [("pyarrow.parquet.read_table (warm cache)", read),
                          ("seqpipe Pipeline: build + every NumPy batch", numpy_time),
                          ("seqpipe build_dataset: build + iterate every batch", tf_time)]:
        print(f"{name:<52}{seconds:>10.2f}{seconds / read:>14.1f}")
    print(f"padding waste: {report.padding_waste:.1%} (buckets {list(report.bucket_boundaries)}"
          f"; without buckets {report.padding_waste_unbucketed:.1%})")


if __name__ == "__main__":
    main()
