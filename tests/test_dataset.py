"""The tf.data layer: same batches as the NumPy pipeline, and model.fit runs on it."""

import gc
import os
import threading
import time
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from seqpipe import Pipeline, build_dataset, element_spec, load_config
from seqpipe._internal.buffers import SHARED
from tests.helpers import base_config, long_table, passing, sorted_by_id, write

LENGTHS = [5, 1, 9, 3, 12, 7, 2, 8, 4, 6, 11, 3, 10, 4]


def _config(**overrides):
    return load_config(base_config(None), {"shuffle.buffer_size": 100, "shuffle.seed": 9,
                                           "batching.bucket_boundaries": "auto",
                                           **overrides})


def _as_numpy(element):
    return tf.nest.map_structure(lambda t: t.numpy(), element)


def _assert_same_batches(got: list, expected: list) -> None:
    """Dataset elements (as NumPy) against the NumPy pipeline's batches."""
    assert len(got) == len(expected)
    for (x, y, weights), batch in zip(got, expected):
        for name in batch.x:
            np.testing.assert_array_equal(x[name], batch.x[name])
        for name in batch.y:
            np.testing.assert_array_equal(y[name], batch.y[name])
            np.testing.assert_array_equal(weights[name], batch.sample_weight[name])


def test_each_pass_is_one_epoch_equal_to_the_numpy_batches():
    pipeline = Pipeline(_config(), long_table(LENGTHS))
    dataset = build_dataset(pipeline)
    for epoch in (0, 1):
        _assert_same_batches([_as_numpy(e) for e in dataset], list(pipeline.batches(epoch)))


def test_element_spec_and_cardinality():
    pipeline = Pipeline(_config(), long_table(LENGTHS))
    dataset = build_dataset(pipeline)
    x, y, weights = dataset.element_spec
    assert x["steps"].shape.as_list() == [None, None, 2]
    assert x["static"].shape.as_list() == [None, 1]
    assert y["y"].shape.as_list() == [None, None, 1] and y["died"].shape.as_list() == [None, 1]
    assert weights["y"].shape.as_list() == [None, None]
    assert weights["died"].shape.as_list() == [None]
    assert dataset.element_spec == element_spec(pipeline.config)
    assert dataset.cardinality().numpy() == pipeline.report.batches_per_epoch


def test_element_spec_takes_a_mapping_or_a_yaml_path_as_build_dataset_does(tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config().to_dict()))
    for given in (_config().to_dict(), tmp_path / "c.yaml", str(tmp_path / "c.yaml")):
        assert element_spec(given) == element_spec(_config())


def test_autotuning_and_default_rewrites_are_off_and_a_user_can_turn_them_back_on():
    """Off because deleting an iterator waits for the autotuner's thread, often for about a
    second (benchmarks/iterator_deletion.py), and the rewrites slow every iterator's
    creation; the user's later options win."""
    dataset = build_dataset(Pipeline(_config(), long_table(LENGTHS)))
    assert dataset.options().autotune.enabled is False
    assert dataset.options().experimental_optimization.apply_default_optimizations is False
    options = tf.data.Options()
    options.autotune.enabled = True
    options.experimental_optimization.apply_default_optimizations = True
    mine = dataset.with_options(options).options()
    assert mine.autotune.enabled is True
    assert mine.experimental_optimization.apply_default_optimizations is True


def test_same_config_and_seed_give_the_same_batches_run_after_run(tmp_path):
    path = write(tmp_path / "d.parquet", long_table(LENGTHS))
    config = load_config(_config(), {"source.path": path})
    runs = [[_as_numpy(e)[0]["steps"] for e in build_dataset(config)] for _ in range(2)]
    assert len(runs[0]) == len(runs[1])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_in_memory_dataframe_builds_a_dataset():
    dataset = build_dataset(_config(), long_table(LENGTHS).to_pandas())
    assert sum(int(x["steps"].shape[0]) for x, _, _ in dataset) == len(LENGTHS)


def _two_output_model():
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    hidden = keras.layers.GRU(8, return_sequences=True)(steps)
    y = keras.layers.Dense(1, name="y")(hidden)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    died = keras.layers.Dense(1, activation="sigmoid", name="died")(
        keras.layers.Concatenate()([pooled, keras.layers.Rescaling(0.01)(static)]))
    model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
    model.compile(optimizer="adam", loss={"y": "mse", "died": "binary_crossentropy"})
    return model


@pytest.mark.slow
def test_model_fit_on_a_two_output_model_runs_with_finite_loss():
    config = load_config(_config(), {"inputs.steps.columns": ["x", "age"],
                                     "padding.maxlen": 8})
    dataset = build_dataset(config, long_table(LENGTHS * 3, seed=1))
    history = _two_output_model().fit(dataset, epochs=2, verbose=0, shuffle=False)
    for key in ("loss", "y_loss", "died_loss"):
        assert np.isfinite(history.history[key]).all(), key
    assert len(history.history["loss"]) == 2


def test_without_outputs_the_dataset_yields_features_for_predict():
    raw = base_config(None)
    del raw["outputs"]
    dataset = build_dataset(raw, long_table(LENGTHS))
    assert set(dataset.element_spec) == {"steps", "static"}
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(passing(steps, static)))
    model = keras.Model({"steps": steps, "static": static}, out)
    assert model.predict(dataset, verbose=0).shape == (len(LENGTHS), 1)


def _address_range(array: np.ndarray) -> tuple:
    start = array.__array_interface__["data"][0]
    return start, start + array.nbytes


def test_batches_reach_keras_without_a_copy(monkeypatch):
    """A group's flat arrays go to TensorFlow as they are, and each batch is a slice of them.
    TensorFlow's slice copies unless the batch starts and ends on 64-byte boundaries, so
    every batch starts on one: a batch tensor of a multiple of 16 values (all of them, with
    a batch_size that is a multiple of 16) is a view into its group's array."""
    from seqpipe.tfdata import handoff
    from tests.test_buffers import tensorflow_wraps_generator_arrays

    if not tensorflow_wraps_generator_arrays():
        pytest.skip(f"on TensorFlow {tf.__version__} a tensor from tf.data's generator does "
                    f"not share the array's memory (2.21's does): every batch is a copy")
    groups = []
    hand_off = handoff.hand_off

    def keep(group, config, finish=None):
        element = hand_off(group, config, finish)
        groups.append([_address_range(a) for part in (element.x, element.y,
                                                       element.sample_weight)
                       for a in part.values()])
        return element

    monkeypatch.setattr(handoff, "hand_off", keep)
    lengths = np.random.default_rng(3).integers(1, 40, 300)
    # batch_size 8: a batch of odd length leaves the next one's start unaligned, unless
    # seqpipe aligns it.
    pipeline = Pipeline(_config(**{"batching.batch_size": 8}), long_table(lengths))
    views = 0
    for element in build_dataset(pipeline):
        for tensor in tf.nest.flatten(element):
            if tensor.shape.num_elements() % 16:
                continue  # ends off a boundary: TensorFlow copies it
            low, high = _address_range(np.asarray(tensor))  # .numpy() would copy
            assert any(a <= low and high <= b for group in groups for a, b in group), (
                f"a batch tensor of shape {tensor.shape} is a copy, not a view of its group")
            views += 1
    assert views > 50


def test_batches_a_user_keeps_hold_their_values_while_later_epochs_reuse_memory():
    """Epochs reuse the memory of groups nothing refers to any more (`seqpipe._internal.buffers`);
    a batch still held, as a tensor or as NumPy, keeps its own."""
    lengths = np.random.default_rng(5).integers(1, 40, 400)
    pipeline = Pipeline(_config(**{"shuffle.buffer_size": 30, "batching.batch_size": 16}),
                        long_table(lengths))
    dataset = build_dataset(pipeline)
    held = list(dataset)  # every tensor of epoch 0
    expected = [_as_numpy(element) for element in held]
    numpy_batches = list(pipeline.batches(3))
    numpy_expected = [(dict(b.x), dict(b.y)) for b in pipeline.batches(3)]
    numpy_expected = tf.nest.map_structure(np.copy, numpy_expected)
    reused = SHARED.reused  # the pool every Pipeline draws on
    for _ in range(2):
        for _ in dataset:
            pass
    assert SHARED.reused > reused + 20  # later epochs did reuse memory
    for element, values in zip(held, expected):
        tf.nest.map_structure(np.testing.assert_array_equal, _as_numpy(element), values)
    for batch, (x, y) in zip(numpy_batches, numpy_expected):
        tf.nest.map_structure(np.testing.assert_array_equal, (batch.x, batch.y), (x, y))


def _producers() -> list:
    return [t for t in threading.enumerate() if t.name == "seqpipe-producer" and t.is_alive()]


def test_building_reads_nothing_until_the_dataset_is_iterated():
    """Building a dataset starts no reading: a validation dataset built beside the training
    one holds nothing, and takes no CPU, until Keras iterates it."""
    lengths = np.random.default_rng(4).integers(1, 40, 600)
    config = _config(**{"shuffle.buffer_size": 20})  # many small groups: more than it queues
    before = len(_producers())
    dataset = build_dataset(config, long_table(lengths))
    time.sleep(0.3)
    assert len(_producers()) == before
    iterator = iter(dataset)
    next(iterator)
    assert len(_producers()) == before + 1  # the epoch is being read now
    del iterator


def test_an_iterator_starts_its_epoch_before_tensorflow_asks_and_reads_it_once(
        tmp_path, reads):
    """Making an iterator eagerly (`iter(dataset)`: a for loop, Keras) starts reading its
    epoch while TensorFlow sets the iterator up; the pass then takes that producer and reads
    every row group once. A pass cut short leaves the next pass the same epoch, and a
    dataset deleted with an iterator unread stops what it started."""
    lengths = np.random.default_rng(4).integers(1, 40, 600)
    path = write(tmp_path / "data.parquet", sorted_by_id(long_table(lengths)), 500)
    config = _config(**{"source.path": str(path), "shuffle.buffer_size": 20,
                        "source.memory_mb": 0})
    expected = [list(Pipeline(config).batches(epoch)) for epoch in (0, 1)]
    pipeline = Pipeline(config)
    reads[0] = 0
    list(pipeline.batches(0))
    per_epoch = reads[0]
    dataset = build_dataset(config)  # its index is read here
    reads[0] = 0
    time.sleep(0.2)
    assert reads[0] == 0  # no epoch is read until an iterator is made
    iterator = iter(dataset)
    deadline = time.monotonic() + 10
    while not reads[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reads[0]  # before any batch was asked for
    _assert_same_batches([_as_numpy(e) for e in iterator], expected[0])
    assert reads[0] == per_epoch  # the producer started early is the one the pass read
    next(iter(dataset))  # a pass cut short: epoch 1 is still to come
    _assert_same_batches([_as_numpy(e) for e in dataset], expected[1])
    before = set(_producers())
    iterator = iter(dataset)
    mine = set(_producers()) - before
    assert len(mine) == 1
    del iterator, dataset
    gc.collect()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in mine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in mine)


def test_read_early_starts_the_first_epoch_at_once_and_stops_if_deleted_unread():
    """With read_early, build_dataset reads and assembles the first epoch while TensorFlow
    builds the dataset and its iterator; a dataset deleted before anyone iterates it stops."""
    lengths = np.random.default_rng(4).integers(1, 40, 600)
    config = _config(**{"shuffle.buffer_size": 20})  # many small groups: more than it queues
    # Threads, not counts: an earlier test's producer may still be ending while this runs.
    before = set(_producers())
    dataset = build_dataset(config, long_table(lengths), read_early=True)
    time.sleep(0.5)
    mine = set(_producers()) - before
    assert len(mine) == 1  # waiting for a consumer, its queue full
    del dataset
    gc.collect()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in mine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in mine)


def test_a_deleted_dataset_lets_go_of_its_pipeline():
    """TensorFlow keeps every function given to from_generator for the life of the process
    (tensorflow/tensorflow#57690); the pipeline, with its index and plans, must not be kept
    with it, or a dataset built per fold or per epoch keeps every earlier one."""
    pipelines = [Pipeline(_config(), long_table(LENGTHS)) for _ in range(3)]
    kept = [weakref.ref(p) for p in pipelines]
    for pipeline in pipelines:
        for _ in build_dataset(pipeline):
            pass
    del pipelines, pipeline
    gc.collect()
    assert [ref() for ref in kept] == [None, None, None]


def test_an_iterator_or_a_derived_dataset_keeps_the_pipeline_while_in_use():
    """The pipeline goes with the last thing that can still iterate it, not with the
    variable the user built the dataset into."""
    pipeline = Pipeline(_config(), long_table(LENGTHS))
    expected = list(pipeline.batches(0))
    kept = weakref.ref(pipeline)
    iterator = iter(build_dataset(pipeline))
    derived = build_dataset(pipeline).map(lambda x, y, w: (x, y, w))
    del pipeline
    gc.collect()
    _assert_same_batches([_as_numpy(e) for e in iterator], expected)
    _assert_same_batches([_as_numpy(e) for e in derived], expected)
    assert kept() is not None  # `derived` can still be iterated
    del iterator, derived
    gc.collect()
    assert kept() is None


def test_an_epoch_asked_of_a_deleted_dataset_says_to_keep_a_reference():
    """Only a copy of the dataset TensorFlow made from its graph can still ask once the
    dataset is deleted; it gets a message, not a KeyError."""
    from seqpipe.tfdata import dataset as seqpipe_dataset

    dataset = build_dataset(Pipeline(_config(), long_table(LENGTHS)))
    token = max(seqpipe_dataset._LIVE)
    next(iter(seqpipe_dataset._epochs_of(token)))  # the dataset's own epochs, while alive
    del dataset
    gc.collect()
    assert token not in seqpipe_dataset._LIVE
    with pytest.raises(RuntimeError, match="dataset was deleted: keep a reference"):
        seqpipe_dataset._epochs_of(token)


def _graph(config):
    """The graph of the traced function that makes a config's dataset, with every function
    in it (a generator's dataset cannot be serialized itself)."""
    from seqpipe.tfdata import dataset as seqpipe_dataset

    traced = seqpipe_dataset._traced_dataset(config)
    return traced.get_concrete_function(tf.TensorSpec((), tf.int64)).graph.as_graph_def()


def test_internal_dataset_functions_skip_the_multi_device_path_with_public_fallback(
        monkeypatch):
    """Every function of the dataset is marked to be instantiated for the CPU alone, without
    Grappler and oneDNN's layout pass (most of the cost of making each epoch's iterator),
    and the per-batch map runs in the caller's thread; a TensorFlow without the private
    classes this needs gets `from_generator`, `flat_map` and `map`, with the same batches."""
    from seqpipe.tfdata import dataset as seqpipe_dataset
    from seqpipe.tfdata import stages

    pipeline = Pipeline(_config(), long_table(LENGTHS))
    marked = build_dataset(pipeline)
    graph = _graph(pipeline.config)
    functions = graph.library.function
    assert len(functions) >= 5  # the generator's three, the block's split, the batch's map
    assert all(f.attr["experimental_ints_on_device"].b for f in functions)
    maps = [node for node in graph.node if node.op == "MapDataset"]
    maps += [node for f in functions for node in f.node_def if node.op == "MapDataset"]
    assert maps and all(not m.attr["use_inter_op_parallelism"].b for m in maps)
    _assert_same_batches([_as_numpy(e) for e in marked], list(pipeline.batches(0)))

    monkeypatch.setattr(stages, "_internals", lambda: None)  # as where TensorFlow lacks them
    monkeypatch.setattr(seqpipe_dataset, "_TRACED", {})  # traced again, with the fallback
    pipeline = Pipeline(_config(), long_table(LENGTHS))
    public = build_dataset(pipeline)
    assert not any(f.attr["experimental_ints_on_device"].b
                   for f in _graph(pipeline.config).library.function)
    for epoch in (0, 1):
        _assert_same_batches([_as_numpy(e) for e in public], list(pipeline.batches(epoch)))


def test_internal_a_generator_stage_gives_each_iterator_its_own_pass_closed_when_it_goes():
    """Two iterators at once each get their own Python iterator from `start`; an iterator
    dropped part way closes its generator (its `finally` runs, as a seqpipe producer's
    must, to stop); an error raised in the generator reaches the caller."""
    from seqpipe.tfdata import stages

    started, closed = [], []

    def start(token):
        started.append(int(token))
        number = len(started)
        try:
            for i in range(3):
                if token == 7 and i == 1:
                    raise ValueError("bad block 1")
                yield {"v": np.full(2, 10 * number + i, np.float32)}
        finally:
            closed.append(number)

    spec = {"v": tf.TensorSpec((None,), tf.float32)}
    dataset = stages.generator(start, tf.constant(3, tf.int64), spec)
    assert dataset.element_spec == spec
    first, second = iter(dataset), iter(dataset)
    assert next(first)["v"].numpy().tolist() == [10, 10]
    assert [e["v"].numpy()[0] for e in second] == [20, 21, 22]
    assert next(first)["v"].numpy().tolist() == [11, 11]
    assert started == [3, 3] and closed == [2]
    del first
    gc.collect()
    assert sorted(closed) == [1, 2]
    failing = stages.generator(start, tf.constant(7, tf.int64), spec)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad block 1"):
        list(failing)


EXITING = """
import sys, time
from seqpipe._internal.threads import Background

def source():
    try:
        yield from range(100)
    finally:
        time.sleep(0.3)  # lets the GIL go, as pyarrow does when a file fragment is freed
        with open(sys.argv[1], "w") as f:
            f.write("closed")

producer = iter(Background(source(), depth=1))
assert next(producer) == 0
# The program ends here, its producer running: the queue is full and waits for it.
"""


def test_internal_a_producer_still_running_at_exit_closes_its_source_before_the_exit(
        tmp_path):
    """The interpreter's exit stops and waits for running producers, so their sources
    close while Python is alive. A daemon thread woken during finalization was ended where
    it stood; inside pyarrow's C++ destructors that aborted the process after `model.fit`
    had finished ("terminate called without an active exception")."""
    import subprocess
    import sys

    script, marker = tmp_path / "exiting.py", tmp_path / "closed"
    script.write_text(EXITING)
    done = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.read_text() == "closed"


def test_the_dataset_functions_are_traced_once_for_each_shape_of_config():
    """Tracing them for every dataset cost about 58 ms an epoch; configs that differ only in
    what does not change the functions (here shuffle and batch size) share one trace."""
    from seqpipe.tfdata import dataset as seqpipe_dataset

    first = _config()
    other = _config(**{"batching.batch_size": 3, "shuffle.seed": 4})
    traced = seqpipe_dataset._traced_dataset(first)
    for config in (first, other, first):
        pipeline = Pipeline(config, long_table(LENGTHS))
        _assert_same_batches([_as_numpy(e) for e in build_dataset(pipeline)],
                             list(pipeline.batches(0)))
    assert seqpipe_dataset._traced_dataset(other) is traced
    assert traced.experimental_get_tracing_count() == 1
    narrower = load_config(base_config(None), {"inputs.steps.columns": ["x"]})
    assert seqpipe_dataset._traced_dataset(narrower) is not traced


def _elements(iterable) -> list:
    """Each element as (structure with key order, shapes, dtypes, values)."""
    def describe(element):
        parts = element if isinstance(element, tuple) else (element,)
        return ([list(part) for part in parts],
                [(t.shape.as_list(), t.dtype.name, t.numpy().tobytes())
                 for part in parts for t in part.values()])
    return [describe(element) for element in iterable]


@pytest.mark.parametrize("outputs", [True, False], ids=["x, y, sample_weight", "x only"])
def test_eager_iteration_gives_what_tensorflows_own_iterator_gives(outputs):
    """`for batch in dataset` builds each element's dicts from a recipe made once (in
    TensorFlow's Python it was most of the main thread's time per batch). A dataset made
    from it (`take`) is iterated by TensorFlow's own iterator: two pipelines of one config,
    one read each way, give the same elements, dicts, key order, shapes and dtypes, epoch
    after epoch."""
    overrides = {} if outputs else {"outputs": {}}
    config = _config(**overrides)
    ours = build_dataset(Pipeline(config, long_table(LENGTHS)))
    pipeline = Pipeline(config, long_table(LENGTHS))
    count = pipeline.report.batches_per_epoch
    own = build_dataset(pipeline).take(count)
    # Otherwise this would compare TensorFlow's iterator with itself.
    assert type(iter(ours)) is not type(iter(own))
    for _ in range(2):
        got = _elements(ours)
        assert len(got) == count
        assert got == _elements(own)


def test_in_a_graph_and_in_asynchronous_eager_mode_the_iterator_is_tensorflows():
    """Keras on TensorFlow makes the iterator eagerly and calls `next` inside a
    `tf.function`; asynchronous eager execution reports the end of the data late. Both
    take TensorFlow's own path, with the same batches."""
    pipeline = Pipeline(_config(), long_table(LENGTHS))
    dataset = build_dataset(pipeline)
    iterator = iter(dataset)

    @tf.function
    def first_batch_sum():
        _, _, weights = next(iterator)
        return tf.reduce_sum(weights["y"])

    expected = list(pipeline.batches(0))
    assert first_batch_sum().numpy() == pytest.approx(expected[0].sample_weight["y"].sum())
    assert first_batch_sum().numpy() == pytest.approx(expected[1].sample_weight["y"].sum())
    tf.config.experimental.set_synchronous_execution(False)
    try:
        got = [_as_numpy(e) for e in build_dataset(pipeline)]
    finally:
        tf.config.experimental.set_synchronous_execution(True)
    _assert_same_batches(got, expected)
