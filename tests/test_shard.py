"""Sharding: N input pipelines together read every sequence exactly once, each reading its
own row groups (or shard files) when there are enough, and batch per replica."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import seqpipe.parquet.stream
from seqpipe import (
    ConfigError,
    DataError,
    Pipeline,
    build_dataset,
    load_config,
    load_materialized,
    materialize,
)
from seqpipe.shard import Shard
from tests.helpers import (
    base_config,
    keras_batch_loss,
    long_table,
    nested_from_long,
    passing,
    raw_sequences,
    scatter,
    write,
)

LENGTHS = np.random.default_rng(11).integers(1, 30, 60)


def _sorted(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("id", "ascending"), ("t", "ascending")]))


def _one_file(tmp_path, table, row_group_size):
    return write(tmp_path / "d.parquet", _sorted(table), row_group_size)


def _three_files(tmp_path, table):
    """Sorted, each file a contiguous id range; a sequence crosses each file boundary."""
    table = _sorted(table)
    folder = tmp_path / "files"
    folder.mkdir()
    for k, (start, stop) in enumerate([(0, 300), (300, 610), (610, table.num_rows)]):
        pq.write_table(table.slice(start, stop - start), folder / f"part-{k}.parquet",
                       row_group_size=40)
    return str(folder)


SOURCES = {
    "row groups of 7 rows, sequences crossing them": lambda p, t: _one_file(p, t, 7),
    "three sorted files": _three_files,
    "one row group": lambda p, t: _one_file(p, t, 100_000),
    "rows dealt over 3 files (grouped whole)": lambda p, t: scatter(t, p / "dealt"),
}


def _read(pipeline: Pipeline) -> dict:
    """id -> the codes of its kept timesteps, over one epoch; each id must come once."""
    seen = {}
    for batch in pipeline.batches(0):
        for row, (sequence, kept) in enumerate(zip(batch.ids.tolist(), batch.lengths)):
            assert sequence not in seen, f"{sequence} read twice"
            seen[sequence] = batch.x["steps"][row, :kept, 0]
    return seen


def _config(path, layout="long", **overrides):
    return load_config(base_config(path, layout), {"batching.bucket_boundaries": "auto",
                                                   "shuffle.buffer_size": 20,
                                                   "shuffle.seed": 3, **overrides})


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_sequence_is_read_exactly_once_across_the_pipelines(tmp_path, source, count):
    table = long_table(LENGTHS)
    config = _config(SOURCES[source](tmp_path, table))
    seen = {}
    for index in range(count):
        share = _read(Pipeline(config, shard=Shard(index, count) if count > 1 else None))
        assert share, f"pipeline {index} of {count} read nothing"
        assert not set(share) & set(seen)
        seen.update(share)
    raw = raw_sequences(table)
    assert sorted(seen) == sorted(raw)
    for sequence, codes in seen.items():
        np.testing.assert_array_equal(codes, raw[sequence][0])


def test_nested_layout_shares_row_groups_too(tmp_path):
    table = nested_from_long(long_table(LENGTHS))
    path = write(tmp_path / "n.parquet", table, row_group_size=4)
    config = _config(path, "nested")
    shares = [_read(Pipeline(config, shard=Shard(i, 3))) for i in range(3)]
    assert sum(len(s) for s in shares) == len(LENGTHS)
    assert len(set().union(*shares)) == len(LENGTHS)


@pytest.mark.parametrize("count", [2, 3, 5])
def test_each_pipeline_reads_its_own_row_groups(tmp_path, monkeypatch, count):
    """Row groups are shared out, not read by all. With sequences shorter than a row group,
    at most one row group per boundary is read twice: the owner of the sequence that
    crosses into the next pipeline's run reads on to finish it."""
    assert LENGTHS.max() < 40
    path = _one_file(tmp_path, long_table(LENGTHS), 40)
    parts = pq.ParquetFile(path).num_row_groups
    read = []
    real = seqpipe.parquet.stream.read_row_group
    monkeypatch.setattr(seqpipe.parquet.stream, "read_row_group",
                        lambda part, schema: read.append(part.number) or real(part, schema))
    config = _config(path)
    per_pipeline = []
    for index in range(count):
        pipeline = Pipeline(config, shard=Shard(index, count))
        read.clear()
        _read(pipeline)
        per_pipeline.append(set(read))
    assert set().union(*per_pipeline) == set(range(parts))
    assert sum(len(r) for r in per_pipeline) <= parts + count - 1
    assert max(len(r) for r in per_pipeline) < parts * 0.5 + 2  # balanced, roughly


def test_shards_of_a_split_part_cover_that_part(tmp_path):
    table = long_table(LENGTHS)
    config = load_config(_config(_one_file(tmp_path, table, 7)),
                         {"split": {"validation": 0.3, "seed": 2}})
    whole = set(_read(Pipeline(config, split="validation")))
    shares = [set(_read(Pipeline(config, split="validation", shard=Shard(i, 2))))
              for i in range(2)]
    assert shares[0] | shares[1] == whole and not shares[0] & shares[1]


def _context(index, count, replicas):
    return tf.distribute.InputContext(num_input_pipelines=count, input_pipeline_id=index,
                                      num_replicas_in_sync=replicas)


def _sequences_of(dataset):
    """Sequence numbers in the batches (the static input "age" is 40 + the sequence number;
    0 in the empty rows of `same_shape_first` batches), and batch sizes."""
    numbers, sizes = [], []
    for x, _, _ in dataset:
        age = x["static"][:, 0].numpy()
        numbers += (age[age > 0] - 40).astype(int).tolist()
        sizes.append(int(x["steps"].shape[0]))
    return numbers, sizes


def test_build_dataset_with_input_contexts_batches_per_replica(tmp_path):
    path = _one_file(tmp_path, long_table(LENGTHS), 7)
    config = _config(path, **{"batching.batch_size": 8, "padding.maxlen": 40})
    numbers, sizes = [], []
    for index in range(2):
        n, s = _sequences_of(build_dataset(config, input_context=_context(index, 2, 4)))
        numbers += n
        sizes += s
    assert sorted(numbers) == list(range(len(LENGTHS)))
    assert max(sizes) == 2  # 8 over 4 replicas


def test_a_global_batch_that_does_not_divide_over_the_replicas_is_a_config_error(tmp_path):
    config = _config(_one_file(tmp_path, long_table(LENGTHS), 7), **{"batching.batch_size": 6})
    with pytest.raises(ConfigError, match=r"batch_size=6 is the global batch and must divide "
                                          r"evenly over the 4 replicas"):
        build_dataset(config, input_context=_context(0, 1, 4))


def test_more_pipelines_than_sequences_is_a_clear_error(tmp_path):
    config = _config(_one_file(tmp_path, long_table([3, 4]), 100_000))
    errors = 0
    for index in range(6):
        try:
            Pipeline(config, shard=Shard(index, 6))
        except DataError as e:
            assert f"input pipeline {index} of 6 gets none of the 2 sequences" in str(e)
            errors += 1
    assert errors >= 4


def test_load_materialized_shares_out_shard_files(tmp_path, monkeypatch):
    table = long_table(LENGTHS)
    config = _config(_one_file(tmp_path, table, 7))
    out = tmp_path / "out"
    materialize(config, out, shard_bytes=2_000)
    files = sorted(os.listdir(out / "all"))
    shards = [f for f in files if f.endswith(".tfrecord")]
    assert len(shards) >= 4
    opened = []
    real = tf.data.TFRecordDataset
    monkeypatch.setattr(tf.data, "TFRecordDataset",
                        lambda names, *a, **k: opened.append(list(names)) or real(names, *a, **k))
    for count in (2, 3, len(shards) + 2):
        numbers = []
        opened.clear()
        for index in range(count):
            n, _ = _sequences_of(load_materialized(out, input_context=_context(index, count, 1)))
            numbers += n
        assert sorted(numbers) == list(range(len(LENGTHS))), count
        read = [name for names in opened for name in names]
        if count <= len(shards):  # each file read by one pipeline
            assert sorted(read) == sorted(str(out / "all" / s) for s in shards)
        else:  # fewer files than pipelines: each reads all and keeps its ids' share
            assert len(read) == count * len(shards)


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
contexts = []

def dataset(context):
    contexts.append((context.num_input_pipelines, context.num_replicas_in_sync))
    return seqpipe.build_dataset(config, input_context=context)

distributed = strategy.distribute_datasets_from_function(dataset)
with strategy.scope():
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    hidden = keras.layers.LSTM(4, return_sequences=True)(keras.layers.Masking(0.0)(steps))
    y = keras.layers.Dense(1, name="y")(hidden)
    died = keras.layers.Dense(1, name="died")(static)
    model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
    model.compile("adam", {"y": "mse", "died": "mse"})
history = model.fit(distributed, epochs=2, verbose=0)
print(json.dumps({"loss": history.history["loss"], "contexts": contexts,
                  "replicas": strategy.num_replicas_in_sync}))
"""


@pytest.mark.slow
def test_model_fit_runs_on_a_mirrored_strategy_over_two_cpus(tmp_path):
    import json
    import subprocess
    import sys

    path = _one_file(tmp_path, long_table(LENGTHS), 7)
    config = _config(path, **{"batching.batch_size": 8, "padding.maxlen": 40})
    done = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(config.to_dict())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["contexts"] == [[1, 2]]  # one input pipeline feeding two replicas
    assert len(result["loss"]) == 2 and all(np.isfinite(result["loss"]))


def test_on_several_replicas_the_first_batches_share_one_shape_and_steps_fill(tmp_path):
    """Keras 3 averages the first batch of every replica to build the model, so those are
    padded to batch_size x maxlen (empty rows weigh 0); and the batch count is a multiple
    of the replicas, so tf.distribute never hands a replica an empty batch."""
    import keras

    table = long_table(LENGTHS)
    path = _one_file(tmp_path, table, 7)
    config = _config(path, **{"batching.batch_size": 8, "padding.maxlen": 40})
    batches = list(build_dataset(config, input_context=_context(0, 1, 2)))
    assert len(batches) % 2 == 0
    for x, y, w in batches[:2]:
        assert x["steps"].shape == (4, 40, 2) and x["static"].shape == (4, 1)
        assert y["y"].shape == (4, 40, 1) and w["died"].shape == (4,)
    numbers, _ = _sequences_of(batches)
    assert sorted(numbers) == list(range(len(LENGTHS)))
    # The loss Keras reports on a batch with empty rows is still the mean over its present
    # labels: a model that predicts 0 reports the mean of the present labels squared.
    # Three sequences, 4 rows per replica: both first batches must have empty rows.
    small = long_table(LENGTHS[:3], label_missing=0.3)
    (tmp_path / "small").mkdir()
    config = _config(_one_file(tmp_path / "small", small, 7),
                     **{"batching.batch_size": 8, "padding.maxlen": 40})
    batches = list(build_dataset(config, input_context=_context(0, 1, 2)))
    raw = raw_sequences(small)
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    zero = keras.layers.Dense(1, kernel_initializer="zeros", name="y")(passing(steps, static))
    model = keras.Model({"steps": steps, "static": static}, {"y": zero})
    model.compile(loss={"y": "mse"})
    assert len(batches) == 2
    for x, y, w in batches:
        age = x["static"][:, 0].numpy()
        assert x["steps"].shape == (4, 40, 2) and (age == 0).any()
        labels = np.concatenate([raw[f"s{int(a) - 40:03d}"][1] for a in age[age > 0]])
        loss = keras_batch_loss(model, x, {"y": y["y"]}, {"y": w["y"]})["loss"]
        np.testing.assert_allclose(loss, np.nanmean(labels ** 2), rtol=1e-5)


def test_replica_settings_that_cannot_work_are_config_errors(tmp_path):
    path = _one_file(tmp_path, long_table(LENGTHS), 7)
    cases = [
        ({"batching.max_timesteps": 100, "padding.maxlen": 40},
         r"batching.max_timesteps=100 over 4 replicas leaves 25 per replica, below "
         r"padding.maxlen=40"),
        ({"batching.max_timesteps": 240, "padding.maxlen": 40},
         r"on 4 replicas the first batch of each is padded to batch_size x maxlen = 2 x 40 "
         r"timesteps .* above max_timesteps per replica \(60\)"),
        ({}, r"training on several replicas needs padding.maxlen"),
        ({"batching.max_timesteps": 400}, r"training on several replicas needs padding.maxlen"),
    ]
    for overrides, message in cases:
        config = _config(path, **{"batching.batch_size": 8, **overrides})
        with pytest.raises(ConfigError, match=message):
            build_dataset(config, input_context=_context(0, 1, 4))


def test_an_input_context_with_a_pipeline_already_built_is_a_config_error(tmp_path):
    pipeline = Pipeline(_config(_one_file(tmp_path, long_table(LENGTHS), 7)))
    with pytest.raises(ConfigError, match="input_context needs a config, not a Pipeline"):
        build_dataset(pipeline, input_context=_context(0, 2, 2))


def test_a_shard_outside_its_count_is_a_config_error():
    with pytest.raises(ConfigError, match=r"input pipeline id must be in \[0, 3\); got 3"):
        Shard(3, 3)
    with pytest.raises(ConfigError, match="number of input pipelines must be a positive "
                                          "integer; got 0"):
        Shard(0, 0)


def test_too_few_sequences_for_a_batch_per_replica_is_a_data_error(tmp_path):
    config = _config(_one_file(tmp_path, long_table([3]), 7),
                     **{"batching.batch_size": 4, "padding.maxlen": 40})
    with pytest.raises(DataError, match="1 sequences cannot be cut into batches for 2 "
                                        "replicas in equal steps"):
        build_dataset(config, input_context=_context(0, 1, 2))


def test_a_manifest_whose_file_counts_disagree_with_its_index_is_a_data_error(tmp_path):
    import json

    config = _config(_one_file(tmp_path, long_table(LENGTHS), 7))
    out = tmp_path / "out"
    materialize(config, out, shard_bytes=2_000)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["parts"]["all"]["shard_sequences"][0] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"the manifest's shard_sequences \(61 records in \d+ "
                                        r"files\) disagree with its index \(60 sequences"):
        load_materialized(out)
