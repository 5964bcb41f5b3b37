"""`batching.packing`: whole sequences end to end in rows of one length.

What a row holds is checked against the data read with pyarrow; the losses against real
Keras (`test_on_batch`) and means computed here in NumPy; the attention recipe against the
model run on each sequence alone. Runs on every Keras backend (.ci/run)."""

import re

import keras
import numpy as np
import pytest

import seqpipe
import seqpipe.layers
from seqpipe import ConfigError, Pipeline, build_dataset, element_spec, load_config
from seqpipe.lockstep import Lockstep
from tests.helpers import (
    base_config,
    keras_batch_loss,
    long_table,
    nested_from_long,
    passing,
    raw_sequences,
    write,
)

LENGTHS = np.random.default_rng(33).integers(1, 60, 260)
LENGTH, SLOTS, ROWS, MAXLEN = 64, 8, 4, 48


def _config(path=None, layout="long", **overrides):
    return load_config(base_config(path, layout), {
        "padding.maxlen": MAXLEN, "batching.batch_size": ROWS,
        "batching.packing": {"length": LENGTH, "max_segments": SLOTS},
        "shuffle.buffer_size": 100, "shuffle.seed": 3, **overrides})


@pytest.fixture(scope="module")
def table():
    return long_table(LENGTHS, seed=8)


@pytest.fixture(scope="module")
def path(table, tmp_path_factory):
    return write(tmp_path_factory.mktemp("packing") / "rows.parquet", table.sort_by("id"), 400)


def _rows(batch):
    """Each row's segments as (id, first timestep in the row, timesteps), from segment_ids."""
    found, k = [], 0
    for ids in batch.x["segment_ids"]:
        row = []
        for segment in range(1, ids.max() + 1):
            at = np.flatnonzero(ids == segment)
            row.append((batch.ids[k], int(at[0]), len(at)))
            k += 1
        found.append(row)
    assert k == len(batch.ids)
    return found


@pytest.mark.parametrize("layout", ["long", "nested", "in memory"])
def test_every_kept_timestep_lands_once_in_well_formed_segments(table, path, tmp_path, layout):
    raw = raw_sequences(table)
    age = dict(zip(table["id"].to_pylist(), table["age"].to_pylist()))
    died = dict(zip(table["id"].to_pylist(), table["died"].to_pylist()))
    if layout == "nested":
        pipeline = Pipeline(_config(write(tmp_path / "n.parquet", nested_from_long(table), 30),
                                    "nested"))
    elif layout == "in memory":
        pipeline = Pipeline(_config(), data=table)
    else:
        pipeline = Pipeline(_config(path))
    for epoch in (0, 1):
        seen, shapes = [], set()
        for batch in pipeline.batches(epoch):
            shapes.add(tuple(sorted((k, v.shape) for k, v in {**batch.x, **batch.y}.items())))
            segments, positions = batch.x["segment_ids"], batch.x["positions"]
            for r, row in enumerate(_rows(batch)):
                end = 0
                for slot, (key, first, steps) in enumerate(row):
                    assert first == end  # end to end from the row's start, in order
                    end += steps
                    codes, labels = raw[key][0][:MAXLEN], raw[key][1][:MAXLEN]
                    assert steps == len(codes)
                    at = slice(first, first + steps)
                    np.testing.assert_array_equal(positions[r, at], np.arange(steps))
                    np.testing.assert_array_equal(batch.x["steps"][r, at, 0],
                                                  codes.astype(np.float32))
                    present = ~np.isnan(labels)
                    np.testing.assert_array_equal(batch.y["y"][r, at, 0][present],
                                                  labels[present].astype(np.float32))
                    np.testing.assert_array_equal(batch.sample_weight["y"][r, at] > 0, present)
                    assert batch.x["static"][r, slot, 0] == age[key]
                    assert (batch.sample_weight["died"][r, slot] > 0) == (not np.isnan(died[key]))
                    seen.append(key)
                assert not segments[r, end:].any() and not positions[r, end:].any()
                assert not batch.sample_weight["y"][r, end:].any()
                assert not batch.sample_weight["died"][r, len(row):].any()
                assert not batch.x["static"][r, len(row):].any()
        assert sorted(seen) == sorted(raw)  # every sequence once per epoch
        assert shapes == {(("died", (ROWS, SLOTS, 1)), ("positions", (ROWS, LENGTH)),
                           ("segment_ids", (ROWS, LENGTH)), ("static", (ROWS, SLOTS, 1)),
                           ("steps", (ROWS, LENGTH, 2)), ("y", (ROWS, LENGTH, 1)))}


def test_the_element_spec_is_fully_static_and_epochs_are_reshuffled(path):
    config = _config(path)
    spec = element_spec(config)
    for leaf in keras.tree.flatten(spec):
        assert None not in leaf.shape
    assert spec[0]["segment_ids"].dtype.name == "int32"
    assert spec[0]["static"].shape == (ROWS, SLOTS, 1)
    pipeline = Pipeline(config)
    first = [b.ids.tolist() for b in pipeline.batches(0)]
    assert first == [b.ids.tolist() for b in Pipeline(config).batches(0)]  # reproducible
    assert first != [b.ids.tolist() for b in pipeline.batches(1)]


def test_the_report_counts_the_packing_waste_against_the_data(table, path):
    pipeline = Pipeline(_config(path))
    report = pipeline.report
    kept = np.minimum(LENGTHS, MAXLEN)
    batches = sum(1 for _ in pipeline.batches(0))
    assert report.batches_per_epoch == batches
    assert report.padding_waste == pytest.approx(1 - kept.sum() / (batches * ROWS * LENGTH))
    assert report.static_shapes == 1
    assert report.truncated_timesteps == int((LENGTHS - kept).sum())
    rows = sum(int((b.x["segment_ids"].max(axis=1) > 0).sum()) for b in pipeline.batches(0))
    assert report.segments_per_row == pytest.approx(len(LENGTHS) / rows)
    text = str(report)
    assert re.search(rf"packed rows: {rows} rows of {LENGTH} timesteps in {batches} batches",
                     text)
    assert "segments per row: mean" in text


def test_inspect_shows_the_packing_the_pipeline_makes(path, tmp_path):
    import subprocess
    import sys

    import yaml

    config = _config(path)
    config_file = tmp_path / "packed.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    done = subprocess.run([sys.executable, "-m", "seqpipe", "inspect", str(config_file)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = Pipeline(config).report
    found = re.search(r"packed rows: (\d+) rows of 64 timesteps in (\d+) batches of 4 per "
                      r"epoch \(one shape\), packed within windows of 1,024 sequences; "
                      r"padding waste: ([\d.]+)%", done.stdout)
    assert found, done.stdout
    assert int(found.group(2)) == report.batches_per_epoch
    assert float(found.group(3)) / 100 == pytest.approx(report.padding_waste, abs=5e-4)
    assert re.search(r"segments per row: mean [\d.]+, max \d+ \(max_segments 8; \d+ rows "
                     r"reach it\)", done.stdout)


def test_a_last_batch_gets_empty_rows_of_weight_zero_or_is_dropped(path):
    pipeline = Pipeline(_config(path))
    last = list(pipeline.batches(0))[-1]
    empty = last.x["segment_ids"].max(axis=1) == 0
    assert last.x["steps"].shape[0] == ROWS
    assert not last.sample_weight["y"][empty].any()
    dropping = Pipeline(_config(path, **{"batching.drop_remainder": True}))
    kept = sum(len(b.ids) for b in dropping.batches(0))
    assert kept + dropping.report.sequences_dropped_per_epoch == len(LENGTHS)
    assert all((b.x["segment_ids"].max(axis=1) > 0).all() for b in dropping.batches(0))


def _dense_model():
    steps = keras.Input((LENGTH, 2), name="steps")
    static = keras.Input((SLOTS, 1), name="static")
    inputs = {"steps": steps, "static": static,
              "segment_ids": keras.Input((LENGTH,), dtype="int32", name="segment_ids"),
              "positions": keras.Input((LENGTH,), dtype="int32", name="positions")}
    # the segment inputs tied in: Keras 3.11 to 3.13 refuse a model with unused inputs
    used = passing(steps, inputs["segment_ids"], inputs["positions"])
    outputs = {"y": keras.layers.Dense(1, name="y")(used),
               "died": keras.layers.Dense(1, name="died")(static)}
    model = keras.Model(inputs, outputs)
    model.compile(loss={"y": "mse", "died": "mse"})
    return model


@pytest.mark.parametrize("mode", ["batch_mean", "sequence_mean", "global_mean"])
def test_keras_reports_the_mean_each_mode_means_over_segments(table, path, mode):
    raw = raw_sequences(table)
    died = dict(zip(table["id"].to_pylist(), table["died"].to_pylist()))
    model = _dense_model()
    pipeline = Pipeline(_config(path, **{"weights.mode": mode}))
    batches = list(pipeline.batches(0))
    # global_mean: every present label weighs the same; per batch, sum / (labels / batches)
    label_share = sum(int((~np.isnan(raw[key][1][:MAXLEN])).sum()) for key in raw) / len(
        batches)
    outcome_share = sum(not np.isnan(died[key]) for key in raw) / len(batches)
    for batch in batches[:6]:
        got = keras_batch_loss(model, batch.x, batch.y, batch.sample_weight)
        predicted = model.predict_on_batch(batch.x)
        per_sequence, present_labels, outcome = [], [], []
        for r, row in enumerate(_rows(batch)):
            for slot, (key, first, steps) in enumerate(row):
                labels = raw[key][1][:MAXLEN]
                here = predicted["y"][r, first:first + steps, 0]
                errors = (here - labels) ** 2
                present = errors[~np.isnan(labels)]
                present_labels += present.tolist()
                if len(present):
                    per_sequence.append(present.mean())
                if not np.isnan(died[key]):
                    outcome.append((predicted["died"][r, slot, 0] - died[key]) ** 2)
        expected = {"batch_mean": np.mean(present_labels), "sequence_mean": np.mean(per_sequence),
                    "global_mean": np.sum(present_labels) / label_share}[mode]
        assert got["y_loss"] == pytest.approx(expected, rel=1e-5)
        expected = (np.sum(outcome) / outcome_share if mode == "global_mean"
                    else np.mean(outcome) if outcome else 0.0)
        assert got["died_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def _encoder(causal=False):
    """A small Transformer encoder over packed rows: positions embedded, attention kept
    within each sequence, a per-timestep head and a per-sequence one."""
    steps = keras.Input((None, 2), name="steps")
    segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
    positions = keras.Input((None,), dtype="int32", name="positions")
    static = keras.Input((None, 1), name="static")
    # `code` runs to 10^5: scaled down, as `normalize` would, or attention logits that
    # large give NaN gradients on PyTorch.
    scaled = keras.layers.Rescaling(1e-5)(steps)
    h = keras.layers.Dense(16)(scaled) + keras.layers.Embedding(MAXLEN, 16)(positions)
    mask = seqpipe.layers.SegmentAttentionMask(causal=causal)(segment_ids)
    h = keras.layers.LayerNormalization()(
        h + keras.layers.MultiHeadAttention(2, 8)(h, h, attention_mask=mask))
    pooled = seqpipe.layers.SegmentPooling(SLOTS)([h, segment_ids])
    died = keras.layers.Dense(1, name="died")(keras.layers.Concatenate()([pooled, static]))
    return keras.Model({"steps": steps, "segment_ids": segment_ids, "positions": positions,
                        "static": static}, {"y": keras.layers.Dense(1, name="y")(h),
                                            "died": died})


@pytest.mark.parametrize("causal", [False, True])
def test_attention_on_packed_rows_predicts_what_each_sequence_alone_gives(table, path, causal):
    keras.utils.set_random_seed(0)
    model = _encoder(causal)
    config = _config(path)
    frames = seqpipe.predict(model, config)
    frame = table.to_pandas().sort_values(["id", "t"])
    alone_y, alone_died = [], []
    for _, rows in frame.groupby("id", sort=True):
        rows = rows.iloc[:MAXLEN]
        n = len(rows)
        x = {"steps": rows[["code", "x"]].to_numpy(np.float32)[None],
             "segment_ids": np.ones((1, n), np.int32),
             "positions": np.arange(n, dtype=np.int32)[None],
             "static": np.full((1, SLOTS, 1), rows["age"].iloc[0], np.float32)}
        out = model.predict_on_batch(x)
        alone_y.append(np.asarray(out["y"])[0, :, 0])
        alone_died.append(float(np.asarray(out["died"])[0, 0, 0]))
    y = frames["y"]
    assert list(y.columns) == ["id", "t", "y"]
    assert y["t"].tolist() == frame.groupby("id").head(MAXLEN)["t"].tolist()
    np.testing.assert_allclose(y["y"].to_numpy(), np.concatenate(alone_y), atol=1e-5)
    assert frames["died"]["id"].tolist() == sorted(set(frame["id"]))
    np.testing.assert_allclose(frames["died"]["died"].to_numpy(), alone_died, atol=1e-5)


def test_predict_asks_for_a_slot_per_sequence_from_a_per_sequence_output(path):
    model = _dense_model()  # "died" as one value per row, as for whole sequences
    steps = model.input["steps"]
    pooled = keras.layers.Dense(1, name="died")(keras.layers.GlobalAveragePooling1D()(
        passing(steps, *[model.input[n] for n in ("static", "segment_ids", "positions")])))
    model = keras.Model(model.input, {"died": pooled, "y": model.output["y"]})
    with pytest.raises(ConfigError, match=r"outputs.died has level: sequence, which needs "
                                          r"\(batch, max_segments, k\).*SegmentPooling"):
        seqpipe.predict(model, _config(path))


def test_packed_training_compiles_once_with_jit(path):
    """One shape per epoch: with XLA (TensorFlow, JAX) the train step is traced once, not
    once per batch shape. PyTorch runs the step eagerly: it trains, nothing to count."""
    jit = keras.backend.backend() in ("tensorflow", "jax")
    traced = []

    class Counting(keras.layers.Layer):
        def call(self, x):
            traced.append(tuple(x.shape))  # Python runs only while a step is traced
            return x

    keras.utils.set_random_seed(1)
    inner = _encoder()
    outputs = inner(inner.input)
    model = keras.Model(inner.input, {"y": Counting()(outputs["y"]), "died": outputs["died"]})
    model.compile(optimizer="adam", loss={"y": "mse", "died": "mse"}, jit_compile=jit)
    data = build_dataset(_config(path))
    built = len(traced)
    model.fit(data, epochs=1, verbose=0)
    after_one = len(traced)
    assert {tuple(shape) for shape in traced[built:]} == {(ROWS, LENGTH, 1)}
    history = model.fit(data, epochs=2, verbose=0)
    if jit:
        assert len(traced) == after_one  # no new trace in two more epochs of many batches
    assert np.isfinite(history.history["loss"]).all()


def test_materialized_records_pack_as_the_parquet_does(path, tmp_path):
    config = _config(path)
    seqpipe.materialize(config, tmp_path / "out")
    import tensorflow as tf

    direct, loaded = build_dataset(config), seqpipe.load_materialized(tmp_path / "out")
    count = 0
    for a, b in zip(direct, loaded, strict=True):
        for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
            np.testing.assert_array_equal(u.numpy(), v.numpy())
        count += 1
    assert count > 5


def test_the_formats_hand_on_the_same_packed_batches(path):
    import tensorflow as tf

    config = _config(path)
    numpy_batches = list(build_dataset(config, format="numpy"))
    tf_batches = list(build_dataset(config))
    assert len(numpy_batches) == len(tf_batches)
    for a, b in zip(numpy_batches, tf_batches):
        for u, v in zip(keras.tree.flatten(a), tf.nest.flatten(b)):
            np.testing.assert_array_equal(u, v.numpy())


@pytest.mark.parametrize("overrides, message", [
    ({"windows": {"history": 8}, "padding.maxlen": None, "padding.side": "pre"},
     r"batching.packing packs whole sequences and windows cut them"),
    ({"padding.maxlen": None}, r"needs padding.maxlen at most packing.length \(64\).*got "
                               r"maxlen: None"),
    ({"padding.maxlen": 65}, r"got maxlen: 65. Set padding.maxlen to 64 or less"),
    ({"padding.side": "pre"}, r"padding.side: pre does not apply with batching.packing"),
    ({"batching.bucket_boundaries": "auto"},
     r"batching.bucket_boundaries does not apply with batching.packing.*got "
     r"bucket_boundaries: 'auto'"),
    ({"batching.max_timesteps": 500}, r"batching.max_timesteps does not apply"),
    ({"batching.packing": {"length": 64, "segment_ids": "steps"}},
     r"segment_ids and positions name two extra inputs of their own.*got segment_ids: "
     r"'steps'"),
    ({"batching.packing": {"length": 64, "positions": "segment_ids"}},
     r"segment_ids and positions name two extra inputs"),
    ({"batching.packing": {"length": 0}}, r"batching.packing.length must be a positive "
                                          r"integer; got 0"),
    ({"batching.packing": {"length": 64, "max_segment": 3}},
     r"unknown key 'batching.packing.max_segment'. Did you mean 'max_segments'\?"),
])
def test_configs_packing_cannot_serve_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config("unused.parquet", **overrides)


def test_the_tf_data_service_path_refuses_packed_rows(path):
    from seqpipe.tfdata.service import check

    with pytest.raises(ConfigError, match="packed rows are made by seqpipe's own pipeline"):
        check(_config(path))


def test_attention_mask_and_pooling_match_numpy():
    segment_ids = np.array([[1, 1, 2, 2, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2, 2, 2]], np.int32)
    mask = keras.ops.convert_to_numpy(seqpipe.layers.SegmentAttentionMask()(segment_ids))
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None] > 0)
    padding_self = (segment_ids[:, :, None] == 0) & np.eye(8, dtype=bool)[None]
    np.testing.assert_array_equal(mask, same | padding_self)
    causal = keras.ops.convert_to_numpy(
        seqpipe.layers.SegmentAttentionMask(causal=True)(segment_ids))
    np.testing.assert_array_equal(causal, (same | padding_self) & np.tril(np.ones((8, 8), bool)))
    values = np.random.default_rng(0).normal(size=(2, 8, 3)).astype(np.float32)
    pooled = keras.ops.convert_to_numpy(seqpipe.layers.SegmentPooling(4)([values,
                                                                          segment_ids]))
    for b in range(2):
        for slot in range(4):
            members = values[b][segment_ids[b] == slot + 1]
            expected = members.mean(axis=0) if len(members) else np.zeros(3)
            np.testing.assert_allclose(pooled[b, slot], expected, rtol=1e-5, atol=1e-6)
    # Saved and loaded with the model.
    layer = keras.layers.deserialize(keras.layers.serialize(
        seqpipe.layers.SegmentAttentionMask(causal=True)))
    assert layer.causal


def test_the_guide_trains_a_transformer_encoder_on_packed_rows(tmp_path, monkeypatch):
    """The code of docs/packing.md, run as written."""
    import pathlib

    guide = pathlib.Path(__file__).parent.parent / "docs" / "packing.md"
    code = re.search(r"```python\n(.*?)```", guide.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(guide), "exec"), scope)
    lengths, frames, model = scope["lengths"], scope["frames"], scope["model"]
    assert len(frames["running"]) == int(np.minimum(lengths, 128).sum())
    assert frames["label"]["id"].tolist() == list(range(len(lengths)))
    losses = model.history.history["running_loss"]
    assert losses[-1] < losses[0]


def test_scale_inputs_sit_on_the_segment_axis_and_the_mask_marks_real_timesteps(table, path):
    config = _config(path, **{"inputs.steps.normalize": {"per": "series", "input": "scales"},
                              "padding.mask": "real"})
    frame = table.to_pandas().sort_values(["id", "t"])
    kept = frame.groupby("id").head(MAXLEN)
    for batch in list(Pipeline(config).batches(0))[:5]:
        np.testing.assert_array_equal(batch.x["real"], batch.x["segment_ids"] > 0)
        assert batch.x["scales"].shape == (ROWS, SLOTS, 4)
        for r, row in enumerate(_rows(batch)):
            for slot, (key, _, _) in enumerate(row):
                codes = kept.loc[kept["id"] == key, "code"]
                # a constant series divides by its own level (docs/preparing-data.md)
                divisor = codes.std(ddof=0) or abs(codes.mean()) or 1.0
                np.testing.assert_allclose(batch.x["scales"][r, slot, [0, 2]],
                                           [codes.mean(), divisor], rtol=1e-5)
            # empty slots: shift 0, divisor 1
            np.testing.assert_array_equal(batch.x["scales"][r, len(row):], [[0, 0, 1, 1]] * (
                SLOTS - len(row)))


def test_processes_get_their_rows_of_every_packed_batch_in_one_shape(path):
    whole = list(Pipeline(_config(path)).batches(0))
    parts = [list(Pipeline(_config(path), lockstep=Lockstep(i, 2)).batches(0))
             for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for global_batch, first, second in zip(whole, *parts):
        assert first.x["steps"].shape == second.x["steps"].shape == (ROWS // 2, LENGTH, 2)
        for name in ("steps", "segment_ids"):
            np.testing.assert_array_equal(
                np.concatenate([first.x[name], second.x[name]]), global_batch.x[name])
        assert list(first.ids) + list(second.ids) == list(global_batch.ids)


def test_accumulation_steps_top_up_packed_epochs_with_empty_batches(path):
    config = load_config(_config(path), {"batching.accumulation_steps": 4})
    pipeline = Pipeline(config)
    batches = list(pipeline.batches(0))
    assert len(batches) % 4 == 0 and len(batches) == pipeline.report.batches_per_epoch
    assert {b.x["steps"].shape for b in batches} == {(ROWS, LENGTH, 2)}
    assert sorted(i for b in batches for i in b.ids) == sorted(
        i for b in Pipeline(_config(path)).batches(0) for i in b.ids)
