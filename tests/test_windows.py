"""Forecasting windows against a brute-force reference written plainly here (pandas
group-by and Python loops over positions), on real Parquet files whose rows are shuffled
across files, and against real Keras."""

from __future__ import annotations

import datetime
import logging
import os

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import seqpipe
from seqpipe import ConfigError, DataError, Pipeline, load_config
from seqpipe.cli.command import main
from seqpipe.lockstep import Lockstep
from tests.helpers import keras_batch_loss, passing

START = np.datetime64("2024-01-01")
CUTOFF = "2024-02-10"


def stores(n: int = 12, seed: int = 0, shortest: int = 1, longest: int = 60) -> pd.DataFrame:
    """Daily rows of n stores: units sold (some missing), price, day of week, a holiday
    flag, the store's size (one per store), and `code` = store * 1000 + day number, so that
    every timestep is identifiable."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        length = int(rng.integers(shortest, longest + 1))
        first = int(rng.integers(0, 30))
        days = START + np.arange(first, first + length).astype("timedelta64[D]")
        units = rng.poisson(20, length).astype(float)
        units[rng.random(length) < 0.15] = np.nan
        frames.append(pd.DataFrame({
            "store": f"st{i:02d}", "day": days, "units": units,
            "price": rng.uniform(1, 3, length), "dow": (days.astype("int64") + 3) % 7,
            "holiday": (rng.random(length) < 0.1).astype(float),
            "size": float(100 + i), "code": i * 1000.0 + np.arange(length)}))
    frame = pd.concat(frames, ignore_index=True)
    frame["dow"] = frame["dow"].astype(float)
    return frame


def write_shuffled(frame: pd.DataFrame, folder, files: int = 3) -> str:
    """The rows dealt at random over several files, small row groups."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    shuffled = frame.sample(frac=1, random_state=2)
    file_of = rng.integers(0, files, len(shuffled))
    for k in range(files):
        table = pa.Table.from_pandas(shuffled[file_of == k], preserve_index=False)
        pq.write_table(table, os.path.join(folder, f"part-{k}.parquet"), row_group_size=40)
    return str(folder)


def write_nested(frame: pd.DataFrame, path) -> str:
    grouped = frame.sort_values(["store", "day"]).groupby("store", sort=True)
    table = pa.table({
        "store": list(grouped.groups),
        **{c: grouped[c].apply(list).tolist() for c in
           ("day", "units", "price", "dow", "holiday", "code")},
        "size": grouped["size"].first().tolist()})
    pq.write_table(table, path, row_group_size=4)
    return str(path)


def config(path, history=5, horizon=3, stride=1, min_history=None, layout="long", **more):
    raw = {
        "source": {"path": path, "layout": layout, "id_column": "store", "time_column": "day"},
        "windows": {"history": history, "horizon": horizon, "stride": stride,
                    "min_history": min_history},
        "inputs": {"sales": {"columns": ["units", "price", "code"], "fill_value": 0.0},
                   "calendar": {"columns": ["dow", "holiday"],
                                **({"window": "future"} if horizon else {})},
                   "store": {"columns": ["size"], "level": "sequence"}},
        "outputs": {"units_next": {"column": "units"}},
        "padding": {"mask": "real"},
        "batching": {"batch_size": 8},
        "shuffle": {"buffer_size": 20, "seed": 4},
    }
    if horizon == 0:  # labels aligned with the history: the label may not be an input too
        raw["inputs"]["sales"]["columns"] = ["price", "code"]
    for key, value in more.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return load_config(raw)


def reference(frame: pd.DataFrame, history, horizon, stride, min_history=None, cutoff=None,
              part=None) -> dict:
    """(store, end day) -> what the window holds, by brute force."""
    min_history = min_history or history
    cutoff = None if cutoff is None else np.datetime64(cutoff)
    windows = {}
    for store, rows in frame.sort_values(["store", "day"]).groupby("store"):
        days = rows["day"].to_numpy()
        length = len(rows)
        end = length - 1
        ends = []
        while end - horizon + 1 >= min_history:
            ends.append(end)
            end -= stride
        for end in ends:
            history_at = list(range(end - horizon - history + 1, end - horizon + 1))
            target_at = list(range(end - horizon + 1, end + 1)) if horizon else history_at
            if cutoff is not None:
                real_targets = [p for p in target_at if p >= 0]
                if part == "train" and not all(days[p] < cutoff for p in real_targets):
                    continue
                if part == "validation" and not days[real_targets[0]] >= cutoff:
                    continue

            def values(column, positions, fill=0.0, rows=rows):
                out = []
                for p in positions:
                    value = rows[column].iloc[p] if p >= 0 else fill
                    out.append(fill if pd.isna(value) else value)
                return out

            sales_columns = ["units", "price", "code"] if horizon else ["price", "code"]
            windows[store, days[end]] = {
                "sales": np.array([values(c, history_at) for c in sales_columns]).T,
                "calendar": np.array([values(c, target_at if horizon else history_at)
                                      for c in ("dow", "holiday")]).T,
                "store": rows["size"].iloc[0],
                "real": np.array([p >= 0 for p in history_at]),
                "target": np.array(values("units", target_at)),
                "present": np.array([p >= 0 and not pd.isna(rows["units"].iloc[p])
                                     for p in target_at]),
            }
    return windows


def produced(pipeline: Pipeline, frame: pd.DataFrame, epoch: int = 0,
             batch_mean: bool = True) -> dict:
    """(store, end day) -> the same, from the pipeline's batches; each window once.
    `batch_mean`: check each batch's weights are its own mean's (not a global step's)."""
    days = {store: rows["day"].to_numpy()
            for store, rows in frame.sort_values(["store", "day"]).groupby("store")}
    found = {}
    for batch in pipeline.batches(epoch):
        weights = batch.sample_weight["units_next"]
        valid = weights > 0
        size, steps = weights.shape
        if batch_mean:
            np.testing.assert_allclose(weights[valid], size * steps / valid.sum(), rtol=1e-6)
        for row, (store, end) in enumerate(zip(batch.ids, batch.ends)):
            key = (store, days[store][end])
            assert key not in found, f"window {key} twice in one epoch"
            found[key] = {
                "sales": batch.x["sales"][row], "calendar": batch.x["calendar"][row],
                "store": batch.x["store"][row, 0], "real": batch.x["real"][row],
                "target": batch.y["units_next"][row, :, 0], "present": valid[row]}
    return found


def assert_same_windows(found: dict, expected: dict) -> None:
    assert sorted(found) == sorted(expected)
    for key, window in expected.items():
        for name, value in window.items():
            np.testing.assert_allclose(found[key][name], value, rtol=1e-6,
                                       err_msg=f"{name} of window {key}")


CASES = [(5, 3, 1, None), (4, 2, 3, 2), (6, 1, 2, 1), (3, 0, 1, None), (4, 0, 2, 1),
         (2, 4, 7, None)]


@pytest.mark.parametrize("history,horizon,stride,min_history", CASES,
                         ids=[f"H{h}-h{f}-s{s}-m{m}" for h, f, s, m in CASES])
@pytest.mark.parametrize("layout", ["long", "nested"])
def test_every_window_equals_the_brute_force_reference(tmp_path, history, horizon, stride,
                                                       min_history, layout):
    frame = stores()
    path = (write_shuffled(frame, tmp_path / "rows") if layout == "long"
            else write_nested(frame, tmp_path / "nested.parquet"))
    pipeline = Pipeline(config(path, history, horizon, stride, min_history, layout))
    expected = reference(frame, history, horizon, stride, min_history)
    assert_same_windows(produced(pipeline, frame), expected)
    assert pipeline.report.windows.windows == len(expected)


@pytest.mark.parametrize("history,horizon,stride,min_history", CASES[:4],
                         ids=[f"H{h}-h{f}-s{s}-m{m}" for h, f, s, m in CASES[:4]])
@pytest.mark.parametrize("part", ["train", "validation"])
@pytest.mark.parametrize("layout", ["long", "nested"])
def test_a_time_cutoff_splits_windows_as_the_reference_does(tmp_path, history, horizon, stride,
                                                           min_history, part, layout):
    frame = stores()
    path = (write_shuffled(frame, tmp_path / "rows") if layout == "long"
            else write_nested(frame, tmp_path / "nested.parquet"))
    pipeline = Pipeline(config(path, history, horizon, stride, min_history, layout,
                               split__time_cutoff=CUTOFF), split=part)
    expected = reference(frame, history, horizon, stride, min_history, CUTOFF, part)
    found = produced(pipeline, frame)
    assert_same_windows(found, expected)
    assert found
    if part == "train":  # no target (the last one is the end) at or after the cutoff
        assert all(end < np.datetime64(CUTOFF) for _, end in found)


@pytest.mark.parametrize("cutoff", ["40 days", 40 * 86400, "bad"])
def test_a_duration_time_column_takes_a_duration_cutoff(tmp_path, cutoff):
    frame = stores()
    durations = frame.assign(day=frame["day"] - START)  # timedelta64: time since the start
    path = write_shuffled(durations, tmp_path / "rows")
    if cutoff == "bad":
        with pytest.raises(ConfigError, match=r"split\.time_cutoff must be a duration such as "
                                              r"'36h' or '2 days', or a number of seconds, "
                                              r"because source\.time_column 'day' in .* holds "
                                              r"durations; got 'bad'"):
            Pipeline(config(path, split__time_cutoff=cutoff), split="train")
        return
    for part in ("train", "validation"):
        pipeline = Pipeline(config(path, split__time_cutoff=cutoff), split=part)
        assert_same_windows(produced(pipeline, frame),
                            reference(frame, 5, 3, 1, None, CUTOFF, part))


def test_windows_across_the_cutoff_are_in_neither_part_and_counted(tmp_path):
    frame = stores()
    path = write_shuffled(frame, tmp_path / "rows")
    every = reference(frame, 5, 3, 1)
    train = Pipeline(config(path, split__time_cutoff=CUTOFF), split="train")
    validation = Pipeline(config(path, split__time_cutoff=CUTOFF), split="validation")
    across = len(every) - train.report.windows.windows - validation.report.windows.windows
    assert across > 0
    assert train.report.windows.across_cutoff == across
    assert f"left out {across:,} windows whose targets straddle" in str(train.report)


def test_statistics_come_from_the_train_windows_timesteps_only(tmp_path):
    frame = stores()
    path = write_shuffled(frame, tmp_path / "rows")
    cfg = load_config(config(path, split__time_cutoff=CUTOFF),
                      {"inputs.sales.normalize": "standard", "windows.stride": 2})
    pipeline = Pipeline(cfg, split="validation")
    covered = []  # every timestep of every train window, once
    for store, rows in frame.sort_values(["store", "day"]).groupby("store"):
        positions = set()
        for (_, end_day), _window in reference(frame[frame.store == store], 5, 3, 2, None,
                                         CUTOFF, "train").items():
            end = int(np.flatnonzero(rows["day"].to_numpy() == end_day)[0])
            positions.update(p for p in range(end - 7, end + 1) if p >= 0)
        covered.append(rows.iloc[sorted(positions)])
    covered = pd.concat(covered)
    assert covered["day"].max() < pd.Timestamp(CUTOFF)
    units = covered["units"].dropna().astype(np.float32).astype(np.float64)
    stats = pipeline.statistics.columns["sales"]["units"]
    assert stats.count == len(units)
    np.testing.assert_allclose([stats.mean, stats.std], [units.mean(), units.std(ddof=0)],
                               rtol=1e-6)
    whole = frame["units"].dropna()
    assert stats.count < len(whole)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=12),
       history=st.integers(1, 6), horizon=st.integers(0, 4), stride=st.integers(1, 5),
       shortest=st.integers(1, 6), batch=st.integers(1, 9), buffer=st.integers(0, 40),
       seed=st.integers(0, 3))
def test_no_window_crosses_a_sequence_and_each_is_in_its_epoch_once(
        lengths, history, horizon, stride, shortest, batch, buffer, seed):
    shortest = min(shortest, history)
    sequence = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(len(sequence)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    table = pa.table({"id": sequence, "t": step, "code": sequence * 1000.0 + step,
                      "y": np.ones(len(step))}).take(np.random.default_rng(seed).permutation(
                          len(step)))
    cfg = load_config({
        "source": {"id_column": "id", "time_column": "t"},
        "windows": {"history": history, "horizon": horizon, "stride": stride,
                    "min_history": shortest},
        "inputs": {"code": {"columns": ["code"]}}, "outputs": {"y": {"column": "y"}},
        "padding": {"mask": "real", "value": -1.0},
        "batching": {"batch_size": batch}, "shuffle": {"buffer_size": buffer, "seed": seed}})
    expected = sum(max(0, (n - 1 - (shortest + horizon - 1)) // stride + 1)
                   for n in lengths if n - 1 >= shortest + horizon - 1)
    try:
        pipeline = Pipeline(cfg, data=table)
    except DataError as e:
        assert expected == 0 and "no windows" in str(e)
        return
    for epoch in (0, 1):
        seen = set()
        for b in pipeline.batches(epoch):
            codes, real = b.x["code"][..., 0], b.x["real"]
            for row, (i, end) in enumerate(zip(b.ids, b.ends)):
                history_codes = codes[row][real[row]]
                first = end - horizon - real[row].sum() + 1
                assert history_codes.tolist() == (i * 1000 + np.arange(
                    first, end - horizon + 1)).tolist()
                assert (codes[row][~real[row]] == -1).all()
                assert 0 <= end < lengths[i] and real[row].sum() >= shortest
                assert (int(i), int(end)) not in seen
                seen.add((int(i), int(end)))
        assert len(seen) == expected


def test_the_same_seed_gives_the_same_batches_and_epochs_differ(tmp_path):
    frame = stores(n=20)
    path = write_shuffled(frame, tmp_path / "rows")
    first, again = Pipeline(config(path)), Pipeline(config(path))
    order = [(tuple(b.ids), tuple(b.ends)) for b in first.batches(0)]
    assert order == [(tuple(b.ids), tuple(b.ends)) for b in again.batches(0)]
    assert order != [(tuple(b.ids), tuple(b.ends)) for b in first.batches(1)]
    mixed = [len(set(ids)) for ids, _ in order]
    assert max(mixed) > 1  # a batch mixes windows of several stores


def test_a_dataset_has_static_window_shapes_and_gives_the_pipeline_batches(tmp_path):
    frame = stores()
    path = write_shuffled(frame, tmp_path / "rows")
    cfg = config(path)
    spec = seqpipe.element_spec(cfg)
    assert spec[0]["sales"].shape.as_list() == [None, 5, 3]
    assert spec[0]["calendar"].shape.as_list() == [None, 3, 2]
    assert spec[0]["store"].shape.as_list() == [None, 1]
    assert spec[0]["real"].shape.as_list() == [None, 5]
    assert spec[1]["units_next"].shape.as_list() == [None, 3, 1]
    assert spec[2]["units_next"].shape.as_list() == [None, 3]
    dataset = seqpipe.build_dataset(cfg)
    assert dataset.element_spec == spec
    batches = list(Pipeline(cfg).batches(0))
    got = list(dataset.as_numpy_iterator())
    assert len(got) == len(batches) == dataset.cardinality()
    for (x, y, w), b in zip(got, batches):
        for name in b.x:
            np.testing.assert_array_equal(x[name], b.x[name])
        np.testing.assert_array_equal(y["units_next"], b.y["units_next"])
        np.testing.assert_array_equal(w["units_next"], b.sample_weight["units_next"])


def _forecaster(horizon, reduction="sum_over_batch_size"):
    sales = keras.Input((5, 3), name="sales")
    calendar = keras.Input((horizon, 2), name="calendar")
    store = keras.Input((1,), name="store")
    real = keras.Input((5,), name="real", dtype="bool")
    encoded = keras.layers.GRU(8)(sales, mask=real)
    context = keras.layers.RepeatVector(horizon)(
        keras.layers.Concatenate()([encoded, keras.layers.Rescaling(0.01)(store)]))
    decoded = keras.layers.GRU(8, return_sequences=True)(
        keras.layers.Concatenate()([context, calendar]))
    units = keras.layers.Dense(1, name="units_next")(decoded)
    model = keras.Model({"sales": sales, "calendar": calendar, "store": store, "real": real},
                        {"units_next": units})
    model.compile(optimizer="adam",
                  loss={"units_next": keras.losses.MeanSquaredError(reduction=reduction)})
    return model


@pytest.mark.parametrize("mode,reduction", [
    ("batch_mean", "sum_over_batch_size"), ("sequence_mean", "sum_over_batch_size"),
    ("binary", "mean_with_sample_weight")])
def test_keras_reports_the_mean_each_weight_mode_promises_per_window_batch(tmp_path, mode,
                                                                          reduction):
    frame = stores()
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"weights.mode": mode})
    model = _forecaster(3, reduction)
    checked = 0
    for batch in Pipeline(cfg).batches(0):
        predicted = model.predict_on_batch(batch.x)["units_next"][..., 0].astype(np.float64)
        loss = (batch.y["units_next"][..., 0] - predicted) ** 2
        valid = batch.sample_weight["units_next"] > 0
        if mode == "sequence_mean":  # each window with a present target counts the same
            rows = valid.any(axis=1)
            expected = np.mean([loss[r][valid[r]].mean() for r in np.flatnonzero(rows)])
        else:
            expected = loss[valid].mean()
        logs = keras_batch_loss(model, batch.x, batch.y, batch.sample_weight)
        np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
        checked += 1
    assert checked > 3


def test_global_mean_batch_losses_average_to_the_masked_mean_over_the_epoch(tmp_path):
    frame = stores()
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"weights.mode": "global_mean"})
    model = _forecaster(3)
    reported, total, count = [], 0.0, 0
    for batch in Pipeline(cfg).batches(0):
        predicted = model.predict_on_batch(batch.x)["units_next"][..., 0].astype(np.float64)
        loss = (batch.y["units_next"][..., 0] - predicted) ** 2
        valid = batch.sample_weight["units_next"] > 0
        total, count = total + loss[valid].sum(), count + valid.sum()
        reported.append(keras_batch_loss(model, batch.x, batch.y, batch.sample_weight)["loss"])
    np.testing.assert_allclose(np.mean(reported), total / count, rtol=1e-4)


def test_an_encoder_decoder_model_fits_on_window_batches(tmp_path):
    frame = stores()
    cfg = config(write_shuffled(frame, tmp_path / "rows"))
    model = _forecaster(3)
    history = model.fit(seqpipe.build_dataset(cfg), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert all(np.isfinite(history.history["loss"]))


def test_the_report_counts_windows_too_short_sequences_and_padded_windows(tmp_path):
    frame = stores(n=15, shortest=1, longest=12)
    path = write_shuffled(frame, tmp_path / "rows")
    pipeline = Pipeline(config(path, min_history=2))
    counts = pipeline.report.windows
    lengths = frame.groupby("store").size()
    short = lengths[lengths < 2 + 3]
    assert counts.too_short_sequences == len(short) > 0
    assert counts.too_short_timesteps == short.sum()
    expected = reference(frame, 5, 3, 1, 2)
    assert counts.windows == len(expected)
    assert counts.padded == sum(not w["real"].all() for w in expected.values()) > 0
    text = str(pipeline.report)
    assert f"windows per epoch: {len(expected):,} ({counts.padded:,} padded" in text
    assert f"dropped {len(short):,} sequences" in text


def _minimal(**sections):
    raw = {"source": {"id_column": "id", "time_column": "t"},
           "windows": {"history": 4, "horizon": 2},
           "inputs": {"x": {"columns": ["a"]}}, "outputs": {"y": {"column": "b"}}}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return raw


@pytest.mark.parametrize("sections,message", [
    ({"padding__side": "post"}, r"^padding\.side must be 'pre' with windows: .*Set "
                                r"padding\.side: pre\.$"),
    ({"padding__maxlen": 10}, r"^padding\.maxlen does not apply with windows .*got maxlen: "
                              r"10\. Remove it\.$"),
    ({"batching__bucket_boundaries": [3]}, r"^batching\.bucket_boundaries does not apply with "
                                           r"windows.*got bucket_boundaries: \(3,\)"),
    ({"batching__max_timesteps": 100}, r"^batching\.max_timesteps does not apply"),
    ({"windows__min_history": 5}, r"^windows\.min_history \(5\) must be at most "
                                  r"windows\.history \(4\)$"),
    ({"windows__history": 0}, r"^windows\.history must be a positive integer; got 0$"),
    ({"windows__horizon": -1}, r"^windows\.horizon must be an integer >= 0; got -1$"),
    ({"inputs": {"x": {"columns": ["a"], "window": "future"}}, "windows__horizon": 0},
     r"^inputs\.x\.window: future .*needs level: timestep and windows\.horizon > 0; got "
     r"level: timestep, horizon: 0$"),
    ({"inputs": {"x": {"columns": ["a"], "window": "later"}}},
     r"^inputs\.x\.window must be 'history' or 'future'; got 'later'$"),
    ({"split__time_cutoff": "2024-01-01", "split__validation": 0.2},
     r"^split\.time_cutoff='2024-01-01' splits windows by time; it cannot be combined with a "
     r"split by sequence \(split\.validation=0\.2"),
    ({"split__time_cutoff": "2024-01-01", "source": {"id_column": "id"}},
     r"^split\.time_cutoff \('2024-01-01'\) compares target times, so it needs "
     r"source\.time_column"),
    ({"windows": None, "split__time_cutoff": "2024-01-01"},
     r"^split\.time_cutoff='2024-01-01' splits forecasting windows by time and needs a "
     r"windows section"),
    ({"windows": None, "inputs": {"x": {"columns": ["a"], "window": "future"}}},
     r"^inputs\.x\.window: future needs a windows section"),
    ({"windows__horizon": 0, "outputs": {"y": {"column": "a"}}},
     r"^outputs\.y\.column 'a' is also in inputs\.x\.columns: the model would be fed"),
], ids=["side-post", "maxlen", "buckets", "max-timesteps", "min-history", "history-0",
        "horizon-negative", "future-without-horizon", "window-value", "cutoff-and-id-split",
        "cutoff-without-time", "cutoff-without-windows", "future-without-windows",
        "label-in-its-own-history"])
def test_config_errors_name_the_key_and_say_why(sections, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_minimal(**sections))


def test_a_column_may_forecast_its_own_future_and_yaml_dates_are_cutoffs():
    cfg = load_config(_minimal(outputs={"y": {"column": "a"}},
                               split__time_cutoff=datetime.date(2024, 6, 1)))
    assert cfg.split.time_cutoff == "2024-06-01"
    assert cfg.padding.side == "pre"


def test_a_time_cutoff_asks_for_train_or_validation(tmp_path):
    frame = stores()
    cfg = config(write_shuffled(frame, tmp_path / "rows"), split__time_cutoff=CUTOFF)
    with pytest.raises(ConfigError, match=r"splits the windows by time \(split\.time_cutoff="
                                          r"'2024-02-10'\), so say which part to read"):
        Pipeline(cfg)
    with pytest.raises(ConfigError, match=r"^split='test' is empty: split\.time_cutoff="
                                          r"'2024-02-10' makes two parts"):
        Pipeline(cfg, split="test")


def test_a_cutoff_of_the_wrong_type_names_the_time_column(tmp_path):
    frame = stores()
    cfg = config(write_shuffled(frame, tmp_path / "rows"), split__time_cutoff="soon")
    with pytest.raises(ConfigError, match=r"^split\.time_cutoff must be a date or timestamp "
                                          r"such as 2024-06-01.*source\.time_column 'day' in "
                                          r".*rows holds dates or timestamps; got 'soon'$"):
        Pipeline(cfg, split="train")


def test_no_window_at_all_is_a_clear_error(tmp_path):
    frame = stores(n=4, shortest=1, longest=3)
    with pytest.raises(DataError, match=r"^no windows: .* has none of at least "
                                        r"windows\.min_history \+ windows\.horizon = 8 "
                                        r"timesteps \(4 sequences, the longest 3 timesteps\)"):
        Pipeline(config(write_shuffled(frame, tmp_path / "rows")))


def test_dropped_windows_are_logged(tmp_path, caplog):
    frame = stores(n=10, shortest=1, longest=30)
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        Pipeline(config(write_shuffled(frame, tmp_path / "rows")))
    assert any("too short for one window" in r.getMessage() for r in caplog.records)


def _code_model(config_, horizon):
    """A model that predicts, at every target step, the `code` (store * 1000 + position)
    its input holds there: predictions name their own timestep."""
    history = config_.windows.history
    inputs = {"sales": keras.Input((history, 3), name="sales"),
              "calendar": keras.Input((horizon or history, 3 if horizon else 2),
                                      name="calendar"),
              "store": keras.Input((1,), name="store"),
              "real": keras.Input((history,), name="real", dtype="bool")}
    pick = keras.layers.Dense(1, use_bias=False, name="units_next")
    model = keras.Model(inputs, {"units_next": pick(passing(
        inputs["calendar"] if horizon else inputs["sales"],
        *(inputs[n] for n in ("sales", "calendar", "store", "real")
          if n != ("calendar" if horizon else "sales"))))})
    pick.set_weights([np.array([[0.0], [0.0], [1.0]])])
    return model


@pytest.mark.parametrize("horizon", [3, 0])
@pytest.mark.parametrize("materialized", [False, True], ids=["files", "materialized"])
def test_predict_gives_one_row_per_window_and_target_step(tmp_path, horizon, materialized):
    frame = stores()
    path = write_shuffled(frame, tmp_path / "rows")
    cfg = config(path, history=5, horizon=horizon, stride=2, min_history=2,
                 split__time_cutoff=CUTOFF)
    future = {"calendar": {"columns": ["dow", "holiday", "code"], "window": "future"}}
    cfg = load_config(cfg, {"inputs.calendar": future["calendar"]} if horizon else
                      {"inputs.sales.columns": ["price", "holiday", "code"],
                       "inputs.calendar.window": "history"})
    target = cfg
    if materialized:
        seqpipe.materialize(cfg, tmp_path / "out")
        target = str(tmp_path / "out")
    predicted = seqpipe.predict(_code_model(cfg, horizon), target, split="validation")
    rows = predicted["units_next"]
    expected = reference(frame, 5, horizon, 2, 2, CUTOFF, "validation")
    by_store = {s: r.reset_index(drop=True) for s, r in
                frame.sort_values(["store", "day"]).groupby("store")}
    steps = sum(int(window["real"].sum()) if not horizon else horizon
                for window in expected.values())
    assert len(rows) == steps
    assert list(rows.columns) == (["store", "window_end", "day", "horizon_step", "units_next"]
                                  if horizon else ["store", "window_end", "day", "units_next"])
    # As Timestamps on both sides: pandas 2.2 hashes a Timestamp and its datetime64 apart.
    assert ({(s, pd.Timestamp(d)) for s, d in zip(rows.store, rows.window_end)} ==
            {(s, pd.Timestamp(d)) for s, d in expected})
    for store, day, value in zip(rows.store, rows.day, rows.units_next):
        position = int(np.flatnonzero(by_store[store]["day"].to_numpy() == day)[0])
        assert value == pytest.approx(by_store[store]["code"][position])
    if horizon:
        assert rows.horizon_step.between(1, horizon).all()
        assert ((rows.day - rows.window_end).dt.days == rows.horizon_step - horizon).all()
    assert rows.equals(rows.sort_values(["store", "window_end", "day"]))


@pytest.mark.parametrize("split", [{"split__time_cutoff": CUTOFF},
                                   {"split__validation": 0.3, "split__seed": 1}],
                         ids=["time-cutoff", "by-id"])
def test_a_materialized_output_holds_sequences_and_cuts_the_same_windows(tmp_path, split):
    frame = stores(n=16)
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows"), **split),
                      {"inputs.sales.normalize": "standard", "weights.mode": "global_mean"})
    manifest = seqpipe.materialize(cfg, tmp_path / "out")
    sequences = sum(p["sequences"] for p in manifest["parts"].values())
    assert sequences == frame.store.nunique()  # every sequence once, no window written
    for part in ("train", "validation"):
        loaded = seqpipe.load_materialized(tmp_path / "out", split=part)
        direct = seqpipe.build_dataset(cfg, split=part)
        count = 0
        for (x, y, w), (x2, y2, w2) in zip(loaded, direct, strict=True):
            for name in x2:
                np.testing.assert_allclose(x[name].numpy(), x2[name].numpy(), rtol=1e-6)
            np.testing.assert_array_equal(y["units_next"].numpy(), y2["units_next"].numpy())
            np.testing.assert_allclose(w["units_next"].numpy(), w2["units_next"].numpy(),
                                       rtol=1e-6)
            count += 1
        assert count > 0


def test_the_service_path_refuses_windows(tmp_path):
    frame = stores()
    seqpipe.materialize(config(write_shuffled(frame, tmp_path / "rows")), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"tf\.data service path batches whole sequences"):
        seqpipe.load_materialized(tmp_path / "out", service="grpc://localhost:1")


def test_inspect_reports_windows_per_part(tmp_path, capsys):
    frame = stores(n=15, shortest=1, longest=40)
    path = write_shuffled(frame, tmp_path / "rows")
    cfg = config(path, min_history=2, split__time_cutoff=CUTOFF)
    yaml_path = tmp_path / "windows.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["inspect", str(yaml_path)]) == 0
    out = capsys.readouterr().out
    for part in ("train", "validation"):
        counts = Pipeline(cfg, split=part).report.windows
        assert (f"windows: {part}: {counts.windows:,} per epoch "
                f"({-(-counts.windows // 8):,} batches of 8), {counts.padded:,} padded") in out
    assert "too short for one window" in out
    assert "straddle the split by time" in out


def test_processes_share_out_the_windows_of_every_global_batch(tmp_path):
    frame = stores(n=20)
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"batching.batch_size": 9})
    expected = reference(frame, 5, 3, 1)
    found: dict = {}
    shapes = []
    for index in range(3):
        pipeline = Pipeline(cfg, lockstep=Lockstep(index, 3))
        mine = produced(pipeline, frame, batch_mean=False)
        assert mine and not set(mine) & set(found)
        found.update(mine)
        shapes.append([b.x["sales"].shape for b in pipeline.batches(0)])
    assert_same_windows(found, expected)
    assert shapes[0] == shapes[1] == shapes[2] and shapes[0][0] == (3, 5, 3)


def test_drop_remainder_leaves_out_the_last_smaller_batch_and_counts_it(tmp_path):
    frame = stores()
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"batching.drop_remainder": True})
    pipeline = Pipeline(cfg)
    total = len(reference(frame, 5, 3, 1))
    sizes = [len(b.ids) for b in pipeline.batches(0)]
    assert set(sizes) == {8} and len(sizes) == total // 8 == pipeline.report.batches_per_epoch
    assert pipeline.report.windows.dropped_per_epoch == total % 8 > 0
    assert f"drop_remainder leaves out {total % 8:,} windows per epoch" in str(pipeline.report)
    dataset = seqpipe.build_dataset(pipeline)
    assert [int(x["sales"].shape[0]) for x, _, _ in dataset] == sizes


def test_validate_says_the_split_is_by_time(tmp_path, capsys):
    cfg = config(write_shuffled(stores(), tmp_path / "rows"), split__time_cutoff=CUTOFF)
    yaml_path = tmp_path / "windows.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["validate", str(yaml_path)]) == 0
    out = capsys.readouterr().out
    assert ("split by time at 2024-02-10 (day): train windows end before it, validation "
            "windows start at or after it") in out
    assert "split by store" not in out


@pytest.mark.parametrize("buffer", [0, 20], ids=["in-order", "shuffled"])
def test_accumulation_steps_make_the_batches_a_multiple_and_none_is_empty(tmp_path, buffer):
    frame = stores()
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"shuffle.buffer_size": buffer, "batching.batch_size": 7,
                       "batching.accumulation_steps": 2})
    expected = reference(frame, 5, 3, 1)
    assert (len(expected) + 6) // 7 % 2 == 1  # an odd count of batches without accumulation
    pipeline = Pipeline(cfg)
    sizes = [len(b.ids) for b in pipeline.batches(0)]
    assert len(sizes) % 2 == 0 and len(sizes) == pipeline.report.batches_per_epoch
    assert min(sizes) > 0
    assert_same_windows(produced(pipeline, frame, batch_mean=False), expected)


def test_too_few_windows_for_the_accumulation_steps_is_an_error_when_building(tmp_path):
    frame = stores(n=1, shortest=9, longest=9)
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"batching.batch_size": 16, "batching.accumulation_steps": 4})
    with pytest.raises(DataError, match=r"cannot be cut into 3 more batches to make the "
                                        r"batches per epoch a multiple of "
                                        r"batching.accumulation_steps"):
        Pipeline(cfg)


MIRRORED = """
import sys, json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import seqpipe

config = seqpipe.load_config(json.loads(sys.argv[1]))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
distributed = strategy.distribute_datasets_from_function(
    lambda context: seqpipe.build_dataset(config, input_context=context))
with strategy.scope():
    sales = keras.Input((5, 3), name="sales")
    calendar = keras.Input((3, 2), name="calendar")
    store = keras.Input((1,), name="store")
    state = keras.layers.GRU(4)(sales)
    steps = keras.layers.Concatenate()([keras.layers.RepeatVector(3)(state), calendar,
                                        keras.layers.RepeatVector(3)(store)])
    units = keras.layers.Dense(1, name="units_next")(steps)
    model = keras.Model({"sales": sales, "calendar": calendar, "store": store},
                        {"units_next": units})
    model.compile("adam", {"units_next": "mse"})
history = model.fit(distributed, epochs=2, verbose=0)
print(json.dumps({"loss": history.history["loss"], "replicas": strategy.num_replicas_in_sync}))
"""


@pytest.mark.slow
def test_model_fit_on_windows_runs_on_a_mirrored_strategy_over_two_cpus(tmp_path):
    import json
    import subprocess
    import sys

    # Without the bool mask input: Keras's cross-replica start-up does not take bool
    # tensors (InvalidArgumentError on attr 'T' of bool), with windows or without.
    cfg = load_config(config(write_shuffled(stores(), tmp_path / "rows")),
                      {"padding.mask": None})
    done = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(cfg.to_dict())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert len(result["loss"]) == 2 and all(np.isfinite(result["loss"]))


def test_a_source_that_changed_since_building_is_a_clear_error(tmp_path):
    frame = stores().sort_values(["store", "day"])
    path = tmp_path / "sorted.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=40)
    pipeline = Pipeline(config(str(path)))
    assert pipeline.report.streamed
    shorter = frame.groupby("store").head(20)
    pq.write_table(pa.Table.from_pandas(shorter, preserve_index=False), path, row_group_size=40)
    with pytest.raises(DataError, match=r"sorted\.parquet changed since the dataset was built "
                                        r".*Build the dataset \(or Pipeline\) again"):
        list(pipeline.batches(0))


@pytest.mark.parametrize("layout", ["long", "nested"])
@pytest.mark.parametrize("stride", [1, 3])
def test_holdout_last_holds_out_each_series_last_timesteps_as_pandas_does(tmp_path, layout,
                                                                         stride):
    """Validation: the windows whose first target is one of a series' last N timesteps;
    train: those whose every target is before them; the rest (straddling) in neither."""
    frame = stores(n=10, seed=5)
    history, horizon, held = 4, 2, 5
    path = (write_shuffled(frame, tmp_path / "rows") if layout == "long"
            else write_nested(frame, tmp_path / "nested.parquet"))
    cfg = config(path, history, horizon, stride, layout=layout, split__holdout_last=held)
    expected: dict = {"train": set(), "validation": set()}
    for store, rows in frame.sort_values(["store", "day"]).groupby("store"):
        length = len(rows)
        for end in range(length - 1, history + horizon - 2, -stride):  # anchored at the end
            first_target = end - horizon + 1
            if end < length - held:
                expected["train"].add((store, end))
            elif first_target >= length - held:
                expected["validation"].add((store, end))
    for part, windows in expected.items():
        found = {(s, int(e)) for b in Pipeline(cfg, split=part).batches()
                 for s, e in zip(b.ids, b.ends)}
        assert found == windows and windows, part
    if stride > 1:
        return
    # Statistics come from the train windows' timesteps: with stride 1, every timestep
    # before the held-out ones of a series long enough for one train window.
    stats = Pipeline(load_config(cfg, {"inputs.sales.normalize": "standard"}),
                     split="validation").statistics.columns["sales"]["units"]
    train_rows = frame.sort_values(["store", "day"]).groupby("store", group_keys=False).apply(
        lambda rows: rows.iloc[:max(len(rows) - held, 0)] if len(rows) - held >= history
        + horizon else rows.iloc[:0])
    units = train_rows["units"].dropna().astype(np.float32).astype(np.float64)
    assert stats.count == len(units)
    np.testing.assert_allclose(stats.mean, units.mean(), rtol=1e-6)


def test_holdout_last_config_rules():
    with pytest.raises(ConfigError, match=r"split\.time_cutoff \('2024-02-10'\) and "
                                          r"split\.holdout_last \(3\) both say where"):
        config(None, split__time_cutoff=CUTOFF, split__holdout_last=3)
    with pytest.raises(ConfigError, match=r"split\.holdout_last=3 splits forecasting windows "
                                          r"by time and needs a windows section"):
        load_config({"source": {"id_column": "store"}, "inputs": {"a": {"columns": ["x"]}},
                     "split": {"holdout_last": 3}})
    with pytest.raises(ConfigError, match=r"split\.holdout_last must be a positive integer"):
        config(None, split__holdout_last=0)


@pytest.mark.parametrize("mode", ["batch_mean", "sequence_mean"])
def test_the_mean_over_processes_is_the_global_steps_mean_over_its_windows(tmp_path, mode):
    frame = stores(n=20)
    cfg = load_config(config(write_shuffled(frame, tmp_path / "rows")),
                      {"batching.batch_size": 9, "weights.mode": mode})
    expected = reference(frame, 5, 3, 1)
    days = {store: rows["day"].to_numpy()
            for store, rows in frame.sort_values(["store", "day"]).groupby("store")}
    steps = zip(*(Pipeline(cfg, lockstep=Lockstep(i, 3)).batches(0) for i in range(3)))
    for parts in steps:
        reported = np.mean([float((b.sample_weight["units_next"] * b.y["units_next"][..., 0]
                                   ** 2).sum()) / b.sample_weight["units_next"].size
                            for b in parts])
        windows = [expected[store, days[store][end]] for b in parts
                   for store, end in zip(b.ids, b.ends)]
        per_window = [w["target"][w["present"]] ** 2 for w in windows]
        if mode == "batch_mean":
            every = np.concatenate(per_window)
            intended = every.mean() if len(every) else 0.0
        else:
            means = [v.mean() for v in per_window if len(v)]
            intended = np.mean(means) if means else 0.0
        np.testing.assert_allclose(reported, intended, rtol=1e-6)
