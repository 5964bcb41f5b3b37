"""Reading materialized TFRecords against reading the Parquet source, epoch for epoch.

    python benchmarks/materialized.py              # 5 alternating rounds
    python benchmarks/materialized.py --rounds 9

Uses the reference file of `epoch.py` (written once to benchmarks/data/) and the same
config, materializes it once (timed), then alternates one epoch of
`build_dataset(config)` (Parquet) with one epoch of `load_materialized(DIR)` (TFRecord)
in one process, so that both see the same machine load. It prints the medians, the ratio
of each round and their median: below 1 means the materialized data reads faster.
Also times `seqpipe inspect` on the reference file, which must take seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from epoch import DATA, ensure_data, seqpipe_config  # noqa: E402


def epoch_seconds(dataset) -> float:
    start = time.perf_counter()
    for _ in dataset:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = ensure_data(quick=True, lstm_sequences=5000)["reference"]

    start = time.perf_counter()
    inspected = subprocess.run([sys.executable, "-m", "seqpipe", "inspect", str(path)],
                               capture_output=True, text=True, check=True)
    inspect_seconds = time.perf_counter() - start

    import tensorflow as tf

    import seqpipe

    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    tf.constant(0)  # TensorFlow's start-up is not the pipeline's
    config = seqpipe.load_config(seqpipe_config(path))
    out = DATA / "materialized-50000"
    start = time.perf_counter()
    manifest = seqpipe.materialize(config, out, overwrite=True)
    materialize_seconds = time.perf_counter() - start
    part = manifest["parts"]["all"]

    parquet, records = [], []
    for _ in range(args.rounds):
        parquet.append(epoch_seconds(seqpipe.build_dataset(config)))
        records.append(epoch_seconds(seqpipe.load_materialized(out)))
    ratios = [r / p for p, r in zip(parquet, records)]
    print(f"reference file: {path.name}, {os.cpu_count()} CPU cores")
    print(f"seqpipe inspect (whole command, a fresh process): {inspect_seconds:.1f} s "
          f"({next(l for l in inspected.stdout.splitlines() if l.startswith('sequences'))})")
    print(f"materialize: {materialize_seconds:.1f} s, {part['sequences']:,} sequences, "
          f"{len(part['shards'])} shards, {part['bytes'] / 2**20:,.0f} MB")
    print(f"one epoch, median of {args.rounds} alternating rounds:")
    print(f"  build_dataset (Parquet):      {statistics.median(parquet):.2f} s")
    print(f"  load_materialized (TFRecord): {statistics.median(records):.2f} s")
    print(f"  TFRecord / Parquet per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
