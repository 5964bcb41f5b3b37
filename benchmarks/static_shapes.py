"""Static shapes for XLA: padding, shapes per epoch, and an epoch of a small model on JAX.

    python benchmarks/static_shapes.py [--sequences 3000] [--backends jax tensorflow]

1. On the reference file of `benchmarks/epoch.py` (50,000 sequences, lognormal lengths,
   maxlen 512, batch 64, auto buckets): the buckets, the distinct batch shapes of two
   epochs, and the padding waste (padded / all timesteps of the epoch's batches) with
   `batching.static_shapes` off and on; and one NumPy epoch (`Pipeline.batches`) each way.
2. A GRU(32) with a per-timestep and a per-sequence head, batch 32, maxlen 256, on the first
   `--sequences` sequences of the same distribution, trained for two epochs on each Keras
   backend, static shapes off and on: seconds per epoch, first (compiling) and second. On
   JAX the data comes as `format="grain"` (no TensorFlow in the process); on TensorFlow as
   the tf.data dataset with `jit_compile=True`.

Every training run is a process of its own. Ratios are taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import DATA, _block, ensure_data, seqpipe_config  # noqa: E402

import seqpipe  # noqa: E402

TRAIN = r"""
import json, os, sys, time
import keras
import pyarrow.parquet as pq
import seqpipe

static, path, backend = sys.argv[1] == "1", sys.argv[2], os.environ["KERAS_BACKEND"]
config = seqpipe.load_config({
    "source": {"path": path, "id_column": "id", "time_column": "t"},
    "inputs": {"features": {"columns": [f"f{i}" for i in range(8)]}},
    "outputs": {"label": {"column": "label"},
                "outcome": {"column": "outcome", "level": "sequence"}},
    "padding": {"maxlen": 256, "truncating": "pre"},
    "batching": {"batch_size": 32, "bucket_boundaries": "auto", "static_shapes": static},
    "shuffle": {"buffer_size": 10000, "seed": 42}})
features = keras.Input((None, 8), name="features")
states = keras.layers.GRU(32, return_sequences=True)(features)
label = keras.layers.Dense(1, name="label")(states)
outcome = keras.layers.Dense(1, activation="sigmoid", name="outcome")(
    keras.layers.GlobalAveragePooling1D()(states))
model = keras.Model({"features": features}, {"label": label, "outcome": outcome})
xla = backend == "tensorflow"
model.compile("adam", {"label": "mse", "outcome": "binary_crossentropy"},
              jit_compile=True if xla else "auto")
data = seqpipe.build_dataset(config, format="tf" if xla else "grain")


class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.start)


seconds = []
shapes = [{tuple(x["features"].shape) for x, _, _ in seqpipe.build_dataset(
    config, format="numpy").epoch(k)} for k in (0, 1)]
model.fit(data, epochs=2, verbose=0, callbacks=[Timer()])
waste = seqpipe.Pipeline(config).report.padding_waste
print(json.dumps({"seconds": seconds, "shapes": [len(s) for s in shapes], "waste": waste,
                  "both_epochs": len(shapes[0] | shapes[1]),
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def padding_figures(path: Path) -> dict:
    found = {}
    for static in (False, True):
        pipeline = seqpipe.Pipeline(seqpipe_config(path, static_shapes=static))
        shapes, seconds = set(), []
        for epoch in (0, 1):
            start = time.perf_counter()
            for batch in pipeline.batches(epoch):
                shapes.add(batch.x["features"].shape[:2])
            seconds.append(time.perf_counter() - start)
        report = pipeline.report
        found[static] = {"buckets": len(report.bucket_boundaries) + 1,
                         "boundaries": list(report.bucket_boundaries),
                         "shapes": len(shapes), "waste": report.padding_waste,
                         "unbucketed": report.padding_waste_unbucketed,
                         "batches": report.batches_per_epoch, "numpy_epoch": seconds[1]}
    return found


def train(static: bool, path: Path, backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", TRAIN, "1" if static else "0", str(path)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"training ({backend}, static={static}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=3000)
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    args = parser.parse_args()

    reference = ensure_data(quick=True, lstm_sequences=5000)["reference"]
    figures = padding_figures(reference)
    print(f"{reference.name}: maxlen 512, batch 64, auto buckets")
    print("static  buckets  shapes(2 epochs)  padding waste  unbucketed  batches  numpy epoch")
    for static, f in figures.items():
        print(f"{'on' if static else 'off':<8}{f['buckets']:<9}{f['shapes']:<18}"
              f"{f['waste']:<15.1%}{f['unbucketed']:<12.1%}{f['batches']:<9}"
              f"{f['numpy_epoch']:.2f} s   boundaries {f['boundaries']}")
    print(f"numpy epoch static/dynamic: "
          f"{figures[True]['numpy_epoch'] / figures[False]['numpy_epoch']:.2f}")

    small = DATA / f"small-{args.sequences}.parquet"
    if not small.exists():
        import pyarrow.parquet as pq

        pq.write_table(_block(args.sequences, 0, 7), small)
    print(f"\nGRU(32), two heads, batch 32, maxlen 256, {args.sequences:,} sequences")
    print("backend      static  epoch 1 s  epoch 2 s  shapes per epoch  waste   TF imported")
    for backend in args.backends:
        runs = {static: train(static, small, backend) for static in (False, True)}
        for static, r in runs.items():
            print(f"{backend:<13}{'on' if static else 'off':<8}{r['seconds'][0]:<11.1f}"
                  f"{r['seconds'][1]:<11.1f}{'/'.join(map(str, r['shapes'])):<18}"
                  f"{r['waste']:<8.1%}{r['tensorflow_imported']}")
        for k in (0, 1):
            ratio = runs[False]["seconds"][k] / runs[True]["seconds"][k]
            print(f"  {backend} epoch {k + 1}: dynamic / static = {ratio:.1f}x")


if __name__ == "__main__":
    main()
