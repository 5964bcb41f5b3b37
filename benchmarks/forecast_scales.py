"""Forecasting series whose scales differ by 10^6: per-series scaling against dataset-wide
scaling and against repeating the last value, on each series' held-out last week.

Writes synthetic daily series (levels from 1 to 10^6, a weekly pattern, a trend and noise)
to Parquet, trains the same small Keras model on seqpipe's windows with each scaling, and
scores `seqpipe.predict`'s forecasts in the data's units on the windows `split.holdout_last`
held out. The score is scale-free: each series' mean absolute error divided by its own
mean absolute value over its train timesteps, averaged over series (a series at 10^6 and
one at 1 count alike).

    python benchmarks/forecast_scales.py [--series 300] [--epochs 12]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import seqpipe  # noqa: E402

HISTORY, HORIZON = 28, 7


def make_series(count: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        length = int(rng.integers(80, 200))
        level = 10 ** rng.uniform(0, 6)
        day = np.arange(length)
        weekly = np.sin(2 * np.pi * (day + rng.integers(0, 7)) / 7) * rng.uniform(0.1, 0.4)
        trend = rng.uniform(-0.002, 0.004) * day
        noise = 0.05 * rng.standard_normal(length)
        frames.append(pd.DataFrame({
            "series": f"s{i:04d}", "day": np.datetime64("2025-01-01") + day,
            "sales": level * np.maximum(1 + weekly + trend + noise, 0.05)}))
    return pd.concat(frames, ignore_index=True)


def config(path: str, normalize) -> dict:
    return {"source": {"path": path, "id_column": "series", "time_column": "day"},
            "windows": {"history": HISTORY, "horizon": HORIZON},
            "inputs": {"history": {"columns": ["sales"], "normalize": normalize}},
            "outputs": {"next": {"column": "sales", "normalize": normalize}},
            "split": {"holdout_last": HORIZON},
            "batching": {"batch_size": 128}, "shuffle": {"buffer_size": 50_000, "seed": 1}}


def model() -> keras.Model:
    history = keras.Input((HISTORY, 1), name="history")
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(history))
    out = keras.layers.Reshape((HORIZON, 1), name="next")(keras.layers.Dense(HORIZON)(hidden))
    forecaster = keras.Model({"history": history}, {"next": out})
    forecaster.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    return forecaster


def score(forecasts: pd.DataFrame, frame: pd.DataFrame, column: str) -> tuple[float, float]:
    """(mean over series of MAE / the series' mean |value| before its held-out days,
    share of series where this beats repeating the last value)."""
    errors, naive_errors = [], []
    for key, rows in frame.groupby("series"):
        mine = forecasts[forecasts.series == key].sort_values("day")
        train = rows.iloc[:-HORIZON]["sales"].to_numpy()
        truth = rows.iloc[-HORIZON:]["sales"].to_numpy()
        scale = np.abs(train).mean()
        errors.append(np.abs(mine[column].to_numpy() - truth).mean() / scale)
        naive_errors.append(np.abs(train[-1] - truth).mean() / scale)
    errors, naive_errors = np.array(errors), np.array(naive_errors)
    return float(errors.mean()), float((errors < naive_errors).mean())


def naive(frame: pd.DataFrame) -> float:
    scores = []
    for _, rows in frame.groupby("series"):
        train = rows.iloc[:-HORIZON]["sales"].to_numpy()
        truth = rows.iloc[-HORIZON:]["sales"].to_numpy()
        scores.append(np.abs(train[-1] - truth).mean() / np.abs(train).mean())
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("seqpipe").setLevel(logging.ERROR)  # the straddling windows, each run
    frame = make_series(args.series, args.seed).sort_values(["series", "day"])
    levels = frame.groupby("series")["sales"].mean()
    print(f"{args.series} series, {len(frame):,} days; mean levels from {levels.min():.3g} "
          f"to {levels.max():.3g} ({levels.max() / levels.min():.1e}x)")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "sales.parquet")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        print(f"repeat the last value: scaled MAE {naive(frame):.4f}")
        for label, normalize in (("per-series standard", {"per": "series"}),
                                 ("per-series mean", {"method": "mean", "per": "series"}),
                                 ("dataset-wide standard", "standard")):
            keras.utils.set_random_seed(args.seed)
            cfg = config(path, normalize)
            train = seqpipe.build_dataset(cfg, split="train")
            forecaster = model()
            started = time.perf_counter()
            forecaster.fit(train, epochs=args.epochs, verbose=0, shuffle=False)
            forecasts = seqpipe.predict(forecaster, cfg, split="validation")["next"]
            mae, wins = score(forecasts, frame, "next")
            print(f"{label}: scaled MAE {mae:.4f}, beats repeating the last value on "
                  f"{wins:.0%} of series ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
