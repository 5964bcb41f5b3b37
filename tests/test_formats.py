"""`build_dataset(format=...)`: tf.data, Grain and NumPy give the same batches, epoch by
epoch; Grain and NumPy without TensorFlow, and Grain trains a Keras model on JAX."""

import json

import numpy as np
import pytest

from seqpipe import ConfigError, build_dataset, load_config
from tests.helpers import base_config, child_json, long_table, write

LENGTHS = np.random.default_rng(8).integers(1, 40, 90)


def _config(path=None, **overrides):
    return load_config(base_config(path), {"batching.batch_size": 8,
                                           "batching.bucket_boundaries": "auto",
                                           "shuffle.buffer_size": 40, "shuffle.seed": 2,
                                           **overrides})


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write(tmp_path_factory.mktemp("formats") / "rows.parquet",
                 long_table(LENGTHS, seed=1), 100)


def _as_numpy(element):
    x, y, w = element
    return tuple({k: np.asarray(v) for k, v in part.items()} for part in (x, y, w))


def _assert_same_epoch(left, right):
    left, right = list(left), list(right)
    assert len(left) == len(right) > 3
    for a, b in zip(left, right):
        a, b = _as_numpy(a), _as_numpy(b)
        for part_a, part_b in zip(a, b):
            assert part_a.keys() == part_b.keys()
            for name in part_a:
                np.testing.assert_array_equal(part_a[name], part_b[name])


def test_numpy_and_tf_give_the_same_batches_epoch_by_epoch(path):
    tf_data = build_dataset(_config(path))
    batches = build_dataset(_config(path), format="numpy")
    first_tf, first_np = list(tf_data), list(batches)
    _assert_same_epoch(first_tf, first_np)
    _assert_same_epoch(tf_data, batches)  # the second pass of each: epoch 1
    assert len(batches) == len(first_np)
    changed = any(not np.array_equal(_as_numpy(a)[0]["steps"], b[0]["steps"])
                  for a, b in zip(first_tf, batches.epoch(1)))
    assert changed  # epoch 1 is reshuffled


def test_grain_gives_the_same_batches_as_tf(path):
    pytest.importorskip("grain", reason="the grain extra is not installed")
    tf_data = build_dataset(_config(path))
    grain_batches = build_dataset(_config(path), format="grain")
    _assert_same_epoch(tf_data, grain_batches)
    _assert_same_epoch(tf_data, grain_batches)


def test_a_pass_cut_short_does_not_use_up_an_epoch(path):
    batches = build_dataset(_config(path), format="numpy")
    reference = build_dataset(_config(path), format="numpy")
    next(iter(batches))  # as Keras does with a Grain dataset, to learn its shapes
    _assert_same_epoch(reference.epoch(0), batches)  # the next whole pass: still epoch 0
    _assert_same_epoch(reference.epoch(1), batches)  # the pass after a whole one: epoch 1
    tf_data = build_dataset(_config(path))
    for _ in zip(range(3), tf_data):  # a loop that breaks after three batches
        pass
    _assert_same_epoch(reference.epoch(0), tf_data)
    _assert_same_epoch(reference.epoch(1), tf_data)


def test_a_grain_iterator_resumes_from_its_state(path):
    pytest.importorskip("grain", reason="the grain extra is not installed")
    dataset = build_dataset(_config(path), format="grain")
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    assert state == {"epoch": 0, "batches": 3}
    rest = list(iterator)
    resumed = iter(dataset)
    resumed.set_state(state)
    _assert_same_epoch(rest, resumed)


def test_bad_format_arguments_are_clear_errors(path):
    with pytest.raises(ConfigError, match="format must be one of tf, grain, numpy; got 'torch'"):
        build_dataset(_config(path), format="torch")
    with pytest.raises(ConfigError, match="input_context and read_early are for format='tf'"):
        build_dataset(_config(path), format="numpy", read_early=True)


JAX_FIT = """
import json, os, sys
import numpy as np
import keras
import seqpipe

config = seqpipe.load_config(sys.argv[1])
batches = seqpipe.build_dataset(config, format="numpy")
shapes = [x["steps"].shape for x, y, w in batches]
dataset = seqpipe.build_dataset(config, format="grain")
steps = keras.Input((None, 2), name="steps")
static = keras.Input((1,), name="static")
hidden = keras.layers.GRU(4, return_sequences=True)(steps)
y = keras.layers.Dense(1, name="y")(hidden)
died = keras.layers.Dense(1, activation="sigmoid", name="died")(
    keras.layers.GlobalAveragePooling1D()(hidden))
model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
model.compile(loss={"y": "mse", "died": "binary_crossentropy"}, optimizer="adam",
              weighted_metrics={"y": [seqpipe.masked_metric("mse")]})
history = model.fit(dataset, epochs=2, verbose=0)
# NumPy batches: one epoch from a generator, as a custom loop would hand them over.
numpy_history = model.fit(batches.epoch(0), steps_per_epoch=len(batches), epochs=1,
                          verbose=0, shuffle=False)
print(json.dumps({"backend": keras.backend.backend(), "batches": len(shapes),
                  "loss": history.history["loss"], "masked": history.history["y_masked_mse"],
                  "numpy_loss": numpy_history.history["loss"],
                  "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] in
                                       ("tensorflow", "tf_keras"))}))
"""


@pytest.mark.slow
def test_grain_and_numpy_train_a_keras_model_on_jax_without_tensorflow(path, tmp_path):
    for module in ("jax", "grain"):
        pytest.importorskip(module, reason=f"{module} is not installed (the test extra has it)")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(_config(path, **{"padding.maxlen": 32,
                                                  "batching.static_shapes": True}).to_dict()))
    result = child_json(tmp_path, JAX_FIT, config, KERAS_BACKEND="jax")
    assert result["backend"] == "jax"
    assert result["tensorflow"] == []  # neither seqpipe, Grain nor Keras imported it
    assert len(result["loss"]) == 2 and np.isfinite(result["loss"]).all()
    assert np.isfinite(result["numpy_loss"]).all()
    assert np.isfinite(result["masked"]).all() and result["batches"] > 3


def test_grain_without_grain_installed_says_how_to_install_it(path, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(_config(path).to_dict()))
    script = """
    import json, sys
    sys.modules["grain"] = None  # as if it were not installed
    import seqpipe
    try:
        seqpipe.build_dataset(sys.argv[1], format="grain")
    except seqpipe.ConfigError as e:
        print(json.dumps({"error": str(e)}))
    """
    result = child_json(tmp_path, script, config)
    assert result["error"].startswith('format="grain" needs Grain: pip install "seqpipe[grain]"')
