"""Forecasting windows over many series: seqpipe against the usual ways of making them.

    python benchmarks/windows.py [--sizes 1 5] [--repeats 2] [--ways seqpipe keras numpy]

5,000 daily series of 200 to 2,000 steps (about 5.5 M rows, 1x; 5x has 25,000 series),
sorted by series and day; history 64, horizon 14, stride 1, batch 256, shuffled:
  seqpipe   build_dataset over the Parquet file (streamed by row group)
  keras     the usual workaround: keras.utils.timeseries_dataset_from_array per series,
            joined with tf.data.Dataset.sample_from_datasets (timed over --keras-batches
            batches: a full epoch takes too long)
  numpy     every window cut with NumPy's sliding_window_view, then from_tensor_slices,
            shuffle, batch (fast; holds every window in memory)
  torch     PyTorch Forecasting's TimeSeriesDataSet data loader, when --torch-python names
            a Python that has it (it needs torch, so it gets an environment of its own);
            timed over --keras-batches batches too

Every measurement runs in a process of its own. Peak memory is resident memory above what
the process used after importing TensorFlow (and reading the data, for the ways that read it
whole), over the timed epochs; windows per second are the median of `--repeats` epochs
after one untimed one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import DATA, _peak_mb, _reset_peak, _rss_mb, child_json  # noqa: E402

SERIES = 5_000
HISTORY, HORIZON, BATCH, BUFFER = 64, 14, 256, 65_536


def series_file(size: int) -> Path:
    path = DATA / f"series-{SERIES * size}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    print(f"writing {path.name} ...", file=sys.stderr, flush=True)
    rng = np.random.default_rng(size)
    writer = None
    for first in range(0, SERIES * size, 1_000):
        count = min(1_000, SERIES * size - first)
        lengths = rng.integers(200, 2_001, count)
        series = np.repeat(np.arange(first, first + count), lengths)
        day = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        table = pa.table({
            "id": series.astype(np.int64),
            "day": (np.datetime64("2020-01-01") + day.astype("timedelta64[D]")),
            "units": rng.poisson(20, len(day)).astype(np.float32),
            "price": rng.uniform(1, 3, len(day)).astype(np.float32),
            "dow": (day % 7).astype(np.float32)})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=1 << 17)
    writer.close()
    return path


def windows_of(lengths: np.ndarray) -> int:
    return int(np.maximum(lengths - HISTORY - HORIZON + 1, 0).sum())


def seqpipe_config(path: Path) -> dict:
    return {
        "source": {"path": str(path), "id_column": "id", "time_column": "day"},
        "windows": {"history": HISTORY, "horizon": HORIZON},
        "inputs": {"sales": {"columns": ["units", "price"]},
                   "calendar": {"columns": ["dow"], "window": "future"}},
        "outputs": {"units_next": {"column": "units"}},
        "batching": {"batch_size": BATCH},
        "shuffle": {"buffer_size": BUFFER, "seed": 1}}


def _epochs(make_epoch, repeats: int, baseline: float) -> dict:
    times, peaks, windows = [], [], 0
    for _ in range(repeats + 1):
        _reset_peak()
        start = time.perf_counter()
        windows = make_epoch()
        times.append(time.perf_counter() - start)
        peaks.append(_peak_mb() - baseline)
    seconds = statistics.median(times[1:])
    return {"windows": windows, "epoch_seconds": seconds, "windows_per_second":
            windows / seconds, "peak_mb": max(peaks), "epochs": times}


def child_seqpipe(path: Path, repeats: int) -> dict:
    import tensorflow as tf

    import seqpipe

    tf.constant(0)
    baseline = _rss_mb()
    dataset = seqpipe.build_dataset(seqpipe_config(path))

    def epoch():
        return sum(int(x["sales"].shape[0]) for x, _, _ in dataset)

    return _epochs(epoch, repeats, baseline)


def _columns(path: Path):
    table = pq.read_table(path, columns=["id", "units", "price", "dow"])
    ids = table["id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    bounds = np.r_[starts, len(ids)]
    return ([table[c].to_numpy() for c in ("units", "price", "dow")], bounds)


def child_keras(path: Path, batches: int) -> dict:
    import keras
    import tensorflow as tf

    tf.constant(0)
    baseline = _rss_mb()
    (units, price, dow), bounds = _columns(path)
    start = time.perf_counter()
    per_series = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        steps = np.stack([units[a:b], price[a:b], dow[a:b]], axis=1)
        per_series.append(keras.utils.timeseries_dataset_from_array(
            steps, None, sequence_length=HISTORY + HORIZON, batch_size=None, shuffle=False))

    def split(window):
        return ({"sales": window[:, :HISTORY, :2], "calendar": window[:, HISTORY:, 2:]},
                window[:, HISTORY:, :1])

    joined = tf.data.Dataset.sample_from_datasets(per_series, seed=1).batch(BATCH).map(split)
    setup = time.perf_counter() - start
    _reset_peak()
    start = time.perf_counter()
    count = 0
    for x, _ in joined.take(batches):
        count += int(x["sales"].shape[0])
    seconds = time.perf_counter() - start
    return {"setup_seconds": setup, "windows": count, "epoch_seconds": seconds,
            "windows_per_second": count / seconds, "peak_mb": _peak_mb() - baseline}


def child_numpy(path: Path, repeats: int) -> dict:
    import tensorflow as tf

    tf.constant(0)
    baseline = _rss_mb()
    (units, price, dow), bounds = _columns(path)
    start = time.perf_counter()
    history, future, target = [], [], []
    view = np.lib.stride_tricks.sliding_window_view
    for a, b in zip(bounds[:-1], bounds[1:]):
        steps = np.stack([units[a:b], price[a:b]], axis=1)
        n = b - a - HISTORY - HORIZON + 1
        history.append(view(steps[:b - a - HORIZON], HISTORY, axis=0)[:n].transpose(0, 2, 1))
        future.append(view(dow[a + HISTORY:b], HORIZON)[:n])
        target.append(view(units[a + HISTORY:b], HORIZON)[:n])
    arrays = ({"sales": np.concatenate(history), "calendar": np.concatenate(future)[..., None]},
              np.concatenate(target)[..., None])
    dataset = tf.data.Dataset.from_tensor_slices(arrays).shuffle(
        BUFFER, seed=1).batch(BATCH).prefetch(1)
    setup = time.perf_counter() - start
    setup_peak = _peak_mb() - baseline

    def epoch():
        return sum(int(x["sales"].shape[0]) for x, _ in dataset)

    return {**_epochs(epoch, repeats, baseline), "setup_seconds": setup,
            "setup_peak_mb": setup_peak}


def run(way: str, path: Path, number: int, python: str = sys.executable) -> dict:
    return child_json(__file__, ["--child", way, path, number], python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ways", nargs="+", default=["seqpipe", "keras", "numpy"])
    parser.add_argument("--keras-batches", type=int, default=400,
                        help="batches timed for the two slow ways, keras and torch")
    parser.add_argument("--torch-python", help="a Python with pytorch-forecasting installed")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, path, number = args.child
        if way == "torch":
            from windows_torch import child_torch  # pytorch-forecasting's environment
            print(json.dumps(child_torch(Path(path), int(number), HISTORY, HORIZON, BATCH)))
            return
        function = {"seqpipe": child_seqpipe, "keras": child_keras, "numpy": child_numpy}[way]
        print(json.dumps(function(Path(path), int(number))))
        return
    results: dict = {}
    for size in args.sizes:
        path = series_file(size)
        lengths = pq.read_table(path, columns=["id"])["id"].value_counts().field(
            "counts").to_numpy()
        print(f"{size}x: {len(lengths):,} series, {int(lengths.sum()):,} rows, "
              f"{windows_of(lengths):,} windows", flush=True)
        ways = args.ways + (["torch"] if args.torch_python else [])
        for way in ways if size == args.sizes[0] else ["seqpipe"]:
            number = args.keras_batches if way in ("keras", "torch") else args.repeats
            result = run(way, path, number, args.torch_python if way == "torch"
                         else sys.executable)
            results[way, size] = result
            print(f"  {way}: {result['windows_per_second']:,.0f} windows/s, peak "
                  f"{result['peak_mb']:,.0f} MB"
                  + (f", setup {result['setup_seconds']:.1f} s" if "setup_seconds" in result
                     else "") + f"  {json.dumps(result)}", flush=True)
    first = args.sizes[0]
    ours = results.get(("seqpipe", first))
    for way in ("keras", "numpy", "torch"):
        if ours and (way, first) in results:
            print(f"seqpipe / {way}, windows per second: "
                  f"{ours['windows_per_second'] / results[way, first]['windows_per_second']:.2f}")
    for size in args.sizes[1:]:
        if ours and ("seqpipe", size) in results:
            print(f"seqpipe peak memory, {size}x vs {first}x: "
                  f"{results['seqpipe', size]['peak_mb']:,.0f} vs {ours['peak_mb']:,.0f} MB "
                  f"({results['seqpipe', size]['peak_mb'] - ours['peak_mb']:+,.0f} MB)")


if __name__ == "__main__":
    main()
