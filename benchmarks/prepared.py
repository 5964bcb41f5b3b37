"""What preparing values costs: an epoch with `normalize: standard` against the same epoch
without, on the reference file.

    python benchmarks/prepared.py [--pairs 8]

Both pipelines are built once (the statistics pass is timed on its own: a build that
computes statistics against a build given the same statistics); then each pair runs one
epoch of each (build_dataset and every batch) in alternating order, and the ratio of each
pair's times is taken in the same run, because absolute times on shared machines are
noisy. The data is epoch.py's reference file (50 k sequences, 6.2 M rows, 8 features).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import FEATURES, ensure_data, seqpipe_config  # noqa: E402


def configs(path: Path) -> tuple[dict, dict]:
    plain = seqpipe_config(path)
    prepared = seqpipe_config(path)
    prepared["inputs"] = {"features": {"columns": FEATURES, "normalize": "standard"}}
    return plain, prepared


def epoch(pipeline) -> float:
    import seqpipe

    start = time.perf_counter()
    for _ in seqpipe.build_dataset(pipeline):
        pass
    return time.perf_counter() - start


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    import tensorflow as tf

    import seqpipe

    tf.constant(0)
    path = ensure_data(quick=True, lstm_sequences=5000)["reference"]
    plain_config, prepared_config = (seqpipe.load_config(c)
                                     for c in configs(path))
    seqpipe.Pipeline(prepared_config)  # warm-up: compiled kernels load on first use
    plain, plain_build = timed(lambda: seqpipe.Pipeline(plain_config))
    prepared, prepared_build = timed(lambda: seqpipe.Pipeline(prepared_config))
    _, given_build = timed(lambda: seqpipe.Pipeline(prepared_config,
                                                    statistics=prepared.statistics))
    print(f"build: plain {plain_build:.2f} s, normalize {prepared_build:.2f} s, normalize "
          f"with statistics given {given_build:.2f} s -> the statistics pass "
          f"{prepared_build - given_build:.2f} s")
    epoch(plain), epoch(prepared)  # warm-up: compiled kernels, TensorFlow's first ops
    ratios, times = [], {"plain": [], "normalize": []}
    for k in range(args.pairs):
        order = [("plain", plain), ("normalize", prepared)]
        if k % 2:
            order.reverse()
        pair = {name: epoch(pipeline) for name, pipeline in order}
        for name, seconds in pair.items():
            times[name].append(seconds)
        ratios.append(pair["normalize"] / pair["plain"])
        print(f"pair {k}: plain {pair['plain']:.2f} s, normalize {pair['normalize']:.2f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"epoch, median of {args.pairs} pairs: plain {statistics.median(times['plain']):.2f}"
          f" s, normalize {statistics.median(times['normalize']):.2f} s; ratio median "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
