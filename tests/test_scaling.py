"""Scaled labels and per-series scaling: the values in the batches and the predictions back
in the data's units, checked against pandas computed straight from the rows."""

import logging

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqpipe import (
    ConfigError,
    Pipeline,
    Statistics,
    build_dataset,
    element_spec,
    load_config,
    predict,
)

CUTOFF = "2024-03-01"


def series(n: int = 14, seed: int = 0) -> pd.DataFrame:
    """Daily rows of n series whose levels differ by up to 10^6: a value `v` (some
    missing), a second feature `w`, and a label `target` (some missing). The last series'
    labels are all missing."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        length = int(rng.integers(3, 40))
        level = 10 ** rng.uniform(0, 6)
        days = np.datetime64("2024-02-01") + int(rng.integers(0, 20)) + np.arange(length)
        v = level * (1 + 0.2 * rng.standard_normal(length))
        v[rng.random(length) < 0.15] = np.nan
        target = level * (1 + 0.3 * rng.standard_normal(length))
        target[rng.random(length) < 0.2] = np.nan
        if i == n - 1:
            target[:] = np.nan
        frames.append(pd.DataFrame({
            "id": f"s{i:02d}", "t": days.astype("datetime64[D]").astype("datetime64[ns]"),
            "v": v, "w": rng.uniform(0, 3, length) * i, "target": target}))
    return pd.concat(frames, ignore_index=True)


def write_long(frame: pd.DataFrame, path) -> str:
    table = pa.Table.from_pandas(frame.sample(frac=1, random_state=1), preserve_index=False)
    pq.write_table(table, path, row_group_size=50)  # ids mixed over row groups: regrouped
    return str(path)


def write_nested(frame: pd.DataFrame, path) -> str:
    grouped = frame.sort_values(["id", "t"]).groupby("id", sort=True)
    pq.write_table(pa.table({"id": list(grouped.groups),
                             **{c: grouped[c].apply(list).tolist()
                                for c in ("t", "v", "w", "target")}}), path, row_group_size=3)
    return str(path)


def config(path, layout="long", inputs=None, target=None, **sections):
    raw = {"source": {"path": path, "layout": layout, "id_column": "id", "time_column": "t",
                      "cache": {"dir": str(path) + ".cache"} if path else False},
           "inputs": {"x": {"columns": ["v", "w"], "fill_value": 0.0,
                            "normalize": inputs or {"method": "standard", "per": "series"}}},
           "outputs": {"y": {"column": "target",
                             "normalize": target or {"method": "minmax", "per": "series"}}},
           "padding": {"maxlen": 25},
           "batching": {"batch_size": 4}, "shuffle": {"buffer_size": 8, "seed": 1}}
    raw.update(sections)
    return load_config(raw)


def pandas_scale(values: pd.Series, method: str) -> tuple[float, float]:
    """(shift, divisor) as the docs promise: from the present values; spread 0 divides by
    the level (1 when that is 0 too); no value at all: (0, 1)."""
    present = values.dropna().to_numpy(np.float64)
    if not len(present):
        return 0.0, 1.0
    if method == "standard":
        shift, spread, level = present.mean(), present.std(ddof=0), abs(present.mean())
    elif method == "minmax":
        shift, spread, level = present.min(), np.ptp(present), abs(present.min())
    else:
        shift, spread, level = 0.0, np.abs(present).mean(), np.abs(present).mean()
    return shift, spread if spread > 0 else (level if level > 0 else 1.0)


def real_rows(pipeline, epoch=0):
    """id -> (x rows, y rows, y weights) at real timesteps, over one epoch."""
    found = {}
    for batch in pipeline.batches(epoch):
        for r, (i, n) in enumerate(zip(batch.ids, batch.lengths)):
            found[i] = (batch.x["x"][r, :n], batch.y["y"][r, :n, 0],
                        batch.sample_weight["y"][r, :n])
    return found


@pytest.mark.parametrize("layout", ["long", "nested", "in-memory"])
@pytest.mark.parametrize("inputs, target", [("standard", "minmax"), ("minmax", "standard"),
                                            ("mean", "mean")])
def test_each_series_is_scaled_by_its_own_kept_present_values(tmp_path, layout, inputs,
                                                              target):
    frame = series()
    path = (write_long(frame, tmp_path / "rows.parquet") if layout == "long" else
            write_nested(frame, tmp_path / "nested.parquet") if layout == "nested" else None)
    cfg = config(path, "nested" if layout == "nested" else "long",
                 {"method": inputs, "per": "series"}, {"method": target, "per": "series"})
    data = pa.Table.from_pandas(frame, preserve_index=False) if path is None else None
    found = real_rows(Pipeline(cfg, data))
    kept = frame.sort_values(["id", "t"]).groupby("id").head(25)  # truncating: post
    assert sorted(found) == sorted(kept.id.unique())
    for key, rows in kept.groupby("id"):
        x, y, weight = found[key]
        for j, column in enumerate(["v", "w"]):
            shift, divisor = pandas_scale(rows[column], inputs)
            expected = ((rows[column] - shift) / divisor).fillna(0.0).to_numpy()
            np.testing.assert_allclose(x[:, j], expected, rtol=2e-6, atol=1e-6)
        shift, divisor = pandas_scale(rows["target"], target)
        present = rows["target"].notna().to_numpy()
        np.testing.assert_array_equal(weight > 0, present)
        np.testing.assert_allclose(y[present], ((rows["target"] - shift) / divisor)[present],
                                   rtol=2e-6, atol=1e-6)
        assert (y[~present] == 0).all()  # the fill value, weight 0


def test_a_series_without_a_label_is_kept_as_read_counted_and_logged(tmp_path, caplog):
    frame = series()
    pipeline = Pipeline(config(write_long(frame, tmp_path / "r.parquet")))
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        real_rows(pipeline)
    assert pipeline.report.unscaled_series == {"outputs.y": 1}
    assert "kept 1 series as read, without a train value to scale them by (outputs.y)" \
        in caplog.text
    assert "unscaled series: 1 sequences of outputs.y" in str(pipeline.report)


def test_labels_scaled_over_the_dataset_use_the_train_parts_present_labels(tmp_path):
    frame = series()
    cfg = config(write_long(frame, tmp_path / "r.parquet"), inputs="standard",
                 target="standard", split={"validation": 0.3, "seed": 2})
    train = Pipeline(cfg, split="train")
    kept = frame.sort_values(["id", "t"]).groupby("id").head(25)
    ids = sorted({i for b in train.batches() for i in b.ids})
    labels = kept[kept.id.isin(ids)]["target"].dropna().astype(np.float32).astype(np.float64)
    stats = train.statistics.columns["y"]["target"]
    assert stats.count == len(labels)
    np.testing.assert_allclose([stats.mean, stats.std], [labels.mean(), labels.std(ddof=0)],
                               rtol=1e-9)
    saved = tmp_path / "stats.json"
    train.statistics.save(saved)
    validation = Pipeline(cfg, split="validation", statistics=Statistics.load(saved))
    for key, (_, y, weight) in real_rows(validation).items():
        raw = kept[kept.id == key]["target"]
        present = raw.notna().to_numpy()
        np.testing.assert_allclose(y[present], ((raw - labels.mean()) / labels.std(ddof=0))
                                   [present], rtol=1e-5, atol=1e-6)


def _zeros(cfg):
    """A model whose prediction is 0 in the model's units at every timestep."""
    x = keras.Input((None, 2), name="x")
    y = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros",
                           name="y")(x)
    return keras.Model({"x": x}, {"y": y})


@pytest.mark.parametrize("target", ["standard", "minmax", "mean"])
def test_predictions_come_back_in_each_series_units(tmp_path, target):
    frame = series()
    cfg = config(write_long(frame, tmp_path / "r.parquet"),
                 target={"method": target, "per": "series"})
    frames = predict(_zeros(cfg), cfg)["y"]
    kept = frame.sort_values(["id", "t"]).groupby("id").head(25)
    assert frames.id.tolist() == kept.id.tolist()
    assert frames.t.tolist() == kept.t.tolist()
    for key, rows in kept.groupby("id"):
        shift, _ = pandas_scale(rows["target"], target)  # 0 in scaled units is the shift
        np.testing.assert_allclose(frames[frames.id == key]["y"], shift, rtol=1e-6)


def test_predictions_of_dataset_scaled_labels_come_back_in_the_data_units(tmp_path):
    frame = series()
    cfg = config(write_long(frame, tmp_path / "r.parquet"), inputs="standard",
                 target="standard")
    labels = frame.sort_values(["id", "t"]).groupby("id").head(25)["target"].dropna()
    predicted = predict(_zeros(cfg), cfg)["y"]["y"]
    np.testing.assert_allclose(predicted, labels.astype(np.float32).mean(), rtol=1e-6)


def test_windows_scale_each_series_by_its_timesteps_before_the_cutoff(tmp_path):
    frame = series(n=20, seed=3)
    history, horizon = 4, 2
    cfg = load_config({
        "source": {"path": write_long(frame, tmp_path / "r.parquet"), "id_column": "id",
                   "time_column": "t", "cache": {"dir": str(tmp_path / "cache")}},
        "windows": {"history": history, "horizon": horizon},
        "inputs": {"x": {"columns": ["v", "w"], "fill_value": 0.0,
                         "normalize": {"per": "series"}}},
        "outputs": {"y": {"column": "v", "normalize": {"per": "series"}}},
        "split": {"time_cutoff": CUTOFF}, "batching": {"batch_size": 8}})
    ordered = frame.sort_values(["id", "t"])
    for part in ("train", "validation"):
        pipeline = Pipeline(cfg, split=part)
        for batch in pipeline.batches():
            for r, (key, end) in enumerate(zip(batch.ids, batch.ends)):
                rows = ordered[ordered.id == key]
                before = rows[rows.t < pd.Timestamp(CUTOFF)]
                if len(before) < history + horizon:  # no train window: kept as read
                    before = before.iloc[:0]
                shift, divisor = pandas_scale(before["v"], "standard")
                window = rows.iloc[end - history - horizon + 1:end + 1]
                expected = ((window["v"] - shift) / divisor).to_numpy()
                present = ~np.isnan(expected)
                np.testing.assert_allclose(batch.x["x"][r, -history:, 0][present[:history]],
                                           expected[:history][present[:history]], rtol=1e-5,
                                           atol=1e-5)
                np.testing.assert_allclose(batch.y["y"][r, :, 0][present[history:]],
                                           expected[history:][present[history:]], rtol=1e-5,
                                           atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"inputs": {"x": {"columns": ["v"], "normalize": {"method": "mean"}}}},
     r"inputs\.x\.normalize: method mean divides each series by its own mean absolute value, "
     r"so it needs per: series; got per: dataset"),
    ({"inputs": {"x": {"columns": ["v"]}, "s": {"columns": ["w"], "level": "sequence",
                                                "normalize": {"per": "series"}}}},
     r"inputs\.s\.normalize: per: series computes statistics over the timesteps of a "
     r"series, and inputs\.s has level: sequence \(one value per sequence"),
    ({"split": {"validation": 0.2}},
     r"outputs\.y\.normalize: per: series scales a sequence's labels by statistics of its own "
     r"labels, so a validation or test sequence would be scaled with the answers it is "
     r"scored on .*split\.holdout_last"),
    ({"outputs": {"y": {"column": "target", "categorical": True, "normalize": "standard"}}},
     r"outputs\.y\.normalize does not apply to a categorical output"),
    ({"inputs": {"x": {"columns": ["v"], "normalize": {"per": "window"}}}},
     r"inputs\.x\.normalize: per: window scales each forecasting window by its own history, "
     r"so it needs a windows section; got none"),
    ({"outputs": {"y": {"column": "target", "normalize": "robust"}}},
     r"outputs\.y\.normalize must be 'standard' or 'minmax' or a mapping of method, per, "
     r"input or null; got 'robust'"),
])
def test_scaling_config_errors_name_the_key_and_say_why(change, message):
    raw = config(None).to_dict()
    raw.update(change)
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def _window_config(path, inputs="standard", target="minmax", **sections):
    raw = {"source": {"path": path, "id_column": "id", "time_column": "t",
                      "cache": {"dir": str(path) + ".cache"}},
           "windows": {"history": 5, "horizon": 2, "min_history": 3},
           "inputs": {"x": {"columns": ["v", "w"], "fill_value": 0.0,
                            "normalize": {"method": inputs, "per": "window"}}},
           "outputs": {"y": {"column": "target",
                             "normalize": {"method": target, "per": "window"}}},
           "padding": {"mask": "real", "value": -7.0},
           "batching": {"batch_size": 8, "static_shapes": True},
           "shuffle": {"buffer_size": 30, "seed": 2}}
    raw.update(sections)
    return load_config(raw)


@pytest.mark.parametrize("inputs, target", [("standard", "minmax"), ("mean", "standard")])
def test_per_window_scaling_uses_each_windows_history_only(tmp_path, inputs, target):
    frame = series(n=12, seed=6)
    pipeline = Pipeline(_window_config(write_long(frame, tmp_path / "r.parquet"), inputs,
                                       target))
    ordered = {key: rows.reset_index(drop=True)
               for key, rows in frame.sort_values(["id", "t"]).groupby("id")}
    seen = 0
    for batch in pipeline.batches():
        for r, (key, end) in enumerate(zip(batch.ids, batch.ends)):
            rows = ordered[key]
            first = end - 2 - 5 + 1  # of the history; < 0: padded at the front
            history = rows.iloc[max(first, 0):end - 1]
            future = rows.iloc[end - 1:end + 1]
            real = batch.x["real"][r]
            assert real.sum() == len(history) and not real[:5 - len(history)].any()
            for j, column in enumerate(["v", "w"]):
                shift, divisor = pandas_scale(history[column], inputs)
                expected = ((history[column] - shift) / divisor).fillna(0.0).to_numpy()
                np.testing.assert_allclose(batch.x["x"][r, real, j], expected, rtol=1e-5,
                                           atol=1e-5)
                assert (batch.x["x"][r, ~real, j] == -7.0).all()
            shift, divisor = pandas_scale(history["target"], target)  # never the horizon's
            present = future["target"].notna().to_numpy()
            np.testing.assert_array_equal(batch.sample_weight["y"][r] > 0, present)
            np.testing.assert_allclose(batch.y["y"][r, present, 0],
                                       ((future["target"] - shift) / divisor)[present],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch.scales["y"][0][r], [shift], rtol=1e-5)
            seen += 1
    assert seen == pipeline.report.windows.windows


def test_per_window_predictions_come_back_in_the_data_units(tmp_path):
    frame = series(n=12, seed=6)
    cfg = _window_config(write_long(frame, tmp_path / "r.parquet"), target="standard")
    x = keras.Input((5, 2), name="x")
    real = keras.Input((5,), name="real", dtype="bool")
    # Every input feeds the output: Keras before 3.14 refuses a model with an unused one.
    real_steps = keras.layers.Reshape((5, 1))(keras.ops.cast(real, "float32"))
    masked = keras.layers.Multiply()([x, real_steps])
    zeros = keras.layers.Dense(2, kernel_initializer="zeros")(keras.layers.Flatten()(masked))
    y = keras.layers.Reshape((2, 1), name="y")(zeros)
    predicted = predict(keras.Model({"x": x, "real": real}, {"y": y}), cfg)["y"]
    ordered = {key: rows.reset_index(drop=True)
               for key, rows in frame.sort_values(["id", "t"]).groupby("id")}
    assert len(predicted) == 2 * Pipeline(cfg).report.windows.windows
    for (key, window_end), rows in predicted.groupby(["id", "window_end"]):
        series_rows = ordered[key]
        end = int(np.flatnonzero(series_rows["t"].to_numpy() == np.datetime64(window_end))[0])
        history = series_rows.iloc[max(end - 6, 0):end - 1]
        shift, _ = pandas_scale(history["target"], "standard")  # 0 scaled is the shift
        np.testing.assert_allclose(rows["y"], shift, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"inputs.x.window": "future"},
     r"inputs\.x\.normalize: per: window scales by the window's history, and inputs\.x "
     r"feeds the horizon \(window: future\)"),
    ({"windows.horizon": 0, "outputs.y.column": "other"},
     r"outputs\.y\.normalize: per: window scales the horizon's labels by the history before "
     r"it, and windows\.horizon is 0"),
])
def test_per_window_config_errors_say_why(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_window_config("x.parquet"), change)


def test_a_scale_input_holds_each_series_shift_and_divisor_and_fits(tmp_path):
    frame = series()
    cfg = config(write_long(frame, tmp_path / "r.parquet"),
                 inputs={"per": "series", "input": "x_scale"},
                 batching={"batch_size": 4, "static_shapes": True})
    x_spec, _, _ = element_spec(cfg)
    assert tuple(x_spec["x_scale"].shape) == (4, 4) and x_spec["x_scale"].dtype == "float32"
    kept = frame.sort_values(["id", "t"]).groupby("id").head(25)
    pipeline = Pipeline(cfg)
    empty_rows = 0
    for batch in pipeline.batches():
        for r, key in enumerate(batch.ids):
            rows = kept[kept.id == key]
            (sv, dv), (sw, dw) = (pandas_scale(rows[c], "standard") for c in ("v", "w"))
            np.testing.assert_allclose(batch.x["x_scale"][r], [sv, sw, dv, dw], rtol=1e-6)
        for r in range(len(batch.ids), 4):  # empty rows: shift 0, divisor 1, never log(0)
            np.testing.assert_array_equal(batch.x["x_scale"][r], [0, 0, 1, 1])
            empty_rows += 1
    assert empty_rows
    x = keras.Input((25, 2), name="x")
    scale = keras.Input((4,), name="x_scale")
    level = keras.layers.Dense(1)(keras.ops.log(scale[:, 2:]))
    y = keras.layers.Add(name="y")([keras.layers.Dense(1)(x),
                                    keras.layers.RepeatVector(25)(level)])
    model = keras.Model({"x": x, "x_scale": scale}, {"y": y})
    model.compile("adam", loss="mse")
    history = model.fit(build_dataset(cfg), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_a_window_scale_input_holds_the_scales_of_its_history(tmp_path):
    frame = series(n=12, seed=6)
    cfg = _window_config(write_long(frame, tmp_path / "r.parquet"))
    cfg = load_config(cfg, {"outputs.y.normalize.input": "y_scale"})
    for batch in Pipeline(cfg).batches():
        shift, divisor = batch.scales["y"]
        rows = len(batch.ids)
        np.testing.assert_allclose(batch.x["y_scale"][:rows],
                                   np.concatenate([shift, divisor], axis=1)[:rows], rtol=1e-7)


@pytest.mark.parametrize("change, message", [
    ({"inputs.x.normalize": {"input": "s"}},
     r"inputs\.x\.normalize\.input \('s'\) would hold one scale for every row with per: "
     r"dataset; it needs per: series or per: window"),
    ({"inputs.x.normalize": {"per": "series", "input": "y"}},
     r"inputs\.x\.normalize\.input must name an input of its own, not an input, output, the "
     r"mask or another scale input; got 'y'"),
])
def test_scale_input_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config(None), change)


def test_materialize_refuses_a_per_series_scale_input(tmp_path):
    from seqpipe import materialize

    cfg = config(write_long(series(), tmp_path / "r.parquet"),
                 inputs={"per": "series", "input": "x_scale"})
    with pytest.raises(ConfigError, match=r"inputs\.x\.normalize\.input: a materialized output "
                                          r"stores values already scaled per series"):
        materialize(cfg, tmp_path / "out")


def test_predict_from_a_materialized_output_scaled_per_series_says_what_to_do(tmp_path):
    from seqpipe import materialize

    cfg = config(write_long(series(), tmp_path / "r.parquet"))
    materialize(cfg, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"holds 'y' already scaled per series, and the "
                                          r"scales of each series are not stored with it; read "
                                          r"the Parquet source with the same config instead"):
        predict(_zeros(cfg), str(tmp_path / "out"))
