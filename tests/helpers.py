"""Helpers the tests share: small tables and Parquet files, and a base config."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STEP = 1000  # feature "code" = sequence number * STEP + timestep number


def long_table(lengths, seed: int = 0, label_missing: float = 0.3,
               outcome_missing: float = 0.3, shuffle_rows: bool = True) -> pa.Table:
    """A long-layout table: one row per timestep, ids 's000', 's001', ...

    Columns: id, t (increasing, with gaps), code (sequence * STEP + timestep, so every real
    timestep is identifiable), x (noise), y (per-timestep label, some NaN), died (per-sequence
    label repeated on its rows, some sequences NaN), age (per-sequence feature).
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    sequence = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    y = rng.normal(size=len(step))
    y[rng.random(len(step)) < label_missing] = np.nan
    died = rng.integers(0, 2, len(lengths)).astype(float)
    died[rng.random(len(lengths)) < outcome_missing] = np.nan
    table = pa.table({
        "id": [f"s{i:03d}" for i in sequence],
        "t": step * 10 + sequence % 7,
        "code": (sequence * STEP + step).astype(np.float64),
        "x": rng.normal(size=len(step)),
        "y": y,
        "died": died[sequence],
        "age": (40 + sequence).astype(np.float64),
    })
    if shuffle_rows:
        table = table.take(rng.permutation(table.num_rows))
    return table


def nested_from_long(table: pa.Table) -> pa.Table:
    """The same sequences as `long_table`, one row per sequence with list columns."""
    frame = table.to_pandas().sort_values(["id", "t"])
    grouped = frame.groupby("id", sort=True)
    return pa.table({
        "id": list(grouped.groups),
        "t": grouped["t"].apply(list).tolist(),
        "code": grouped["code"].apply(list).tolist(),
        "x": grouped["x"].apply(list).tolist(),
        "y": grouped["y"].apply(list).tolist(),
        "died": grouped["died"].first().tolist(),
        "age": grouped["age"].first().tolist(),
        **({"kind": pa.array([[k if isinstance(k, str) else None for k in kinds]
                              for kinds in grouped["kind"].apply(list)], pa.list_(pa.string()))}
           if "kind" in frame else {}),
    })


EVENTS = ["click", "view", "buy", "scroll", None]


def sessions(n: int = 60, seed: int = 0, shuffle: bool = True) -> pa.Table:
    """Long rows of n sessions: timestamps with irregular gaps, numeric vitals with NaNs,
    an integer column, a string event (some null), a per-session device and a per-session
    string class label (some null), and two per-timestep targets (some NaN)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 15, n)
    sequence = np.repeat(np.arange(n), lengths)
    rows = len(sequence)
    step = np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps = rng.integers(1, 600, rows)
    seconds = np.cumsum(gaps) - np.repeat((np.cumsum(gaps) - gaps)[np.cumsum(lengths) - lengths],
                                          lengths)
    hr = rng.normal(80, 12, rows)
    hr[rng.random(rows) < 0.2] = np.nan
    bp = rng.normal(120, 20, rows)
    bp[rng.random(rows) < 0.1] = np.nan
    event = np.array(EVENTS, dtype=object)[rng.choice(5, rows, p=[0.4, 0.3, 0.1, 0.15, 0.05])]
    dx = np.array(["speaker-1", "speaker-2", "speaker-3", None],
                  dtype=object)[rng.choice(4, n, p=[0.5, 0.3, 0.15, 0.05])]
    y1, y2 = rng.normal(size=rows), rng.normal(size=rows)
    y1[rng.random(rows) < 0.15] = np.nan
    y2[rng.random(rows) < 0.15] = np.nan
    table = pa.table({
        "id": pa.array([f"u{i:03d}" for i in sequence]),
        "ts": pa.array(np.datetime64("2026-01-01T00:00:00") + seconds.astype("timedelta64[s]"),
                       pa.timestamp("s")),
        "step": step,
        "hr": hr, "bp": bp,
        "visits": rng.integers(0, 50, rows),  # an integer feature, cast to float32
        "event": pa.array(list(event), pa.string()),
        "device": pa.array([["ios", "android", "web"][i % 3] for i in sequence]),
        "dx": pa.array(list(dx[sequence]), pa.string()),
        "number": sequence.astype(np.float64),  # which session: a per-sequence feature
        "y1": y1, "y2": y2,
    })
    return table.take(rng.permutation(rows)) if shuffle else table


def nest(table: pa.Table, lists=("ts", "hr", "bp", "event", "y1", "y2"),
         firsts=("dx", "number")) -> pa.Table:
    """`sessions` rows as one row per session, with list columns, built with pyarrow."""
    ordered = table.sort_by([("id", "ascending"), ("ts", "ascending")])
    ids = ordered["id"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    offsets = pa.array(np.r_[starts, len(ids)].astype(np.int32))
    return pa.table({"id": ids[starts],
                     **{c: pa.ListArray.from_arrays(offsets, ordered[c].combine_chunks())
                        for c in lists},
                     **{c: ordered[c].take(pa.array(starts)) for c in firsts}})


def sorted_by_id(table: pa.Table) -> pa.Table:
    """The rows sorted by id and time, as a source that streams holds them."""
    import pyarrow.compute as pc

    return table.take(pc.sort_indices(table, [("id", "ascending"), ("t", "ascending")]))


def write(path, table: pa.Table, row_group_size: int = 7) -> str:
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def scatter(table: pa.Table, folder, files: int = 3, seed: int = 0,
            row_group_size: int = 50) -> str:
    """Deals the rows of `table` at random over `files` Parquet files in `folder`, so that
    every file holds a bit of most sequences (a source that has to be grouped whole)."""
    os.makedirs(folder, exist_ok=True)
    file_of = np.random.default_rng(seed).integers(0, files, table.num_rows)
    for k in range(files):
        pq.write_table(table.filter(pa.array(file_of == k)), os.path.join(folder, f"part-{k}.parquet"),
                       row_group_size=row_group_size)
    return str(folder)


def base_config(path=None, layout: str = "long", **sections) -> dict:
    """A config over `long_table` columns; keyword sections replace whole sections."""
    config = {
        "source": {"path": path, "layout": layout, "id_column": "id", "time_column": "t"},
        "inputs": {"steps": {"columns": ["code", "x"]},
                   "static": {"columns": ["age"], "level": "sequence"}},
        "outputs": {"y": {"column": "y"}, "died": {"column": "died", "level": "sequence"}},
        "batching": {"batch_size": 4},
    }
    config.update(sections)
    return config


def raw_sequences(table: pa.Table) -> dict:
    """id -> (codes in time order, labels in time order) straight from pyarrow, for checks."""
    frame = table.to_pandas()
    if frame["t"].dtype == np.float16:  # pandas 2.2 cannot sort by float16
        frame["t"] = frame["t"].astype(np.float32)
    frame = frame.sort_values(["id", "t"])
    return {key: (g["code"].to_numpy(), g["y"].to_numpy()) for key, g in frame.groupby("id")}


def same_batches(a, b, epoch: int = 0) -> list:
    """Asserts two pipelines give equal batches (ids, x, y, weights) in one epoch; returns
    the number of sequences of each batch."""
    sizes = []
    for left, right in zip(a.batches(epoch), b.batches(epoch), strict=True):
        assert left.ids.tolist() == right.ids.tolist()
        for part in ("x", "y", "sample_weight"):
            for name, values in getattr(left, part).items():
                np.testing.assert_array_equal(values, getattr(right, part)[name])
        sizes.append(len(left.ids))
    return sizes


def keras_batch_loss(model, x, y, sample_weight) -> dict:
    """The losses Keras reports for one batch, on every supported Keras: `test_on_batch`
    after `reset_metrics()` (before Keras 3.15, `test_on_batch` keeps a running mean over
    the calls since the last reset)."""
    model.reset_metrics()
    return model.test_on_batch(x, y, sample_weight, return_dict=True)


def child_json(tmp_path, script: str, *arguments, **env) -> dict:
    """Runs `script` in a Python process of its own, with seqpipe importable and `env` set
    (a backend, say), and returns the JSON its last line of output holds."""
    import json
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(script))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, str(path), *map(str, arguments)],
                          env={**os.environ, "PYTHONPATH": repo, **env},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def passing(x, *unused):
    """`x`, with inputs the model does not use tied into its graph: Keras 3.11 to 3.13
    refuse a functional model with an input no output depends on."""
    import keras

    class Passing(keras.layers.Layer):
        def call(self, x, *unused):
            return x

        def compute_output_spec(self, x, *unused):
            return keras.KerasTensor(x.shape, x.dtype)

    return Passing()(x, *unused)
