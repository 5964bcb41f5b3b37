"""`batching.static_shapes`: every batch of a bucket has one shape, for XLA compilers.

Padding is checked against `keras.utils.pad_sequences`, weights against real Keras."""

import keras
import numpy as np
import pytest

import seqpipe
from seqpipe import ConfigError, Pipeline, build_dataset, element_spec, load_config
from tests.helpers import (
    base_config,
    keras_batch_loss,
    long_table,
    passing,
    raw_sequences,
    write,
)

LENGTHS = np.random.default_rng(21).integers(1, 90, 400)


def _config(path=None, **overrides):
    raw = base_config(path)
    return load_config(raw, {"padding.maxlen": 64, "batching.batch_size": 16,
                             "batching.bucket_boundaries": "auto",
                             "batching.static_shapes": True, "shuffle.buffer_size": 150,
                             "shuffle.seed": 4, **overrides})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    table = long_table(LENGTHS, seed=5)
    path = write(tmp_path_factory.mktemp("static") / "rows.parquet", table, 300)
    return table, path


def test_an_epoch_has_at_most_one_shape_per_bucket(source):
    _, path = source
    pipeline = Pipeline(_config(path))
    buckets = len(pipeline.report.bucket_boundaries) + 1
    for epoch in (0, 1):
        shapes = {b.x["steps"].shape for b in pipeline.batches(epoch)}
        assert len(shapes) <= buckets
        assert {s[0] for s in shapes} == {16}
    # Without it, batches pad to their own longest sequence: many more shapes.
    dynamic = Pipeline(_config(path, **{"batching.static_shapes": False}))
    assert len({b.x["steps"].shape for b in dynamic.batches(0)}) > buckets
    first = {b.x["steps"].shape for b in pipeline.batches(0)}
    assert f"static shapes: {len(first)} per epoch" in str(pipeline.report)
    assert "static shapes" not in str(dynamic.report)


def test_each_bucket_pads_to_its_upper_boundary_as_pad_sequences_does(source):
    table, path = source
    pipeline = Pipeline(_config(path))
    raw = raw_sequences(table)
    edges = list(pipeline.report.bucket_boundaries)
    padded_to = [b - 1 for b in edges] + [64]
    for batch in pipeline.batches(0):
        steps = batch.x["steps"].shape[1]
        bucket = int(np.searchsorted(edges, batch.lengths.max(), side="right"))
        assert steps == padded_to[bucket]
        codes = [raw[i][0][:64] for i in batch.ids]
        expected = keras.utils.pad_sequences(codes, maxlen=steps, dtype="float32",
                                             padding="post", truncating="post")
        np.testing.assert_array_equal(batch.x["steps"][:len(batch.ids), :, 0], expected)
        empty = slice(len(batch.ids), None)  # rows past the batch's sequences
        assert (batch.x["steps"][empty] == 0).all() and (batch.x["static"][empty] == 0).all()
        assert (batch.sample_weight["y"][empty] == 0).all()
        assert (batch.sample_weight["died"][empty] == 0).all()


def test_empty_rows_keep_the_loss_keras_reports_the_masked_mean():
    pipeline = Pipeline(_config(None), long_table(LENGTHS[:50], seed=6))
    batches = list(pipeline.batches(0))
    assert any(len(b.ids) < 16 for b in batches)  # a last batch with empty rows
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    y = keras.layers.Dense(1, name="y")(passing(steps, static))
    died = keras.layers.Dense(1, name="died")(keras.layers.GlobalAveragePooling1D()(steps))
    model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
    model.compile(loss="mse")
    for batch in batches:
        predicted = model.predict_on_batch(batch.x)
        reported = keras_batch_loss(model, batch.x, batch.y, batch.sample_weight)
        for name in ("y", "died"):
            valid = batch.sample_weight[name] > 0
            losses = ((batch.y[name] - predicted[name].astype(np.float64)) ** 2).mean(-1)
            expected = losses[valid].mean() if valid.any() else 0.0
            assert reported[f"{name}_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_auto_boundaries_under_the_static_rule_waste_no_more_than_the_dynamic_ones(source):
    _, path = source
    static = Pipeline(_config(path))
    dynamic_edges = Pipeline(_config(path, **{"batching.static_shapes": False}))
    fixed = Pipeline(_config(path, **{"batching.bucket_boundaries":
                                      list(dynamic_edges.report.bucket_boundaries)}))
    assert static.report.padding_waste <= fixed.report.padding_waste + 1e-9
    assert static.report.padding_waste < static.report.padding_waste_unbucketed


def test_max_timesteps_sizes_each_bucket_by_its_padded_length(source):
    _, path = source
    pipeline = Pipeline(_config(path, **{"batching.max_timesteps": 256}))
    shapes = {b.x["steps"].shape[:2] for b in pipeline.batches(0)}
    assert len(shapes) <= len(pipeline.report.bucket_boundaries) + 1
    for rows, steps in shapes:
        assert rows == min(16, 256 // steps)


def test_element_spec_is_static_where_the_shape_is(source):
    _, path = source
    one_bucket = _config(path, **{"batching.bucket_boundaries": None})
    x, y, w = element_spec(one_bucket)
    assert x["steps"].shape.as_list() == [16, 64, 2] and x["static"].shape.as_list() == [16, 1]
    assert y["y"].shape.as_list() == [16, 64, 1] and w["died"].shape.as_list() == [16]
    dataset = build_dataset(one_bucket)
    assert {tuple(b[0]["steps"].shape) for b in dataset} == {(16, 64, 2)}
    x, _, _ = element_spec(_config(path))  # several buckets: the time axis varies
    assert x["steps"].shape.as_list() == [16, None, 2]
    x, _, _ = element_spec(_config(path, **{"batching.max_timesteps": 256}))
    assert x["steps"].shape.as_list() == [None, None, 2]


def test_a_tf_model_compiled_with_xla_trains_on_static_batches(source):
    _, path = source
    steps = keras.Input((None, 2), name="steps")
    y = keras.layers.Dense(1, name="y")(keras.layers.GRU(4, return_sequences=True)(steps))
    model = keras.Model({"steps": steps}, {"y": y})
    model.compile(loss="mse", optimizer="adam", jit_compile=True)
    config = _config(path, outputs={"y": {"column": "y"}},
                     inputs={"steps": {"columns": ["code", "x"], "normalize": "standard"}})
    history = model.fit(build_dataset(config), epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()


def test_static_shapes_needs_maxlen():
    with pytest.raises(ConfigError, match=r"batching\.static_shapes .* needs one: set "
                                          r"padding\.maxlen"):
        load_config(base_config(None), {"batching.static_shapes": True})


def test_window_batches_all_have_batch_size_rows():
    from tests.test_windows import config as window_config
    from tests.test_windows import stores

    static = window_config(None, batching__batch_size=32, batching__static_shapes=True)
    pipeline = seqpipe.Pipeline(static, stores())
    batches = list(pipeline.batches(0))
    assert len(batches[-1].ids) < 32  # the epoch's windows do not fill its last batch
    assert {b.x["sales"].shape[0] for b in batches} == {32}
    last = batches[-1]
    empty = slice(len(last.ids), None)
    assert (last.sample_weight["units_next"][empty] == 0).all()
    assert (last.x["sales"][empty] == 0).all() and not last.x["real"][empty].any()
    dynamic = seqpipe.Pipeline(window_config(None, batching__batch_size=32), stores())
    for a, b in zip(batches, dynamic.batches(0), strict=True):  # the same windows, in order
        assert a.ids.tolist() == b.ids.tolist()
        rows = len(b.ids)
        for part in ("x", "y", "sample_weight"):
            for name, values in getattr(b, part).items():
                if part == "sample_weight" and rows < 32:  # batch_mean: N counts the rows
                    np.testing.assert_allclose(getattr(a, part)[name][:rows] * rows / 32,
                                               values, rtol=1e-6)
                else:
                    np.testing.assert_array_equal(getattr(a, part)[name][:rows], values)
    x, _, _ = element_spec(static)
    assert x["sales"].shape.as_list()[:2] == [32, 5] and x["store"].shape.as_list() == [32, 1]
    # The report counts the empty rows as padding, and says there is one shape.
    real = sum(int(b.x["real"][:len(b.ids)].sum()) for b in batches)
    assert pipeline.report.padding_waste == pytest.approx(1 - real / (len(batches) * 32 * 5))
    assert "static shapes: 1 per epoch" in str(pipeline.report)


def test_predict_ignores_the_empty_rows(source):
    _, path = source
    steps = keras.Input((None, 2), name="steps")
    y = keras.layers.Dense(1, name="y")(steps)
    static_input = keras.Input((1,), name="static")
    # Not a pooling over time: an unmasked mean over padding changes with the padded length.
    died = keras.layers.Dense(1, name="died")(static_input)
    model = keras.Model({"steps": steps, "static": static_input}, {"y": y, "died": died})
    static = seqpipe.predict(model, _config(path))
    dynamic = seqpipe.predict(model, _config(path, **{"batching.static_shapes": False}))
    for name in ("y", "died"):
        assert len(static[name]) == len(dynamic[name])
        np.testing.assert_allclose(static[name][name], dynamic[name][name], rtol=1e-5)
        assert static[name]["id"].tolist() == dynamic[name]["id"].tolist()


def test_a_materialized_folder_loads_with_static_shapes(source, tmp_path):
    _, path = source
    written = _config(path, **{"batching.static_shapes": False})
    seqpipe.materialize(written, tmp_path / "out")
    dataset = seqpipe.load_materialized(tmp_path / "out", config=_config(path))
    direct = Pipeline(_config(path))
    shapes = {tuple(x["steps"].shape) for x, _, _ in dataset}
    assert shapes == {b.x["steps"].shape for b in direct.batches(0)}
    assert len(shapes) <= len(direct.report.bucket_boundaries) + 1


def test_the_batch_spec_says_static_exactly_when_every_batch_has_one_shape(source):
    """`experimental.spec_of(config).static` (what an extension asks) agrees with the
    shapes the batches really have, for whole sequences and for windows."""
    from seqpipe import experimental
    from tests.test_windows import config as window_config
    from tests.test_windows import stores

    _, path = source
    cases = [(_config(path, **{"batching.bucket_boundaries": None}), None),
             (_config(path), None),
             (_config(path, **{"batching.static_shapes": False}), None),
             (window_config(None, batching__batch_size=32, batching__static_shapes=True),
              stores()),
             (window_config(None, batching__batch_size=32), stores())]
    for config, data in cases:
        shapes = {tuple((name, v.shape) for name, v in sorted(batch.x.items()))
                  for batch in Pipeline(config, data).batches(0)}
        assert experimental.spec_of(config).static == (len(shapes) == 1), config.batching
        assert isinstance(Pipeline(config, data).kind, experimental.BatchKind)
