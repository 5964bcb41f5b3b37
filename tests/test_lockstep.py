"""Lockstep: n processes (or replicas) built side by side take the same number of steps with
the same shapes, every sequence once per epoch over all of them, and weights that make the
mean over the processes each global step's mean, checked against NumPy over the raw
labels (pyarrow) and against real Keras."""

import json

import numpy as np
import pytest

from seqpipe import (
    ConfigError,
    DataError,
    Pipeline,
    build_dataset,
    load_config,
    load_materialized,
    materialize,
)
from seqpipe.lockstep import Lockstep
from tests.helpers import (
    base_config,
    keras_batch_loss,
    long_table,
    passing,
    raw_sequences,
    scatter,
    sorted_by_id,
    write,
)

LENGTHS = np.random.default_rng(11).integers(1, 30, 90)
BATCH = 12  # divides over 1, 2, 3 and 4 processes


@pytest.fixture(scope="module")
def table():
    return long_table(LENGTHS, label_missing=0.3)


@pytest.fixture(scope="module")
def path(table, tmp_path_factory):
    return write(tmp_path_factory.mktemp("lockstep") / "d.parquet", sorted_by_id(table), 40)


CONFIGS = {
    "auto buckets, shuffled": {"batching.bucket_boundaries": "auto"},
    "static shapes": {"batching.bucket_boundaries": [8, 16], "batching.static_shapes": True,
                      "padding.maxlen": 30},
    "token budget": {"batching.max_timesteps": 240},
    "packed rows": {"batching.packing": {"length": 32}, "padding.maxlen": 30},
}


def _config(path, name="auto buckets, shuffled", **overrides):
    return load_config(base_config(path), {"batching.batch_size": BATCH,
                                           "shuffle.buffer_size": 30, "shuffle.seed": 5,
                                           **CONFIGS[name], **overrides})


def _steps(config, count, epoch=0, **kwargs):
    """Each process's batches of one epoch, built side by side: [process][step]."""
    return [list(Pipeline(config, lockstep=Lockstep(i, count), **kwargs).batches(epoch))
            for i in range(count)]


def _mean_of_parts(parts, output):
    """What the processes report together: the mean over them of Keras's default reduction,
    sum(w * l) / size(w), for a model that predicts 0 under mean squared error."""
    return np.mean([float((b.sample_weight[output] * b.y[output][..., 0] ** 2).sum())
                    / b.sample_weight[output].size for b in parts])


def _truth(raw, died, ids, mode):
    """The intended mean of y**2 (per timestep) or died**2 (per sequence) over the raw
    labels of the sequences `ids`, straight from pyarrow."""
    labels = [raw[i][1] for i in ids]
    per_sequence = np.array([died[i] for i in ids])
    means = [np.nanmean(v ** 2) for v in labels if (~np.isnan(v)).any()]
    every = np.concatenate(labels)
    y = (np.nanmean(every ** 2) if mode == "batch_mean" and (~np.isnan(every)).any() else
         np.mean(means) if means else 0.0)  # no label at all: Keras reports 0
    d = np.nanmean(per_sequence ** 2) if (~np.isnan(per_sequence)).any() else 0.0
    return y, d


def _died(table):
    frame = table.to_pandas().drop_duplicates("id")
    return dict(zip(frame["id"], frame["died"]))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_every_process_takes_the_same_steps_and_shapes_and_every_sequence_comes_once(
        path, name, count):
    config = _config(path, name)
    # A token budget sizes each bucket's batches; several processes round those sizes down
    # to a multiple of themselves, so only one process's batches are a single one's.
    same_batches = name != "token budget" or count == 1
    whole = list(Pipeline(config).batches(0))
    steps = _steps(config, count)
    assert len({len(s) for s in steps}) == 1
    for k, parts in enumerate(zip(*steps)):
        shapes = {tuple(v.shape for v in (*b.x.values(), *b.y.values(),
                                         *b.sample_weight.values())) for b in parts}
        assert len(shapes) == 1, f"step {k} has {len(shapes)} shapes over {count} processes"
        if same_batches:  # the global batch is a single process's, its rows dealt in order
            rows = whole[k].x["steps"].shape[0]
            assert parts[0].x["steps"].shape[0] * count == rows + (-rows % count)
            assert [i for b in parts for i in b.ids] == list(whole[k].ids)
    seen = [i for s in steps for b in s for i in b.ids]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == len(LENGTHS)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["batch_mean", "sequence_mean"])
@pytest.mark.parametrize("name", CONFIGS)
def test_the_mean_over_processes_is_the_global_steps_mean(path, table, name, mode, count):
    config = _config(path, name, **{"weights.mode": mode})
    raw, died = raw_sequences(table), _died(table)
    for parts in zip(*_steps(config, count)):
        ids = [i for b in parts for i in b.ids]
        y, d = _truth(raw, died, ids, mode)
        np.testing.assert_allclose(_mean_of_parts(parts, "y"), y, rtol=1e-6)
        np.testing.assert_allclose(_mean_of_parts(parts, "died"), d, rtol=1e-6)


@pytest.mark.parametrize("count", [1, 3])
def test_global_mean_over_processes_and_steps_is_the_epochs_mean(path, table, count):
    config = _config(path, **{"weights.mode": "global_mean"})
    raw, died = raw_sequences(table), _died(table)
    steps = list(zip(*_steps(config, count)))
    y, d = _truth(raw, died, list(raw), "batch_mean")
    np.testing.assert_allclose(np.mean([_mean_of_parts(p, "y") for p in steps]), y, rtol=1e-6)
    np.testing.assert_allclose(np.mean([_mean_of_parts(p, "died") for p in steps]), d,
                               rtol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("accumulation", [2, 3])
@pytest.mark.parametrize("mode", ["batch_mean", "sequence_mean"])
@pytest.mark.parametrize("name", ["auto buckets, shuffled", "packed rows"])
def test_accumulation_makes_each_run_of_steps_one_mean(path, table, name, mode, accumulation,
                                                       count):
    config = _config(path, name, **{"weights.mode": mode,
                                    "batching.accumulation_steps": accumulation})
    raw, died = raw_sequences(table), _died(table)
    steps = list(zip(*_steps(config, count)))
    assert len(steps) % accumulation == 0
    assert len(steps) == Pipeline(config, lockstep=Lockstep(0, count)).report.batches_per_epoch
    for r in range(0, len(steps), accumulation):
        run = steps[r:r + accumulation]
        ids = [i for parts in run for b in parts for i in b.ids]
        y, d = _truth(raw, died, ids, mode)
        # Keras's optimizer applies the mean of the run's gradients: of its steps' losses
        np.testing.assert_allclose(np.mean([_mean_of_parts(p, "y") for p in run]), y,
                                   rtol=1e-6)
        np.testing.assert_allclose(np.mean([_mean_of_parts(p, "died") for p in run]), d,
                                   rtol=1e-6)


def test_keras_reports_the_global_steps_mean_as_the_mean_over_the_processes(path, table):
    import keras

    config = _config(path)
    steps_input = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    zero = keras.layers.Dense(1, kernel_initializer="zeros", name="y")(
        passing(steps_input, static))
    died = keras.layers.Dense(1, kernel_initializer="zeros", name="died")(static)
    model = keras.Model({"steps": steps_input, "static": static}, {"y": zero, "died": died})
    model.compile(loss={"y": "mse", "died": "mse"})
    raw, deaths = raw_sequences(table), _died(table)
    for parts in list(zip(*_steps(config, 3)))[:4]:
        reported = [keras_batch_loss(model, b.x, b.y, b.sample_weight) for b in parts]
        y, d = _truth(raw, deaths, [i for b in parts for i in b.ids], "batch_mean")
        np.testing.assert_allclose(np.mean([r["y_loss"] for r in reported]), y, rtol=1e-5)
        np.testing.assert_allclose(np.mean([r["died_loss"] for r in reported]), d, rtol=1e-5)


@pytest.mark.parametrize("format", ["tf", "grain", "numpy"])
def test_build_dataset_takes_process_in_every_format(path, format):
    if format == "grain":
        pytest.importorskip("grain", reason="the grain extra is not installed")
    config = _config(path, "static shapes")
    shapes, ids = [], []
    for index in range(2):
        dataset = build_dataset(config, process=(index, 2), format=format)
        batches = list(dataset)
        shapes.append([tuple(x["steps"].shape) for x, _, _ in batches])
        ids += [int(a) - 40 for x, _, _ in batches for a in np.asarray(x["static"])[:, 0]
                if a > 0]
    assert shapes[0] == shapes[1] and {s[0] for s in shapes[0]} == {BATCH // 2}
    assert sorted(ids) == list(range(len(LENGTHS)))


def test_static_element_spec_has_the_rows_of_one_part(path):
    config = _config(path, "static shapes")
    dataset = build_dataset(config, process=(1, 3))
    assert dataset.element_spec[0]["steps"].shape.as_list() == [BATCH // 3, None, 2]


@pytest.mark.parametrize("source", ["grouped whole", "materialized"])
def test_other_sources_share_out_alike(tmp_path, table, source):
    if source == "grouped whole":
        config = _config(scatter(table, tmp_path / "dealt"))
        made = [build_dataset(config, process=(i, 2), format="numpy") for i in range(2)]
    else:
        config = _config(write(tmp_path / "d.parquet", sorted_by_id(table), 40))
        materialize(config, tmp_path / "out", shard_bytes=2_000)
        made = [load_materialized(tmp_path / "out", process=(i, 2)) for i in range(2)]
    steps = [list(m) for m in made]
    assert len(steps[0]) == len(steps[1])
    for a, b in zip(*steps):
        assert a[0]["steps"].shape == b[0]["steps"].shape
    ages = [int(v) - 40 for s in steps for x, _, _ in s for v in np.asarray(x["static"])[:, 0]
            if v > 0]
    assert sorted(ages) == list(range(len(LENGTHS)))


def test_input_contexts_get_the_same_parts(path):
    tf = pytest.importorskip("tensorflow")
    config = _config(path)
    whole = list(Pipeline(config).batches(0))
    per_pipeline = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index,
                                             num_replicas_in_sync=4)
        per_pipeline.append([tuple(x["steps"].shape)
                             for x, _, _ in build_dataset(config, input_context=context)])
    # two local replicas each: every step is 2 consecutive batches of each pipeline
    assert len(per_pipeline[0]) == len(per_pipeline[1]) == 2 * len(whole)
    assert per_pipeline[0] == per_pipeline[1]
    assert per_pipeline[0][0::2] == per_pipeline[0][1::2]
    assert max(s[0] for s in per_pipeline[0]) == BATCH // 4


def test_the_report_says_the_part_and_counts_the_empty_rows(path):
    config = _config(path)
    report = Pipeline(config, lockstep=Lockstep(1, 3, 2)).report
    whole = Pipeline(config)
    assert report.batches_per_epoch == 2 * whole.report.batches_per_epoch
    assert report.lockstep_empty_rows == sum(-len(b.ids) % 6 for b in whole.batches(0))
    assert report.lockstep_empty_rows > 0
    assert (f"lockstep: process 1 of 3, 2 replicas: parts 2 to 3 of 6 of every global batch "
            f"of 12, {whole.report.batches_per_epoch:,} global batches per epoch; "
            f"{report.lockstep_empty_rows:,} empty rows (weight 0)") in str(report)


def test_resuming_a_process_gives_its_uninterrupted_parts(path):
    config = _config(path, **{"batching.accumulation_steps": 2})
    lockstep = Lockstep(1, 2, 2)
    pipeline = Pipeline(config, lockstep=lockstep)
    epoch = list(pipeline.batches(1))
    for start in (1, 3, len(epoch) - 1):
        resumed = list(pipeline.batches(1, start))
        assert len(resumed) == len(epoch) - start
        for a, b in zip(resumed, epoch[start:]):
            assert a.ids.tolist() == b.ids.tolist()
            for name, values in a.sample_weight.items():
                np.testing.assert_array_equal(values, b.sample_weight[name])


def test_bad_process_settings_are_config_errors(path):
    tf = pytest.importorskip("tensorflow")
    cases = [
        ((2, 2), {}, r"process index must be in \[0, 2\) for 2 processes; got 2"),
        ((0, 0), {}, r"number of processes must be a positive integer; got 0"),
        ("first", {}, r"process must be \(index, count\), 'auto' or None; got 'first'"),
        ((0, 5), {}, r"batch_size=12 is the global batch and must divide evenly over the 5 "
                     r"processes; use a multiple of 5"),
        ((0, 2), {"shuffle.seed": None}, r"shuffle.seed is null, so each of the 2 processes "
                                         r"would draw its own"),
        ((0, 2), {"batching.max_timesteps": 40, "padding.maxlen": 30},
         r"max_timesteps=40 over the 2 processes leaves 20 per part, below padding.maxlen=30"),
    ]
    for process, overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_dataset(_config(path, **overrides), process=process)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    with pytest.raises(ConfigError, match="pass input_context or process, not both"):
        build_dataset(_config(path), process=(0, 2), input_context=context)
    with pytest.raises(ConfigError, match="input_context and process need a config"):
        build_dataset(Pipeline(_config(path)), process=(0, 2))


def test_auto_without_jax_multi_process_is_one_process(path):
    jax = pytest.importorskip("jax")
    assert jax.process_count() == 1
    config = _config(path)
    auto = next(iter(build_dataset(config, process="auto", format="numpy")))
    alone = next(iter(build_dataset(config, format="numpy")))
    assert auto[0]["steps"].shape == alone[0]["steps"].shape


MODEL = """
import keras


def make_model():
    keras.utils.set_random_seed(0)
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    # `code` runs to 9e4 and `age` to 130: scaled down so that SGD does not diverge
    hidden = keras.layers.GRU(4, return_sequences=True)(keras.layers.Rescaling(1e-5)(steps))
    y = keras.layers.Dense(1, name="y")(hidden)
    died = keras.layers.Dense(1, name="died")(keras.layers.Concatenate()(
        [keras.layers.GlobalAveragePooling1D()(hidden), keras.layers.Rescaling(0.01)(static)]))
    model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
    model.compile(keras.optimizers.SGD(0.01), {"y": "mse", "died": "mse"})
    return model
"""

MIRRORED = """
import sys, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import seqpipe
""" + MODEL + """
config = seqpipe.load_config(json.loads(sys.argv[1]))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
contexts = []


def dataset(context):
    contexts.append((context.num_input_pipelines, context.num_replicas_in_sync))
    return seqpipe.build_dataset(config, input_context=context)


distributed = strategy.distribute_datasets_from_function(dataset)
with strategy.scope():
    model = make_model()
mirrored = model.fit(distributed, epochs=2, verbose=0).history

# The same global batches on one device: each step's two parts joined.
context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
parts = seqpipe.build_dataset(config, input_context=context)


def global_batches():
    iterator = iter(parts)
    for first in iterator:
        yield tf.nest.map_structure(lambda a, b: tf.concat([a, b], 0), first, next(iterator))


single = tf.data.Dataset.from_generator(global_batches, output_signature=parts.element_spec)
print(json.dumps({"mirrored": mirrored, "single": make_model().fit(single, epochs=2,
                                                                    verbose=0).history,
                  "contexts": contexts}))
"""


@pytest.mark.slow
def test_mirrored_strategy_reports_the_single_device_loss_on_the_same_global_batches(
        path, tmp_path):
    from tests.helpers import child_json

    config = _config(path, **{"padding.mask": None})  # cross-replica start-up takes no bool
    result = child_json(tmp_path, MIRRORED, json.dumps(config.to_dict()))
    assert result["contexts"] == [[1, 2]]  # one input pipeline feeding two replicas
    for key in ("loss", "y_loss", "died_loss"):
        assert len(result["mirrored"][key]) == 2 and np.isfinite(result["mirrored"][key]).all()
        np.testing.assert_allclose(result["mirrored"][key], result["single"][key], rtol=1e-5)


JAX_PROCESS = """
import sys, json
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
index, count, port, config_json = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(f"localhost:{port}", num_processes=count, process_id=index)
import keras
import seqpipe
""" + MODEL + """
# Keras shards a tf.data dataset itself unless told not to; seqpipe's is already this
# process's part of every global batch.
keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
config = seqpipe.load_config(json.loads(config_json))
dataset = seqpipe.build_dataset(config, process="auto", format="grain")
history = make_model().fit(dataset, epochs=2, verbose=0).history
print(json.dumps({"history": history, "process": [jax.process_index(), jax.process_count()],
                  "batches": seqpipe.Pipeline(config).report.batches_per_epoch}))
"""

JAX_SINGLE = """
import sys, json
import json

import numpy as np
import keras
import seqpipe
""" + MODEL + """
config = seqpipe.load_config(json.loads(sys.argv[1]))
parts = [seqpipe.build_dataset(config, process=(i, 2), format="numpy") for i in range(2)]


def epoch(part):
    return [tuple({k: v.copy() for k, v in d.items()} for d in batch) for batch in part]


class GlobalBatches(keras.utils.PyDataset):
    # The two processes' parts of every step, joined, for the epoch `fit` is in.
    def __init__(self):
        super().__init__()
        self.epochs = []
        for _ in range(2):
            first, second = epoch(parts[0]), epoch(parts[1])
            assert len(first) == len(second)
            self.epochs.append([tuple({k: np.concatenate([a[k], b[k]]) for k in a}
                                      for a, b in zip(*step)) for step in zip(first, second)])
        self.epoch = 0

    def __len__(self):
        return len(self.epochs[0])

    def __getitem__(self, i):
        return self.epochs[self.epoch][i]


class Epoch(keras.callbacks.Callback):
    # Keras also calls on_epoch_end after drawing a batch to build the model: the
    # callback's epoch is the one fit is in.
    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        self.data.epoch = epoch


data = GlobalBatches()
# shuffle=False: Keras would otherwise shuffle a PyDataset's batches
history = make_model().fit(data, epochs=2, verbose=0, shuffle=False,
                           callbacks=[Epoch(data)]).history
print(json.dumps({"history": history}))
"""


@pytest.mark.slow
def test_two_jax_processes_train_in_lockstep_with_the_single_process_loss(path, tmp_path):
    """Two JAX CPU processes on localhost (`jax.distributed`), Keras's `DataParallel` and
    seqpipe's Grain output with process="auto": both train two epochs, no hang, and report
    the loss one process reports on the same global batches."""
    pytest.importorskip("jax")
    pytest.importorskip("grain", reason="the grain extra is not installed")
    import os
    import socket
    import subprocess
    import sys

    from tests.helpers import child_json

    config = json.dumps(_config(path, **{"padding.mask": None}).to_dict())
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "process.py"
    script.write_text(JAX_PROCESS)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "KERAS_BACKEND": "jax"}
    children = [subprocess.Popen([sys.executable, str(script), str(i), "2", str(port), config],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for i in range(2)]
    try:
        outputs = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["process"] for r in results] == [[0, 2], [1, 2]]
    single = child_json(tmp_path, JAX_SINGLE, config, KERAS_BACKEND="jax")["history"]
    for key in ("loss", "y_loss", "died_loss"):
        assert len(single[key]) == 2 and np.isfinite(single[key]).all()
        for result in results:
            np.testing.assert_allclose(result["history"][key], single[key], rtol=1e-5)


def test_a_token_budget_that_one_row_per_process_overruns_is_a_data_error(path):
    config = _config(path, **{"batching.max_timesteps": 40})
    assert 20 < LENGTHS.max() <= 40  # fits in 40, not in 40 over two processes
    Pipeline(config)
    with pytest.raises(DataError, match=r"keeps 29 timesteps, more than "
                                        r"batching.max_timesteps=40 over 2 processes or "
                                        r"replicas \(20 each\)"):
        Pipeline(config, lockstep=Lockstep(0, 2))


@pytest.mark.parametrize("layout", ["long", "nested"])
def test_the_processes_of_a_split_part_cover_that_part_once(tmp_path, table, layout):
    from tests.helpers import nested_from_long

    data = sorted_by_id(table) if layout == "long" else nested_from_long(table)
    config = load_config(base_config(write(tmp_path / "d.parquet", data, 40), layout),
                         {"batching.batch_size": BATCH, "shuffle.buffer_size": 30,
                          "shuffle.seed": 5, "split": {"validation": 0.3, "seed": 2}})
    whole = {i for b in Pipeline(config, split="validation").batches(0) for i in b.ids}
    shares = [[i for b in Pipeline(config, split="validation",
                                   lockstep=Lockstep(k, 3)).batches(0) for i in b.ids]
              for k in range(3)]
    every = [i for share in shares for i in share]
    assert sorted(every) == sorted(whole) and len(every) == len(set(every))
    assert all(shares)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_binary_weights_over_processes_divide_by_the_global_batchs_elements(path, table,
                                                                             count):
    """`binary` with Keras's default reduction means sum(loss over present labels) / every
    element of the batch: over the processes, the global batch's elements."""
    config = _config(path, **{"weights.mode": "binary"})
    raw, died = raw_sequences(table), _died(table)
    for parts in zip(*_steps(config, count)):
        ids = [i for b in parts for i in b.ids]
        labels = np.concatenate([raw[i][1] for i in ids])
        deaths = np.array([died[i] for i in ids])
        elements = sum(b.sample_weight["y"].size for b in parts)
        np.testing.assert_allclose(_mean_of_parts(parts, "y"),
                                   np.nansum(labels ** 2) / elements, rtol=1e-6)
        rows = sum(b.sample_weight["died"].size for b in parts)
        np.testing.assert_allclose(_mean_of_parts(parts, "died"),
                                   np.nansum(deaths ** 2) / rows, rtol=1e-6)


def test_too_few_sequences_for_the_accumulation_steps_is_a_data_error(tmp_path):
    config = _config(write(tmp_path / "d.parquet", sorted_by_id(long_table([3, 4])), 40),
                     **{"batching.accumulation_steps": 4})
    with pytest.raises(DataError, match=r"2 sequences cannot be cut into a multiple of "
                                        r"batching.accumulation_steps=4 batches; use more "
                                        r"data or fewer accumulation steps"):
        build_dataset(config, format="numpy")
