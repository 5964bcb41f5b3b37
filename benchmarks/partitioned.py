"""Time-partitioned data: 20 daily files, each holding a slice of every sequence, at 1x and 5x
the reference size; the one-time regrouping, then an epoch from the regrouped copy against
an epoch over the same rows sorted by id.

    python benchmarks/partitioned.py [--sizes 1 5] [--repeats 3]

Every measurement runs in a process of its own, so that its peak memory is its own:
  regroup   building the pipeline with an empty cache (the DuckDB sort and the index)
  cached    building again (the copy is found, nothing is sorted), then epochs from it
  sorted    epochs over the reference file, whose row groups hold disjoint id ranges
Peak memory is resident memory above what the process used after importing TensorFlow, per
epoch (the kernel's record of the peak is reset before each), as in epoch.py; times are
medians of `--repeats` epochs after one untimed epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import (  # noqa: E402
    DATA,
    _peak_mb,
    _reset_peak,
    _rss_mb,
    child_json,
    make_reference,
    seqpipe_config,
)

DAYS = 20


def sorted_file(size: int) -> Path:
    path = DATA / f"reference-{50_000 * size}.parquet"
    if not path.exists():
        print(f"writing {path.name} ...", file=sys.stderr, flush=True)
        make_reference(path, 50_000 * size)
    return path


def daily_files(size: int) -> Path:
    """The sorted file's rows cut into DAYS files by each row's place in its sequence
    (day d holds the d-th twentieth of every sequence), rows shuffled in each file."""
    folder = DATA / f"daily-{50_000 * size}"
    if (folder / f"day-{DAYS - 1:02d}.parquet").exists():
        return folder
    source = pq.ParquetFile(sorted_file(size))
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict = {}
    # A sequence that spans two row groups is dealt as two: every row still lands in one
    # file, and the sequence is spread over files all the same.
    for g in range(source.num_row_groups):
        table = source.read_row_group(g)
        ids = table["id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        lengths = np.diff(np.r_[starts, len(ids)])
        place = np.arange(len(ids)) - np.repeat(starts, lengths)
        day = place * DAYS // np.repeat(lengths, lengths)
        rng = np.random.default_rng(g)
        for d in range(DAYS):
            part = table.filter(pa.array(day == d))
            part = part.take(pa.array(rng.permutation(part.num_rows)))
            if d not in writers:
                writers[d] = pq.ParquetWriter(folder / f"day-{d:02d}.parquet", part.schema)
            writers[d].write_table(part, row_group_size=1 << 20)
    for writer in writers.values():
        writer.close()
    return folder


def child(mode: str, path: str, cache: str, repeats: int) -> dict:
    import tensorflow as tf

    import seqpipe

    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    tf.constant(0)
    config = seqpipe.load_config(seqpipe_config(Path(path)),
                                 {"source.cache": {"dir": cache, "memory_limit": "1GB"}})
    baseline = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    pipeline = seqpipe.Pipeline(config)
    build = time.perf_counter() - start
    result = {"build_seconds": build, "build_peak_mb": _peak_mb() - baseline,
              "streamed": pipeline.report.streamed}
    if mode == "regroup":
        return result
    times, peaks = [], []
    for _ in range(repeats + 1):
        _reset_peak()
        start = time.perf_counter()
        for _batch in seqpipe.build_dataset(pipeline):
            pass
        times.append(time.perf_counter() - start)
        peaks.append(_peak_mb() - baseline)
    return {**result, "epoch_seconds": statistics.median(times[1:]),
            "epoch_peak_mb": statistics.median(peaks[1:]), "largest_peak_mb": max(peaks),
            "epochs": times}


def run(mode: str, path: Path, cache: Path, repeats: int) -> dict:
    return child_json(__file__, ["--child", mode, path, cache, repeats])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, cache, repeats = args.child
        print(json.dumps(child(mode, path, cache, int(repeats))))
        return
    for size in args.sizes:
        daily, ordered = daily_files(size), sorted_file(size)
        cache = DATA / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        regroup = run("regroup", daily, cache, args.repeats)
        cached = run("cached", daily, cache, args.repeats)
        plain = run("sorted", ordered, cache, args.repeats)
        print(f"{size}x ({50_000 * size:,} sequences): regroup {regroup['build_seconds']:.1f} s,"
              f" peak {regroup['build_peak_mb']:.0f} MB; second build "
              f"{cached['build_seconds']:.2f} s; epoch from the copy "
              f"{cached['epoch_seconds']:.2f} s (peak {cached['epoch_peak_mb']:.0f} MB, largest "
              f"{cached['largest_peak_mb']:.0f}) vs sorted file {plain['epoch_seconds']:.2f} s "
              f"(peak {plain['epoch_peak_mb']:.0f} MB): ratio "
              f"{cached['epoch_seconds'] / plain['epoch_seconds']:.3f}", flush=True)
        print(json.dumps({"size": size, "regroup": regroup, "cached": cached,
                          "sorted": plain}), flush=True)


if __name__ == "__main__":
    main()
