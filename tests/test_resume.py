"""`build_dataset(resume=...)`, Grain iterator state and `seqpipe.BackupAndRestore`: an
epoch resumed at any batch gives, batch for batch, what an uninterrupted dataset gives
from there, in every format and layout; and a `model.fit` killed mid-epoch and run again
trains on every batch after its last backup exactly once."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import seqpipe
from seqpipe import ConfigError, build_dataset, load_config, load_materialized, materialize
from tests.helpers import base_config, long_table, scatter, write

LENGTHS = np.random.default_rng(34).integers(1, 40, 240)
FORMATS = ["tf", "numpy", "grain"]


@pytest.fixture(scope="module")
def table():
    return long_table(LENGTHS, seed=4)


@pytest.fixture(scope="module")
def path(table, tmp_path_factory):
    # sorted by id in small row groups: streamed, and a late position skips most of them
    return write(tmp_path_factory.mktemp("resume") / "rows.parquet", table.sort_by("id"), 150)


CONFIGS = {
    "auto buckets, shuffled": {"batching.bucket_boundaries": "auto"},
    "static shapes": {"batching.bucket_boundaries": [10, 20], "batching.static_shapes": True,
                      "padding.maxlen": 30},
    "a split": {"split": {"validation": 0.3, "seed": 5}},
    "packed rows": {"padding.maxlen": 32,
                    "batching.packing": {"length": 48, "max_segments": 6}},
    "windows": {"windows": {"history": 6, "horizon": 2}, "outputs": {"y": {"column": "y"}},
                "inputs": {"steps": {"columns": ["code", "x"]}}},
}


def _config(path, name, **more):
    return load_config(base_config(path), {"batching.batch_size": 8,
                                           "shuffle.buffer_size": 50, "shuffle.seed": 7,
                                           **CONFIGS[name], **more})


def _digest(element) -> str:
    """One hash over every array of a batch, names included."""
    digest = hashlib.sha256()
    parts = element if isinstance(element, tuple) else (element,)
    for part in parts:
        for name in sorted(part):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(np.asarray(part[name])).tobytes())
    return digest.hexdigest()


def _passes(dataset, count: int) -> list:
    """The hashes of the batches of `count` passes over `dataset`."""
    return [[_digest(element) for element in dataset] for _ in range(count)]


def _positions(batches: int) -> list:
    """The start, the middle and the last batch of epoch 1, and the boundary between
    epochs 0 and 1 (both ways of saying it)."""
    return [{"epoch": 1, "batch": 0}, {"epoch": 1, "batch": batches // 2},
            {"epoch": 1, "batch": batches - 1}, {"epoch": 0, "batch": batches}]


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_resumed_dataset_gives_what_an_uninterrupted_one_gives_from_there(path, name,
                                                                           format):
    if format == "grain":
        pytest.importorskip("grain", reason="the grain extra is not installed")
    split = {"split": "train"} if name == "a split" else {}
    config = _config(path, name)
    epochs = _passes(build_dataset(config, format=format, **split), 3)
    assert len({len(e) for e in epochs}) == 1 and len(epochs[0]) > 8
    assert epochs[1] != epochs[0]  # reshuffled: a resume in the wrong epoch would show
    for position in _positions(len(epochs[0])):
        resumed = build_dataset(config, format=format, resume=position, **split)
        if format == "tf":  # Keras reads the batches per epoch from it, once
            assert int(resumed.cardinality()) == len(epochs[0])
        first, second = _passes(resumed, 2)
        epoch, batch = position["epoch"], position["batch"]
        if batch == len(epochs[0]):  # after the epoch's last batch: the next epoch
            epoch, batch = epoch + 1, 0
        assert first == epochs[epoch][batch:], position
        assert second == epochs[epoch + 1], position  # the epoch after, not a repeat


def test_a_source_grouped_whole_and_data_in_memory_resume_alike(table, tmp_path):
    folder = scatter(table, tmp_path / "scattered", files=3)  # not sorted: grouped whole
    for source in ({"path": folder}, {"data": table.to_pandas()}):
        config = _config(source.get("path"), "auto buckets, shuffled")
        data = source.get("data")
        epochs = _passes(build_dataset(config, data, format="numpy"), 2)
        middle = len(epochs[0]) // 2
        resumed = build_dataset(config, data, format="numpy",
                                resume={"epoch": 0, "batch": middle})
        assert _passes(resumed, 2) == [epochs[0][middle:], epochs[1]]


def test_a_materialized_output_resumes_its_records(path, tmp_path):
    config = _config(path, "auto buckets, shuffled")
    materialize(config, tmp_path / "out", shard_bytes=20_000)
    epochs = _passes(load_materialized(tmp_path / "out"), 2)
    assert epochs[0] == _passes(build_dataset(config), 1)[0]
    late = len(epochs[0]) - 3
    resumed = load_materialized(tmp_path / "out", resume={"epoch": 1, "batch": late})
    assert _passes(resumed, 2)[0] == epochs[1][late:]


def test_read_early_reads_the_resumed_position_ahead(path):
    config = _config(path, "auto buckets, shuffled")
    epochs = _passes(build_dataset(config, format="numpy"), 3)
    resumed = build_dataset(config, read_early=True, resume={"epoch": 1, "batch": 4})
    assert _passes(resumed, 2) == [epochs[1][4:], epochs[2]]


def test_each_input_pipeline_resumes_its_own_share(path):
    tf = pytest.importorskip("tensorflow")
    config = _config(path, "auto buckets, shuffled", **{"padding.maxlen": 40})
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index,
                                             num_replicas_in_sync=2)
        epochs = _passes(build_dataset(config, input_context=context), 2)
        at = len(epochs[1]) // 3
        resumed = build_dataset(config, input_context=context,
                                resume={"epoch": 1, "batch": at})
        assert _passes(resumed, 1)[0] == epochs[1][at:]


def test_a_grain_iterator_state_seeks_and_an_ended_epoch_goes_on_to_the_next(path):
    pytest.importorskip("grain", reason="the grain extra is not installed")
    config = _config(path, "auto buckets, shuffled")
    dataset = build_dataset(config, format="grain")
    epochs = _passes(build_dataset(config, format="grain"), 2)
    count = len(epochs[0])
    iterator = iter(dataset)
    iterator.set_state({"epoch": 0, "batches": count - 2})
    assert [_digest(b) for b in iterator] == epochs[0][count - 2:]
    assert iterator.get_state() == {"epoch": 0, "batches": count}
    ended = iter(dataset)
    ended.set_state({"epoch": 0, "batches": count})
    assert list(ended) == []
    assert [_digest(b) for b in dataset] == epochs[1]  # that finished epoch 0


def test_a_numpy_or_grain_dataset_resumed_mid_epoch_warns_that_fit_wants_tf(path, caplog):
    config = _config(path, "auto buckets, shuffled")
    with caplog.at_level("WARNING", logger="seqpipe"):
        build_dataset(config, format="numpy", resume={"epoch": 1, "batch": 2})
    assert "To resume model.fit, build it with format='tf'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="seqpipe"):
        build_dataset(config, resume={"epoch": 1, "batch": 2})
        build_dataset(config, format="numpy", resume={"epoch": 1, "batch": 0})
    assert "format='tf'" not in caplog.text


def test_a_position_that_is_not_in_the_epoch_is_a_clear_error(path):
    config = _config(path, "auto buckets, shuffled")
    batches = len(build_dataset(config, format="numpy"))
    with pytest.raises(ConfigError, match=rf"resume: batch {batches + 1} is past the end of "
                                          rf"an epoch, which has {batches} batches.*"
                                          r"\{'epoch': 3, 'batch': 0\}"):
        build_dataset(config, resume={"epoch": 2, "batch": batches + 1})
    for bad, message in (({"epoch": 1}, "mapping"), ([1, 2], "mapping"),
                         ({"epoch": -1, "batch": 0}, r"resume\['epoch'\] must be a whole"),
                         ({"epoch": 0, "batch": 1.5}, r"resume\['batch'\] must be a whole")):
        with pytest.raises(ConfigError, match=message):
            build_dataset(config, format="numpy", resume=bad)


def test_other_bad_positions_and_combinations_are_clear_errors(path, tmp_path):
    config = _config(path, "auto buckets, shuffled")
    pipeline = seqpipe.Pipeline(config)
    count = pipeline.report.batches_per_epoch
    with pytest.raises(ConfigError, match=rf"batch {count} is not a batch of the epoch, "
                                          rf"which has {count} \(0 to {count - 1}\)"):
        next(pipeline.batches(0, count))
    materialize(config, tmp_path / "out")
    with pytest.raises(ConfigError, match="resume is for datasets batched here, not with "
                                          "service"):
        load_materialized(tmp_path / "out", service="grpc://localhost:1",
                          resume={"epoch": 0, "batch": 1})
    negative = tmp_path / "negative"
    negative.mkdir()
    (negative / "seqpipe_position.json").write_text('{"epoch": 1, "batch": -2}')
    with pytest.raises(ConfigError, match="negative position"):
        seqpipe.resume_state(negative)


def test_internal_a_late_position_reads_only_the_row_groups_its_window_needs(path,
                                                                             monkeypatch):
    """The one test here of an internal: which row groups a resumed epoch reads. A
    sequence waits for its bucket's batch one shuffle buffer at most (unless its bucket
    is too rare to fill one), so the end of an epoch needs the row groups of its last
    buffers, not every one."""
    from seqpipe.parquet import stream

    read = []
    original = stream.read_row_group
    monkeypatch.setattr(stream, "read_row_group",
                        lambda row_group, schema: read.append(row_group.where) or
                        original(row_group, schema))
    # memory_mb 0: every epoch streams (from memory, a resumed epoch reads nothing)
    config = _config(path, "auto buckets, shuffled", **{"source.memory_mb": 0})
    batches = build_dataset(config, format="numpy")
    read.clear()
    list(batches.epoch(1))
    whole = len(read)
    read.clear()
    list(batches.epoch(1, len(batches) - 1))
    assert 0 < len(read) <= whole // 2, (len(read), whole)


def test_resume_state_is_none_without_a_backup_and_refuses_a_plain_keras_one(tmp_path):
    assert seqpipe.resume_state(tmp_path / "none") is None
    keras_only = tmp_path / "keras"
    keras_only.mkdir()
    (keras_only / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    with pytest.raises(ConfigError, match=r"does not record which batch.*"
                                          r"seqpipe\.BackupAndRestore"):
        seqpipe.resume_state(keras_only)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "seqpipe_position.json").write_text('{"epoch": 1}')
    with pytest.raises(ConfigError, match="damaged"):
        seqpipe.resume_state(damaged)


FIT = """
import json, os, signal, sys
import keras, numpy as np
import seqpipe

config_path, backup, record, kill_at, epochs = sys.argv[1:6]
kill_at = json.loads(kill_at)

class Record(keras.layers.Layer):
    # Appends the sequence numbers of every batch trained on (run eagerly, so each step
    # runs this in Python), flushed at once: a SIGKILL loses none.
    def call(self, static, training=None):
        if training:
            with open(record, "a") as f:
                f.write(json.dumps(np.asarray(static)[:, 0].astype(int).tolist()) + "\\n")
        return static

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if kill_at and [self.epoch, batch] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # preempted, mid-epoch, no clean-up

keras.utils.set_random_seed(0)
steps = keras.Input((None, 2), name="steps")
static = keras.Input((1,), name="static")
h = keras.layers.GlobalAveragePooling1D()(steps)
died = keras.layers.Dense(1, name="died")(keras.layers.Concatenate()([h, Record()(static)]))
y = keras.layers.Dense(1, name="y")(keras.layers.Dense(4, activation="relu")(steps))
model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
model.compile("adam", {"y": "mse", "died": "mse"}, run_eagerly=True)
position = seqpipe.resume_state(backup)
dataset = seqpipe.build_dataset(config_path, resume=position)
model.fit(dataset, epochs=int(epochs), verbose=0,
          callbacks=[seqpipe.BackupAndRestore(backup, save_freq=3), Kill()])
print(json.dumps({"position": position}))
"""


def _run(tmp_path, *arguments):
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(FIT))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, str(script), *map(str, arguments)],
                          env={**os.environ, "PYTHONPATH": repo}, capture_output=True,
                          text=True, timeout=600)


def test_fit_killed_mid_epoch_resumes_on_the_next_batch_after_its_backup(path, tmp_path):
    raw = base_config(path)
    raw.update({"batching": {"batch_size": 16, "bucket_boundaries": "auto"},
                "shuffle": {"buffer_size": 60, "seed": 3}, "padding": {"value": 0.0}})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(raw))  # YAML reads JSON
    # Every batch an uninterrupted run trains on, epoch after epoch: the per-sequence
    # input "static" (age) is 40 + the sequence's number, so it names each row.
    dataset = build_dataset(str(config_path), format="numpy")
    flat = [np.asarray(x["static"])[:, 0].astype(int).tolist()
            for _ in range(3) for x, _, _ in dataset]
    batches = len(dataset)
    backup, record = tmp_path / "backup", tmp_path / "record.jsonl"
    # Killed after a batch in the middle of epoch 1 that is not one a save (every 3
    # batches, counted over the run) comes after.
    middle = batches // 2 + (1 if (batches + batches // 2 + 1) % 3 == 0 else 0)
    kill_at = [1, middle]
    first = _run(tmp_path, config_path, backup, record, json.dumps(kill_at), 3)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    seen_first = [json.loads(line) for line in record.read_text().splitlines()]
    killed_after = batches + kill_at[1] + 1
    assert seen_first == flat[:killed_after]
    position = seqpipe.resume_state(backup)
    saved = (killed_after // 3) * 3  # the last save before the kill
    assert position == {"epoch": saved // batches, "batch": saved % batches}
    assert saved < killed_after  # some batches were trained on and lost: they come again
    record.unlink()
    second = _run(tmp_path, config_path, backup, record, "null", 3)
    assert second.returncode == 0, second.stderr[-3000:]
    seen_second = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen_second == flat[saved:]  # the rest of epoch 1, then epoch 2, once each
    assert not backup.exists()  # Keras deletes its backup when fit finishes


@pytest.mark.parametrize("every", ["epoch", "last batch"])
def test_a_backup_taken_as_an_epoch_ends_resumes_at_the_next_epoch(path, tmp_path, every):
    """The position says epoch 2, batch 0; Keras's own metadata says "batch": 0 for this
    when it saves at the epoch's end, and epoch 1 after its last batch (restored from it
    alone, Keras would run epoch 1 again)."""
    import keras

    config = _config(path, "auto buckets, shuffled")
    dataset = build_dataset(config)
    batches = int(dataset.cardinality())
    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling1D()(steps), static])
    model = keras.Model({"steps": steps, "static": static},
                        {"y": keras.layers.Dense(1, name="y")(steps),
                         "died": keras.layers.Dense(1, name="died")(pooled)})
    model.compile("adam", {"y": "mse", "died": "mse"})
    backup = seqpipe.BackupAndRestore(tmp_path / "backup", delete_checkpoint=False,
                                      save_freq="epoch" if every == "epoch" else batches)
    model.fit(dataset, epochs=2, verbose=0, callbacks=[backup])
    assert seqpipe.resume_state(tmp_path / "backup") == {"epoch": 2, "batch": 0}
    keras_metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert keras_metadata == ({"epoch": 2, "batch": 0} if every == "epoch"
                              else {"epoch": 1, "batch": batches - 1})
