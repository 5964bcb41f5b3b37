"""Sample weights against real Keras: the loss `test_on_batch` reports equals the mean each
weight mode promises, computed by hand in NumPy over the same batch.

Each row of the weight-mode table (README; the full table in docs/weights.md) is a case here.
"""

import keras
import numpy as np
import pytest

from seqpipe import Pipeline, load_config
from seqpipe.weights import batch_weights, sample_weight
from tests.helpers import base_config, keras_batch_loss, long_table

RTOL = 1e-5
LENGTHS = [5, 1, 9, 3, 12, 7, 2, 8, 4, 6, 11, 3, 10]


def _config(mode, **overrides):
    raw = base_config(None)
    raw["inputs"] = {"steps": {"columns": ["x"]},
                     "static": {"columns": ["age"], "level": "sequence"}}
    return load_config(raw, {"weights.mode": mode, "batching.batch_size": 4,
                             "shuffle.buffer_size": 100, "shuffle.seed": 1, **overrides})


def _model(reduction="sum_over_batch_size", masking=False):
    steps = keras.Input((None, 1), name="steps")
    static = keras.Input((1,), name="static")
    hidden = keras.layers.Masking(mask_value=0.0)(steps) if masking else steps
    y = keras.layers.Dense(1, name="y")(keras.layers.Dense(4, activation="tanh")(hidden))
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    scaled_age = keras.layers.Rescaling(0.01)(static)
    died = keras.layers.Dense(1, activation="sigmoid", name="died")(
        keras.layers.Concatenate()([pooled, scaled_age]))
    model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
    model.compile(loss={"y": keras.losses.MeanSquaredError(reduction=reduction),
                        "died": keras.losses.BinaryCrossentropy(reduction=reduction)})
    return model


def _elementwise(model, batch):
    """Per-element losses computed by hand in NumPy (float64) from the model's predictions."""
    predicted = model.predict_on_batch(batch.x)
    y, p = batch.y["y"].astype(np.float64), predicted["y"].astype(np.float64)
    mse = ((y - p) ** 2).mean(axis=-1)
    t = batch.y["died"].astype(np.float64)
    q = np.clip(predicted["died"].astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(t * np.log(q) + (1 - t) * np.log(1 - q)).mean(axis=-1)
    return {"y": mse, "died": bce}


def _reported(model, batch, weights=None):
    logs = keras_batch_loss(model, batch.x, batch.y, weights or batch.sample_weight)
    return {name: logs[f"{name}_loss"] for name in ("y", "died")}


def _valid(batch, name):
    return batch.sample_weight[name] > 0


def _masked_mean(losses, valid):
    return losses[valid].mean() if valid.any() else 0.0


def _epoch(mode, **overrides):
    pipeline = Pipeline(_config(mode, **overrides), long_table(LENGTHS, seed=2))
    return pipeline, list(pipeline.batches())


def test_the_fixture_has_missing_labels_and_padding_in_every_output():
    _, batches = _epoch("binary")
    assert any((~_valid(b, "y") & (b.x["steps"][..., 0] != 0)).any() for b in batches)
    assert any((b.x["steps"][..., 0] == 0).any() for b in batches)
    assert any((~_valid(b, "died")).any() for b in batches)


@pytest.mark.parametrize("mode, reduction", [
    ("batch_mean", "sum_over_batch_size"),
    ("binary", "mean_with_sample_weight"),
    ("batch_mean", "mean_with_sample_weight"),
], ids=["batch_mean-default_reduction", "binary-mean_with_sample_weight",
        "batch_mean-mean_with_sample_weight"])
def test_keras_reports_the_mean_over_present_labels(mode, reduction):
    model = _model(reduction)
    for batch in _epoch(mode)[1]:
        losses, reported = _elementwise(model, batch), _reported(model, batch)
        for name in ("y", "died"):
            expected = _masked_mean(losses[name], _valid(batch, name))
            assert reported[name] == pytest.approx(expected, rel=RTOL, abs=1e-7), name


def test_binary_weights_with_the_default_reduction_divide_by_every_element():
    """Why binary needs mean_with_sample_weight: the default divides by padding too."""
    model = _model()
    batch = max(_epoch("binary")[1], key=lambda b: (~_valid(b, "y")).sum())
    losses, reported = _elementwise(model, batch), _reported(model, batch)
    valid = _valid(batch, "y")
    assert reported["y"] == pytest.approx(losses["y"][valid].sum() / valid.size, rel=RTOL)
    assert reported["y"] < _masked_mean(losses["y"], valid) * 0.95


def test_global_mean_weighs_every_present_label_the_same_across_the_epoch():
    model = _model()
    pipeline, batches = _epoch("global_mean")
    all_losses = {name: [] for name in ("y", "died")}
    batch_losses = {name: [] for name in ("y", "died")}
    for batch in batches:
        losses, reported = _elementwise(model, batch), _reported(model, batch)
        for name in ("y", "died"):
            valid = _valid(batch, name)
            all_losses[name].append(losses[name][valid])
            batch_losses[name].append(reported[name])
    for name in ("y", "died"):
        present = np.concatenate(all_losses[name])
        mean_per_batch = len(present) / len(batches)
        for got, valid_losses in zip(batch_losses[name], all_losses[name]):
            assert got == pytest.approx(valid_losses.sum() / mean_per_batch, rel=RTOL)
        assert np.mean(batch_losses[name]) == pytest.approx(present.mean(), rel=RTOL)


def test_sequence_mean_counts_every_sequence_the_same():
    model = _model()
    for batch in _epoch("sequence_mean")[1]:
        losses, reported = _elementwise(model, batch), _reported(model, batch)
        valid = _valid(batch, "y")
        per_sequence = [losses["y"][i][valid[i]].mean() for i in range(len(valid))
                        if valid[i].any()]
        expected = np.mean(per_sequence) if per_sequence else 0.0
        assert reported["y"] == pytest.approx(expected, rel=RTOL, abs=1e-7)
        died_valid = _valid(batch, "died")
        assert reported["died"] == pytest.approx(_masked_mean(losses["died"], died_valid),
                                                 rel=RTOL, abs=1e-7)


@pytest.mark.parametrize("mode", ["binary", "batch_mean", "global_mean", "sequence_mean"])
def test_an_output_with_no_present_label_in_a_batch_gives_loss_zero_not_nan(mode):
    table = long_table([4, 6, 3], seed=4, outcome_missing=1.0)
    pipeline = Pipeline(_config(mode, **{"batching.batch_size": 8}), table)
    batch = next(pipeline.batches())
    assert not batch.sample_weight["died"].any()
    reported = _reported(_model(), batch)
    assert reported["died"] == 0.0
    assert np.isfinite(reported["y"])


def test_a_nan_label_with_weight_zero_still_poisons_the_keras_loss():
    """The Keras fact behind filling missing labels: 0 * NaN is NaN."""
    model = _model()
    batch = _epoch("batch_mean")[1][0]
    valid = _valid(batch, "y")
    with_nan = {**batch.y, "y": np.where(valid[..., None], batch.y["y"], np.nan)}
    logs = keras_batch_loss(model, batch.x, with_nan, batch.sample_weight)
    assert np.isnan(logs["y_loss"])
    assert np.isfinite(_reported(model, batch)["y"])  # seqpipe's filled labels


def test_rescaled_weights_with_a_masking_layer_are_rescaled_twice():
    """The Masking pitfall: Keras rescales the mask itself, so batch_mean + Masking is wrong."""
    model = _model(masking=True)
    batch = max(_epoch("batch_mean")[1], key=lambda b: (b.x["steps"][..., 0] == 0).sum())
    losses, reported = _elementwise(model, batch), _reported(model, batch)
    valid = _valid(batch, "y")
    real = batch.x["steps"][..., 0] != 0
    masked_mean = _masked_mean(losses["y"], valid)
    assert reported["y"] == pytest.approx(masked_mean * real.size / real.sum(), rel=RTOL)
    assert reported["y"] > masked_mean * 1.05


def test_binary_weights_with_a_masking_layer_divide_by_real_timesteps():
    """binary + Masking + default: right only when no label is missing."""
    model = _model(masking=True)
    batch = max(_epoch("binary")[1], key=lambda b: (~_valid(b, "y")).sum())
    losses, reported = _elementwise(model, batch), _reported(model, batch)
    valid, real = _valid(batch, "y"), batch.x["steps"][..., 0] != 0
    assert (valid & ~real).sum() == 0 and valid.sum() < real.sum()
    assert reported["y"] == pytest.approx(losses["y"][valid].sum() / real.sum(), rel=RTOL)


def test_binary_with_mean_with_sample_weight_is_right_with_a_masking_layer():
    model = _model("mean_with_sample_weight", masking=True)
    for batch in _epoch("binary")[1]:
        losses, reported = _elementwise(model, batch), _reported(model, batch)
        expected = _masked_mean(losses["y"], _valid(batch, "y"))
        assert reported["y"] == pytest.approx(expected, rel=RTOL, abs=1e-7)


def test_one_dimensional_weights_on_a_per_timestep_loss_are_rejected_by_keras():
    """Why a per-timestep output gets (B, T) weights, never (B,)."""
    model = _model()
    batch = next(b for b in _epoch("batch_mean")[1] if b.x["steps"].shape[1] != len(b.ids))
    flat = {**batch.sample_weight, "y": np.ones(len(batch.ids), np.float32)}
    with pytest.raises(Exception, match="(?i)dimensions must be equal|incompatible|must match the size"):
        model.test_on_batch(batch.x, batch.y, flat)


@pytest.mark.parametrize("mode", ["binary", "batch_mean", "global_mean", "sequence_mean"])
def test_padding_and_missing_labels_always_get_weight_zero(mode):
    valid = np.array([[True, False, True], [False, False, False], [True, True, False]])
    weights = sample_weight(mode, valid, mean_valid_per_batch=2.5)
    assert (weights[~valid] == 0).all() and (weights[valid] > 0).all()
    assert weights.dtype == np.float32


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match=r"weights mode must be one of .*; got 'mean'"):
        sample_weight("mean", np.array([True]))


@pytest.mark.parametrize("mode", ["binary", "batch_mean", "global_mean", "sequence_mean"])
@pytest.mark.parametrize("per_timestep", [True, False])
def test_a_groups_weights_at_once_equal_sample_weight_batch_by_batch(mode, per_timestep):
    """Assembly weighs a group's batches at once; each must get exactly what
    `sample_weight` (checked against Keras above) gives it alone, including a batch with
    no valid label, and the gaps between batches must be left alone."""
    rng = np.random.default_rng(5)
    rows = np.array([3, 1, 4, 2, 5])
    steps = np.array([7, 2, 1, 9, 3]) if per_timestep else None
    sizes = rows * steps if per_timestep else rows
    start = np.concatenate([[0], np.cumsum(sizes + 3)[:-1]])  # 3 positions between batches
    valid = np.zeros(start[-1] + sizes[-1] + 3, dtype=bool)
    for j, (a, n) in enumerate(zip(start, sizes)):
        valid[a:a + n] = rng.random(n) < (0.0 if j == 2 else 0.6)
    out = np.full(len(valid), -7.0, dtype=np.float32)
    batch_weights(mode, valid, start, rows, steps, 2.5, out)
    for j, (a, n) in enumerate(zip(start, sizes)):
        shape = (rows[j], steps[j]) if per_timestep else (rows[j],)
        expected = sample_weight(mode, valid[a:a + n].reshape(shape), 2.5)
        np.testing.assert_array_equal(out[a:a + n].reshape(shape), expected)
    gaps = np.ones(len(valid), dtype=bool)
    for a, n in zip(start, sizes):
        gaps[a:a + n] = False
    assert (out[gaps] == -7.0).all()
