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
    })


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
    frame = table.to_pandas().sort_values(["id", "t"])
    return {key: (g["code"].to_numpy(), g["y"].to_numpy()) for key, g in frame.groupby("id")}
