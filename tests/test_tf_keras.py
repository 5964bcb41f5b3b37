"""Keras 2 (`tf_keras`, selected with TF_USE_LEGACY_KERAS=1) trains on seqpipe's datasets,
and the default reduction with `batch_mean` weights reports the masked mean there too."""

import json

import numpy as np
import pytest

from tests.helpers import base_config, child_json, long_table, write

SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
import seqpipe

keras = tf.keras  # tf_keras, with TF_USE_LEGACY_KERAS=1
config = seqpipe.load_config(sys.argv[1])
steps = keras.Input((None, 2), name="steps")
static = keras.Input((1,), name="static")
hidden = keras.layers.Dense(4, activation="tanh")(steps)
y = keras.layers.Dense(1, name="y")(hidden)
died = keras.layers.Dense(1, name="died")(keras.layers.GlobalAveragePooling1D()(hidden))
model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
model.compile(loss={"y": "mse", "died": "mse"}, optimizer="adam")
history = model.fit(seqpipe.build_dataset(config), epochs=2, verbose=0)
checked = []
for batch in seqpipe.Pipeline(config).batches(0):
    predicted = model.predict_on_batch(batch.x)
    model.reset_metrics()
    logs = model.test_on_batch(batch.x, batch.y, batch.sample_weight, return_dict=True)
    for name in ("y", "died"):
        valid = batch.sample_weight[name] > 0
        if valid.any():
            losses = ((batch.y[name] - predicted[name].astype(np.float64)) ** 2).mean(-1)
            checked.append((float(logs[name + "_loss"]), float(losses[valid].mean())))
import tf_keras
print(json.dumps({"keras": tf_keras.__version__, "module": type(model).__module__,
                  "loss": history.history["loss"], "checked": checked}))
"""


@pytest.mark.slow
def test_tf_keras_reports_the_masked_mean_with_batch_mean_weights(tmp_path):
    pytest.importorskip("tf_keras", reason="tf_keras is not installed")
    path = write(tmp_path / "rows.parquet",
                 long_table(np.random.default_rng(4).integers(1, 30, 60), seed=4), 100)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({**base_config(path), "batching": {"batch_size": 8}}))
    result = child_json(tmp_path, SCRIPT, config, TF_USE_LEGACY_KERAS="1")
    assert result["keras"].startswith("2.") and result["module"].startswith("tf_keras")
    assert np.isfinite(result["loss"]).all()
    assert len(result["checked"]) > 10
    for reported, expected in result["checked"]:
        assert reported == pytest.approx(expected, rel=1e-5, abs=1e-7)
