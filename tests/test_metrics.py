"""`seqpipe.masked_metric` against real Keras: over an epoch, the metric equals the mean of
the per-element loss over present labels, computed by hand from the model's predictions.

Backend-agnostic: the main suite runs it on TensorFlow (graph and eager), `.ci/run` again
with KERAS_BACKEND=jax."""

import keras
import numpy as np
import pytest

import seqpipe
from seqpipe import Pipeline, build_dataset, load_config
from tests.helpers import base_config, long_table, sessions

# Lengths and a batch size that make batches hold very different numbers of labels.
LENGTHS = [30, 2, 3, 25, 1, 4, 28, 2, 5, 3, 27, 1, 2]


def _config(mode):
    raw = base_config(None)
    raw["inputs"] = {"steps": {"columns": ["x"]}}
    return load_config(raw, {"weights.mode": mode, "batching.batch_size": 4})


def _model(run_eagerly=False):
    steps = keras.Input((None, 1), name="steps")
    hidden = keras.layers.Dense(4, activation="tanh")(steps)
    y = keras.layers.Dense(1, name="y")(hidden)
    died = keras.layers.Dense(1, activation="sigmoid", name="died")(
        keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model({"steps": steps}, {"y": y, "died": died})
    model.compile(loss={"y": "mse", "died": "binary_crossentropy"},
                  weighted_metrics={"y": [seqpipe.masked_metric("mse")],
                                    "died": [seqpipe.masked_metric(
                                        keras.losses.BinaryCrossentropy())]},
                  run_eagerly=run_eagerly)
    return model


def _by_hand(model, batches):
    """The epoch's mean loss over present labels, in float64 NumPy."""
    losses = {"y": [], "died": []}
    for batch in batches:
        predicted = model.predict_on_batch(batch.x)
        y = batch.y["y"].astype(np.float64)
        mse = ((y - predicted["y"].astype(np.float64)) ** 2).mean(-1)
        t = batch.y["died"].astype(np.float64)
        q = np.clip(predicted["died"].astype(np.float64), 1e-7, 1 - 1e-7)
        bce = -(t * np.log(q) + (1 - t) * np.log(1 - q)).mean(-1)
        losses["y"].append(mse[batch.sample_weight["y"] > 0])
        losses["died"].append(bce[batch.sample_weight["died"] > 0])
    return {name: np.concatenate(values).mean() for name, values in losses.items()}


# Graph and eager differ on TensorFlow only (the other backends have one way to run).
EAGER = ([False, True] if keras.backend.backend() == "tensorflow" else [False])


@pytest.mark.parametrize("mode", ["batch_mean", "global_mean", "binary", "sequence_mean"])
@pytest.mark.parametrize("run_eagerly", EAGER, ids=["graph", "eager"][:len(EAGER)])
def test_the_metric_is_the_masked_mean_over_the_epoch(mode, run_eagerly):
    config = _config(mode)
    table = long_table(LENGTHS, seed=3)
    model = _model(run_eagerly)
    # No shuffle: every pass over the data gives the same batches, so the epoch `evaluate`
    # reads is the one computed by hand.
    batches = list(Pipeline(config, table).batches(0))
    assert len({int((b.sample_weight["y"] > 0).sum()) for b in batches}) > 2
    logs = model.evaluate(build_dataset(config, table, format="numpy").epoch(0),
                          verbose=0, return_dict=True, steps=len(batches))
    expected = _by_hand(model, batches)
    assert logs["y_masked_mse"] == pytest.approx(expected["y"], rel=1e-5)
    assert logs["died_masked_binary_crossentropy"] == pytest.approx(expected["died"],
                                                                   rel=1e-5)


def test_keras_own_epoch_loss_is_not_the_masked_mean_here():
    """Why the metric exists: with these batches, the epoch figure Keras shows for an
    output differs from the mean over its present labels."""
    config = _config("batch_mean")
    table = long_table(LENGTHS, seed=3)
    model = _model()
    batches = list(Pipeline(config, table).batches(0))
    logs = model.evaluate(build_dataset(config, table, format="numpy").epoch(0), verbose=0,
                          return_dict=True, steps=len(batches))
    expected = _by_hand(model, batches)["y"]
    assert logs["y_masked_mse"] == pytest.approx(expected, rel=1e-5)
    assert abs(logs["y_loss"] - expected) > 1e-3 * expected


def test_fit_shows_the_metric_per_epoch_and_it_survives_saving(tmp_path):
    config = _config("batch_mean")
    table = long_table(LENGTHS, seed=3)
    model = _model()
    batches = build_dataset(config, table, format="numpy")
    history = model.fit(batches.epoch(0), epochs=1, steps_per_epoch=len(batches), verbose=0,
                        shuffle=False)
    assert np.isfinite(history.history["y_masked_mse"]).all()
    model.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras")
    batches = list(Pipeline(config, table).batches(0))
    logs = again.evaluate(build_dataset(config, table, format="numpy").epoch(0), verbose=0,
                          return_dict=True, steps=len(batches))
    assert logs["y_masked_mse"] == pytest.approx(_by_hand(again, batches)["y"], rel=1e-5)


@pytest.mark.parametrize("run_eagerly", EAGER, ids=["graph", "eager"][:len(EAGER)])
def test_with_static_shapes_global_mean_makes_keras_own_epoch_loss_the_masked_mean(
        run_eagerly):
    """Every batch has batch_size rows, so Keras's weighting by batch size changes nothing:
    `<output>_loss` is the epoch's masked mean on every backend (what the docs say)."""
    config = load_config(_config("global_mean"), {"batching.static_shapes": True,
                                                  "padding.maxlen": 32})
    table = long_table(LENGTHS, seed=3)
    model = _model(run_eagerly)
    batches = list(Pipeline(config, table).batches(0))
    assert len(batches) > 2 and len({len(b.ids) for b in batches}) > 1  # a short last batch
    logs = model.evaluate(build_dataset(config, table, format="numpy").epoch(0), verbose=0,
                          return_dict=True, steps=len(batches))
    expected = _by_hand(model, batches)
    assert logs["y_loss"] == pytest.approx(expected["y"], rel=1e-5)
    assert logs["died_loss"] == pytest.approx(expected["died"], rel=1e-5)


def test_a_bad_loss_is_a_clear_error():
    with pytest.raises(TypeError, match="masked_metric: loss must be"):
        seqpipe.masked_metric(3)


def test_the_epoch_sums_stay_exact_over_millions_of_labels():
    """float32 running sums lose the low digits of each batch once they are large; the
    metric's compensated sums do not (against float64 NumPy)."""
    rng = np.random.default_rng(0)
    metric = seqpipe.masked_metric(lambda y_true, y_pred: y_pred)  # the values themselves
    total, count = 0.0, 0
    for _ in range(2000):
        values = rng.uniform(999.0, 1001.0, 10_000).astype(np.float32)
        weights = (rng.random(10_000) < 0.9).astype(np.float32)
        metric.update_state(values, values, sample_weight=weights)
        total += values[weights > 0].astype(np.float64).sum()
        count += int((weights > 0).sum())
    assert count > 2 ** 24  # past float32's exact integers
    assert float(metric.result()) == pytest.approx(total / count, rel=2e-7)


def _classifier(classes):
    vitals = keras.Input((None, 2), name="vitals")
    hidden = keras.layers.GRU(4)(keras.layers.Masking(0.0)(vitals))
    dx = keras.layers.Dense(classes, activation="softmax", name="dx")(hidden)
    model = keras.Model({"vitals": vitals}, {"dx": dx})
    model.compile(loss={"dx": "sparse_categorical_crossentropy"},
                  weighted_metrics={"dx": [
                      seqpipe.masked_metric("accuracy"),
                      seqpipe.masked_metric("sparse_categorical_accuracy"),
                      seqpipe.masked_metric(keras.metrics.SparseCategoricalAccuracy(),
                                            name="instance"),
                      "sparse_categorical_accuracy"]})
    return model


def test_masked_accuracy_is_the_accuracy_of_the_predicted_labels_over_the_epoch():
    """Static shapes and batch_mean: the last, smaller batch's rows weigh more, so Keras's
    own weighted accuracy is a weighted figure; the masked one equals the accuracy of the
    labels `predict` returns, against the labels in the data."""
    keras.utils.set_random_seed(0)
    table = sessions(n=90, seed=5)
    config = load_config({
        "source": {"id_column": "id", "time_column": "ts"},
        "inputs": {"vitals": {"columns": ["hr", "bp"], "fill_value": 0.0,
                              "normalize": "standard"}},
        "outputs": {"dx": {"column": "dx", "level": "sequence", "categorical": True}},
        "padding": {"maxlen": 14}, "split": {"validation": 0.4, "seed": 1},
        "batching": {"batch_size": 8, "static_shapes": True}})
    statistics = Pipeline(config, table, split="train").statistics
    model = _classifier(statistics.input_dim("dx"))
    validation = build_dataset(config, table, split="validation", format="numpy",
                               statistics=statistics)
    logs = model.evaluate(validation.epoch(0), steps=len(validation), verbose=0,
                          return_dict=True)
    predicted = seqpipe.predict(model, config, table, split="validation",
                                statistics=statistics)["dx"].set_index("id")["dx"]
    truth = table.to_pandas().groupby("id")["dx"].first().dropna()
    truth = truth[truth.index.isin(predicted.index)]
    assert 20 < len(truth) < len(predicted) + 1
    accuracy = float((predicted[truth.index] == truth).mean())
    for name in ("masked_accuracy", "masked_sparse_categorical_accuracy", "instance"):
        assert logs[name] == pytest.approx(accuracy, rel=1e-6)
    assert len({len(b.ids) for b in Pipeline(config, table, split="validation",
                                             statistics=statistics).batches()}) > 1


def test_masked_mae_from_a_name_an_instance_and_a_function_is_the_masked_mean():
    raw = _config("batch_mean").to_dict()
    raw["outputs"] = {"y": raw["outputs"]["y"]}
    config = load_config(raw)
    table = long_table(LENGTHS, seed=3)
    steps = keras.Input((None, 1), name="steps")
    y = keras.layers.Dense(1, name="y")(keras.layers.Dense(4, activation="tanh")(steps))
    model = keras.Model({"steps": steps}, {"y": y})
    model.compile(loss={"y": "mse"}, weighted_metrics={"y": [
        seqpipe.masked_metric("mae"),
        seqpipe.masked_metric(keras.metrics.MeanAbsoluteError(), name="instance"),
        seqpipe.masked_metric(lambda t, p: keras.ops.abs(t - p), name="function")]})
    batches = list(Pipeline(config, table).batches(0))
    logs = model.evaluate(build_dataset(config, table, format="numpy").epoch(0), verbose=0,
                          return_dict=True, steps=len(batches))
    errors = [np.abs(b.y["y"][..., 0].astype(np.float64)
                     - model.predict_on_batch(b.x)["y"][..., 0])[b.sample_weight["y"] > 0]
              for b in batches]
    expected = np.concatenate(errors).mean()
    for name in ("masked_mae", "instance", "function"):  # one output: no prefix
        assert logs[name] == pytest.approx(expected, rel=1e-5)


def test_a_metric_that_is_not_a_mean_of_elements_is_a_clear_error():
    with pytest.raises(TypeError, match=r"masked_metric takes metrics that are a mean of "
                                        r"per-element values .*'auc' \(AUC\) is not"):
        seqpipe.masked_metric("auc")
    with pytest.raises(ValueError, match=r"masked_metric: 'nonsense' is neither a Keras loss "
                                         r"nor a Keras metric"):
        seqpipe.masked_metric("nonsense")
