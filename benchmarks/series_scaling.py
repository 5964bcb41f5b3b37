"""Memory and time of a streamed epoch with per-series scaling, against dataset-wide
scaling and none, on a file and on one 4x as large.

Per-series statistics are computed as each chunk of whole sequences streams past, so peak
memory should not grow with the data. Each (size, scaling) runs in its own process; peak
memory is resident memory above the process's after imports (the kernel's peak record is
reset before each epoch; the largest of three epochs after an untimed one), and time is the
median epoch's wall time, both beside the unscaled run of the same size, taken in the same
invocation.

    python benchmarks/series_scaling.py [--series 20000] [--sizes 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
SCALINGS = {"none": None, "dataset": "standard", "series": {"per": "series"}}


def write(path: str, series: int, seed: int = 0) -> int:
    """Long rows sorted by id and day: levels from 1 to 10^6, row groups of ~1 M rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 300, series)
    sequence = np.repeat(np.arange(series), lengths)
    day = np.arange(len(sequence)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    level = 10 ** rng.uniform(0, 6, series)
    values = level[sequence] * (1 + 0.2 * rng.standard_normal(len(sequence)))
    table = pa.table({"id": sequence.astype(np.int64), "day": day.astype(np.int64),
                      "a": values, "b": values * 0.5 + 1, "y": values * 1.1})
    pq.write_table(table, path, row_group_size=1 << 20)
    return len(sequence)


def child(path: str, scaling: str) -> None:
    import seqpipe

    normalize = SCALINGS[scaling]
    config = {"source": {"path": path, "id_column": "id", "time_column": "day"},
              "inputs": {"x": {"columns": ["a", "b"], "normalize": normalize}},
              "outputs": {"y": {"column": "y", "normalize": normalize}},
              "padding": {"maxlen": 256}, "batching": {"batch_size": 64}}
    pipeline = seqpipe.Pipeline(config)
    rows = sum(int(b.lengths.sum()) for b in pipeline.batches(0))  # warm-up, untimed
    times, peaks = [], []
    for epoch in range(1, 4):
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM)
            f.write("5")
        base = _rss_kb()
        started = time.perf_counter()
        for _ in pipeline.batches(epoch):
            pass
        times.append(time.perf_counter() - started)
        peaks.append((_hwm_kb() - base) / 1024)
    print(json.dumps({"seconds": sorted(times)[1], "peak_mb": max(peaks), "rows": rows}))


def _rss_kb() -> int:
    return _status("VmRSS")


def _hwm_kb() -> int:
    return _status("VmHWM")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=20000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = os.path.join(HERE, "data")
    os.makedirs(folder, exist_ok=True)
    for size in args.sizes:
        path = os.path.join(folder, f"scales-{args.series * size}.parquet")
        if not os.path.exists(path):
            write(path, args.series * size)
        found = {}
        for scaling in SCALINGS:
            out = subprocess.run([sys.executable, __file__, "--child", path, scaling],
                                 capture_output=True, text=True, check=True).stdout
            found[scaling] = json.loads(out.strip().splitlines()[-1])
        none = found["none"]
        for scaling, result in found.items():
            print(f"{size}x ({result['rows']:,} kept timesteps) {scaling:>8}: "
                  f"{result['seconds']:.2f} s ({result['seconds'] / none['seconds']:.2f}x "
                  f"unscaled), peak +{result['peak_mb']:.0f} MB "
                  f"({result['peak_mb'] / max(none['peak_mb'], 1):.2f}x unscaled)")


if __name__ == "__main__":
    main()
