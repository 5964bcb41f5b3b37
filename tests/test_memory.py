"""Later epochs from memory: within `source.memory_mb`, the epochs after the first are built
from the prepared sequences it kept, without reading the source, and are the batches
streaming gives, epoch for epoch; past the budget every epoch reads the source."""

import logging

import numpy as np
import pytest

from seqpipe import Pipeline, build_dataset, load_config
from tests.helpers import (
    base_config,
    long_table,
    nested_from_long,
    same_batches,
    scatter,
    sorted_by_id,
    write,
)

LENGTHS = np.random.default_rng(21).integers(1, 40, 150)

CONFIGS = {
    "auto buckets": {"batching.bucket_boundaries": "auto"},
    "static shapes": {"batching.bucket_boundaries": [10, 20], "batching.static_shapes": True,
                      "padding.maxlen": 30},
    "packed rows": {"batching.packing": {"length": 48}, "padding.maxlen": 40},
    "scaled, split": {"inputs.steps.normalize": "standard", "split": {"validation": 0.3,
                                                                       "seed": 3}},
}


@pytest.fixture(scope="module")
def table():
    return long_table(LENGTHS)


def _write(tmp_path, table, layout="long"):
    data = sorted_by_id(table)
    if layout == "nested":
        data = nested_from_long(table)
    return write(tmp_path / f"{layout}.parquet", data, 200)


def _config(path, name="auto buckets", layout="long", **overrides):
    return load_config(base_config(path, layout), {
        "batching.batch_size": 8, "shuffle.buffer_size": 40, "shuffle.seed": 7,
        **CONFIGS[name], **overrides})


@pytest.mark.parametrize("layout", ["long", "nested"])
@pytest.mark.parametrize("name", CONFIGS)
def test_later_epochs_from_memory_are_the_streamed_ones_and_read_nothing(
        tmp_path, table, reads, caplog, name, layout):
    path = _write(tmp_path, table, layout)
    split = "train" if "split" in name else None
    kept = Pipeline(_config(path, name, layout), split=split)
    streamed = Pipeline(_config(path, name, layout, **{"source.memory_mb": 0}), split=split)
    with caplog.at_level(logging.INFO, logger="seqpipe"):
        read = []
        for epoch in range(3):
            before = reads[0]
            same_batches(kept, streamed, epoch)
            read.append(reads[0] - before)
    # both read the file in epoch 0; then only the streaming one
    assert read[0] > 0 and read[1] == read[2] == read[0] // 2
    assert "epoch 1 from the prepared sequences kept in memory" in caplog.text
    assert "epoch 1 from" in caplog.text and "(source.memory_mb=0)" in caplog.text


def test_windows_from_memory_are_the_streamed_ones(tmp_path):
    from tests.test_windows import config as window_config
    from tests.test_windows import stores, write_shuffled

    path = write_shuffled(stores(n=15), tmp_path / "rows")
    kept = Pipeline(window_config(path))
    streamed = Pipeline(load_config(window_config(path), {"source.memory_mb": 0}))
    for epoch in range(3):
        for a, b in zip(kept.batches(epoch), streamed.batches(epoch), strict=True):
            assert a.ids.tolist() == b.ids.tolist() and a.ends.tolist() == b.ends.tolist()
            for part in ("x", "y", "sample_weight"):
                for name, values in getattr(a, part).items():
                    np.testing.assert_array_equal(values, getattr(b, part)[name])
    assert kept._memory.kept is not None and streamed._memory.kept is None


def test_a_budget_too_small_streams_every_epoch(tmp_path, reads, caplog):
    lengths = np.random.default_rng(5).integers(1, 60, 4000)  # about 2.5 MB prepared
    path = _write(tmp_path, long_table(lengths))
    pipeline = Pipeline(_config(path, **{"source.memory_mb": 1}))
    with caplog.at_level(logging.INFO, logger="seqpipe"):
        counts = []
        for epoch in range(2):
            before = reads[0]
            sum(1 for _ in pipeline.batches(epoch))
            counts.append(reads[0] - before)
    assert counts[0] == counts[1] > 0
    assert "do not fit source.memory_mb=1" in caplog.text


def test_a_source_whose_prepared_sequences_fit_the_budget_is_kept(tmp_path, reads):
    """The estimate counts what prepared sequences hold (4 bytes an input value, labels 4
    and their flags 1): about 1.5 MB here, kept within 2 MB. Counting inputs as 8 bytes
    it was 2.2 MB, and every epoch streamed."""
    lengths = np.random.default_rng(5).integers(1, 40, 5000)
    path = _write(tmp_path, long_table(lengths))
    pipeline = Pipeline(_config(path, **{"source.memory_mb": 2}))
    sum(1 for _ in pipeline.batches(0))
    before = reads[0]
    sum(1 for _ in pipeline.batches(1))
    assert reads[0] == before


@pytest.mark.parametrize("case", ["plain", "scaled and categorical", "time delta, indicators",
                                  "scaled per sequence"])
def test_internal_the_estimate_bounds_what_is_kept_tightly(tmp_path, case):
    """(Internal: `Memory`'s estimate against the kept chunks.) The estimate made before
    anything is read is never below what the first epoch keeps, so a source estimated to
    fit holds no more than the budget, and within 15 % of it."""
    from seqpipe.memory import chunk_bytes
    from tests.helpers import sessions
    from tests.test_transform import config as transform_config

    if case in ("plain", "scaled per sequence"):
        path = _write(tmp_path, long_table(LENGTHS))
        scaled = {"inputs.static.normalize": "standard", "inputs.steps.normalize": "standard"}
        config = _config(path, **(scaled if case != "plain" else {}))
    else:
        path = write(tmp_path / "s.parquet", sessions(), 40)
        extra = {} if case == "scaled and categorical" else {"inputs": {"vitals": {
            "columns": ["hr", "bp"], "time_delta": True, "missing_indicators": True,
            "fill_value": -5}}}
        config = transform_config(path, **extra)
    pipeline = Pipeline(config)
    sum(1 for _ in pipeline.batches(0))
    kept = sum(chunk_bytes(chunk) for _, chunk in pipeline._memory.kept)
    estimate = pipeline._memory.estimate
    assert kept <= estimate <= 1.15 * kept


def test_an_epoch_cut_short_keeps_nothing(tmp_path, table, reads):
    path = _write(tmp_path, table)
    pipeline = Pipeline(_config(path))
    next(iter(pipeline.batches(0)))  # a pass cut short (Keras's first batch, say)
    before = reads[0]
    sum(1 for _ in pipeline.batches(0))
    assert reads[0] > before  # read again, to its end: now kept
    before = reads[0]
    sum(1 for _ in pipeline.batches(1))
    assert reads[0] == before


@pytest.mark.parametrize("format", ["tf", "numpy"])
def test_every_format_gives_later_epochs_from_memory(tmp_path, table, reads, format):
    path = _write(tmp_path, table)
    dataset = build_dataset(_config(path), format=format)
    streamed = build_dataset(_config(path, **{"source.memory_mb": 0}), format=format)
    for epoch in range(3):
        before = reads[0]
        got = [b[0]["steps"] for b in dataset]
        if epoch:
            assert reads[0] == before
        expected = [b[0]["steps"] for b in streamed]
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_data_grouped_whole_is_kept_too(tmp_path, table):
    folder = scatter(table, tmp_path / "dealt")
    kept = Pipeline(_config(folder))
    streamed = Pipeline(_config(folder, **{"source.memory_mb": 0}))
    for epoch in range(2):
        same_batches(kept, streamed, epoch)


@pytest.mark.parametrize("source", ["streamed", "grouped whole"])
def test_an_epoch_resumed_from_memory_gives_the_uninterrupted_batches(tmp_path, table, reads,
                                                                      source):
    path = _write(tmp_path, table) if source == "streamed" else scatter(table, tmp_path / "d")
    pipeline = Pipeline(_config(path))
    epoch = list(pipeline.batches(1))  # read, and kept
    before = reads[0]
    for start in (1, len(epoch) // 2, len(epoch) - 1):
        resumed = list(pipeline.batches(1, start))
        assert len(resumed) == len(epoch) - start
        for a, b in zip(resumed, epoch[start:]):
            assert a.ids.tolist() == b.ids.tolist()
            for part in ("x", "y", "sample_weight"):
                for name, values in getattr(a, part).items():
                    np.testing.assert_array_equal(values, getattr(b, part)[name])
    assert reads[0] == before


def test_model_fit_trains_on_the_streamed_batches_in_every_epoch(tmp_path, table):
    """What `fit` itself trains on, epoch after epoch, with later epochs from memory: the
    batches of a pipeline that streams every epoch. The per-sequence input `static` (age)
    is 40 + the sequence's number, so it names each row; a layer records it (run eagerly)."""
    import keras

    path = _write(tmp_path, table)
    streamed = Pipeline(_config(path, **{"source.memory_mb": 0}))
    expected = [(b.x["static"][:, 0] - 40).astype(int).tolist()
                for epoch in range(3) for b in streamed.batches(epoch)]
    seen = []

    class Record(keras.layers.Layer):
        def call(self, static, training=None):
            if training:
                seen.append((np.asarray(static)[:, 0] - 40).astype(int).tolist())
            return static

    steps = keras.Input((None, 2), name="steps")
    static = keras.Input((1,), name="static")
    pooled = keras.layers.GlobalAveragePooling1D()(steps)
    died = keras.layers.Dense(1, name="died")(
        keras.layers.Concatenate()([pooled, Record()(static)]))
    y = keras.layers.Dense(1, name="y")(steps)
    model = keras.Model({"steps": steps, "static": static}, {"y": y, "died": died})
    model.compile("adam", {"y": "mse", "died": "mse"}, run_eagerly=True)
    model.fit(build_dataset(_config(path)), epochs=3, verbose=0)
    assert seen == expected
