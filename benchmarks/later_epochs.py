"""Later epochs from memory: seqpipe's epochs after the first, against the competent pandas
pipeline whose padded arrays sit in memory, and what keeping them costs.

    python benchmarks/later_epochs.py            # 7 pairs of each comparison
    python benchmarks/later_epochs.py --pairs 11

On the reference file of benchmarks/epoch.py (50 k sequences, 6.2 M rows; written to
benchmarks/data/ if missing, with its 5x copy):

1. Epoch 2 and later, in one process, interleaved pairs: seqpipe's tf.data dataset built
   from the prepared sequences its first epoch kept, against pandas group-by +
   `keras.utils.pad_sequences` + `tf.data.Dataset.from_tensor_slices(...).batch(64)`, the
   pipeline a competent user writes, whose padded arrays are in memory from the start;
   and seqpipe's NumPy output from memory, which leaves out the tf.data hand-off.
2. The first epoch (build and epoch 0) with the default `source.memory_mb` against
   `memory_mb: 0`, interleaved pairs in one process: what keeping the chunks costs while
   they are read.
3. Peak resident memory, each in a process of its own, above what the process held after
   importing TensorFlow: seqpipe over three epochs (the reference file, kept; the same with
   `memory_mb: 0`; the 5x file, which does not fit the default budget and streams), and
   the pandas pipeline over three epochs.

Ratios are per pair, taken in the same run (these machines are noisy): median and range.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch import FEATURES, MAXLEN, _peak_mb, _reset_peak, _rss_mb, ensure_data, seqpipe_config


def pandas_dataset(path: Path):
    """pandas group-by with np.split, pad_sequences, from_tensor_slices: the arrays padded
    to maxlen once, in memory."""
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


def seqpipe_dataset(path: Path, format: str = "tf", **overrides):
    import seqpipe

    config = seqpipe.load_config(seqpipe_config(path), overrides)
    return seqpipe.build_dataset(config, format=format)


def epoch_seconds(dataset) -> float:
    start = time.perf_counter()
    for _ in dataset:
        pass
    return time.perf_counter() - start


def later_epochs(path: Path, pairs: int) -> dict:
    kept, pandas = seqpipe_dataset(path), pandas_dataset(path)
    numpy = seqpipe_dataset(path, format="numpy")
    for dataset in (kept, pandas, numpy):  # epoch 1: seqpipe reads and keeps
        epoch_seconds(dataset)
    times: dict = {"seqpipe": [], "pandas": [], "numpy": []}
    for _ in range(pairs):
        times["seqpipe"].append(epoch_seconds(kept))
        times["pandas"].append(epoch_seconds(pandas))
        times["numpy"].append(epoch_seconds(numpy))
    return times


def first_epochs(path: Path, pairs: int) -> dict:
    def once(**overrides) -> float:
        start = time.perf_counter()
        epoch_seconds(seqpipe_dataset(path, **overrides))
        return time.perf_counter() - start

    once(), once(**{"source.memory_mb": 0})  # warm-up: compiled code, TensorFlow's ops
    times = {"kept": [], "streamed": []}
    for _ in range(pairs):
        times["kept"].append(once())
        times["streamed"].append(once(**{"source.memory_mb": 0}))
    return times


def peak(which: str, path: Path) -> dict:
    """Peak resident memory (MB) above the process's after importing TensorFlow, over
    building and three epochs."""
    import tensorflow as tf

    tf.constant(0)
    base = _rss_mb()
    _reset_peak()
    if which == "pandas":
        dataset = pandas_dataset(path)
    else:
        dataset = seqpipe_dataset(path, **({"source.memory_mb": 0} if which == "streamed"
                                           else {}))
    seconds = [epoch_seconds(dataset) for _ in range(3)]
    return {"peak_mb": _peak_mb() - base, "seconds": seconds}


def summary(ratios: list) -> str:
    return (f"median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-"
            f"{max(ratios):.2f}, {len(ratios)} pairs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    if args.child:
        which, path = args.child
        print(json.dumps(peak(which, Path(path))))
        return
    paths = ensure_data(quick=False, lstm_sequences=5000)
    reference, large = paths["reference"], paths["large"]

    later = later_epochs(reference, args.pairs)
    ratios = [s / p for s, p in zip(later["seqpipe"], later["pandas"])]
    print(f"epoch 2+, seqpipe from memory / pandas padded in memory: {summary(ratios)}; "
          f"seconds {statistics.median(later['seqpipe']):.3f} vs "
          f"{statistics.median(later['pandas']):.3f}")
    ratios = [n / p for n, p in zip(later["numpy"], later["pandas"])]
    print(f"epoch 2+, seqpipe format='numpy' from memory / pandas: {summary(ratios)}; "
          f"seconds {statistics.median(later['numpy']):.3f}")

    first = first_epochs(reference, args.pairs)
    ratios = [k / s for k, s in zip(first["kept"], first["streamed"])]
    print(f"build + first epoch, memory_mb default / 0: {summary(ratios)}; seconds "
          f"{statistics.median(first['kept']):.3f} vs {statistics.median(first['streamed']):.3f}")

    for which, path in (("kept", reference), ("streamed", reference), ("kept", large),
                        ("pandas", reference)):
        done = subprocess.run([sys.executable, __file__, "--child", which, str(path)],
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"peak memory, {which}, {path.name}: {result['peak_mb']:,.0f} MB; epochs "
              f"{', '.join(f'{s:.2f}' for s in result['seconds'])} s")


if __name__ == "__main__":
    main()
