"""Streaming: a sorted Parquet source read row group by row group gives exactly the batches
of the same data grouped whole in memory; what cannot be streamed is grouped whole, loudly."""

import dataclasses
import logging
import os
import re
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tensorflow as tf

from seqpipe import DataError, Pipeline, build_dataset, load_config, tuning
from seqpipe.batches.buckets import bucket_of
from tests.helpers import base_config, long_table, same_batches, write

LENGTHS = np.random.default_rng(5).integers(1, 30, 80)



def _tune(monkeypatch, **values):
    """Runs the test with some tuning values changed."""
    monkeypatch.setattr(tuning, "TUNING", dataclasses.replace(tuning.TUNING, **values))

def _by_id(table: pa.Table) -> pa.Table:
    """Rows sorted by id, but each sequence's timesteps newest first: row groups hold
    disjoint id ranges, and within them the rows still need ordering by time."""
    return table.take(pc.sort_indices(table, [("id", "ascending"), ("t", "descending")]))


def _config(path, **overrides):
    return load_config(base_config(path), {"batching.bucket_boundaries": "auto", **overrides})


def _same_batches(a: Pipeline, b: Pipeline, epoch: int) -> int:
    return len(same_batches(a, b, epoch))


@pytest.mark.parametrize("row_group_size", [1, 7, 50, 10_000], ids=lambda n: f"rg{n}")
@pytest.mark.parametrize("shuffle", [0, 25], ids=["in-order", "shuffled"])
def test_streamed_file_gives_the_batches_of_the_whole_table(tmp_path, row_group_size,
                                                            shuffle):
    table = long_table(LENGTHS)
    path = write(tmp_path / "d.parquet", _by_id(table), row_group_size=row_group_size)
    overrides = {"shuffle.buffer_size": shuffle, "shuffle.seed": 3, "padding.maxlen": 20,
                 "padding.truncating": "pre", "padding.side": "pre"}
    streamed = Pipeline(_config(path, **overrides))
    whole = Pipeline(_config(None, **overrides), table)
    assert streamed.report.streamed and not whole.report.streamed
    for epoch in (0, 1):
        assert _same_batches(streamed, whole, epoch) == whole.report.batches_per_epoch


def test_an_epoch_starts_reading_before_it_plans_and_before_its_first_chunk_is_asked_for(
        tmp_path, monkeypatch):
    """The first row groups are read while the epoch is planned (and, in build_dataset,
    while TensorFlow builds its iterator): reading does not wait for the first chunk."""
    from seqpipe.batches.whole import WholeSequences
    from seqpipe.parquet import stream

    path = write(tmp_path / "d.parquet", _by_id(long_table(LENGTHS)), row_group_size=50)
    # memory_mb 0: the second epoch streams too (kept in memory, it would read nothing)
    pipeline = Pipeline(_config(path, **{"shuffle.buffer_size": 25, "shuffle.seed": 3,
                                         "source.memory_mb": 0}))
    started = []
    read = stream.read_row_group
    monkeypatch.setattr(stream, "read_row_group", lambda part, schema: (
        started.append(part.number), read(part, schema))[1])
    planned = []
    plan = WholeSequences.plan

    def planning(self, epoch=0):
        wait_until = time.monotonic() + 2  # for a read already handed to a thread to begin
        while not started and time.monotonic() < wait_until:
            time.sleep(0.01)
        planned.append(list(started))
        return plan(self, epoch)

    monkeypatch.setattr(WholeSequences, "plan", planning)
    _tune(monkeypatch, read_ahead_rows=100)  # two row groups of 50 rows
    chunks = pipeline.chunks()
    deadline = time.monotonic() + 10
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a third read, were one started, would show by now
    assert sorted(started) == [0, 1]  # nothing asked for yet
    assert sum(len(chunk) for _, chunk in chunks) == len(LENGTHS)
    started.clear()
    groups = pipeline.blocks(1)
    next(groups)
    assert planned[0], "the epoch was planned before any row group was read"


@pytest.mark.parametrize("budget", [40, 150, 10_000])
def test_reads_run_ahead_by_rows_several_small_files_at_once(tmp_path, monkeypatch, budget):
    """Row groups are read ahead of the one being grouped up to `Tuning.read_ahead_rows` rows, at
    least one: small files are read two at a time (`Tuning.read_threads`); with a budget smaller
    than a row group, one row group is read ahead."""
    from seqpipe.parquet import stream

    table = _by_id(long_table(LENGTHS))
    for k, first in enumerate(range(0, table.num_rows, 50)):  # files of 50 rows, sorted
        write(tmp_path / f"part-{k:02d}.parquet", table.slice(first, 50), row_group_size=50)
    files = len(list(tmp_path.iterdir()))
    pipeline = Pipeline(_config(str(tmp_path)))
    assert pipeline.report.streamed
    running, most, ahead, lock = [0], [0], [], threading.Lock()
    read = stream.read_row_group

    def slow_read(part, schema):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return read(part, schema)

    monkeypatch.setattr(stream, "read_row_group", slow_read)
    _tune(monkeypatch, read_ahead_rows=budget)
    take = stream._ReadAhead.take

    def counting_take(self):
        table = take(self)
        ahead.append(sum(rows for rows, _ in self._pending))  # rows read ahead of it
        return table

    monkeypatch.setattr(stream._ReadAhead, "take", counting_take)
    assert sum(len(chunk) for _, chunk in pipeline.chunks()) == len(LENGTHS)
    assert len(ahead) == files
    # Rows read ahead once the first file is taken: one file past a budget smaller than a
    # file, three files of 50 within 150, all the rest within 10,000.
    assert ahead[0] == {40: 50, 150: 150}.get(budget, table.num_rows - 50)
    assert max(ahead) <= max(budget, 50)
    if budget > 50:
        assert most[0] == tuning.TUNING.read_threads  # files read side by side


def test_local_files_are_read_without_pre_buffering_other_filesystems_keep_it(tmp_path):
    """pyarrow's `pre_buffer` reads all of a row group's compressed bytes before decoding
    any: made for object stores, for a local file it only holds memory."""
    import pyarrow.dataset as ds
    import pyarrow.fs as fs

    from seqpipe.parquet import stream

    write(tmp_path / "d.parquet", _by_id(long_table(LENGTHS)))
    local = next(ds.dataset(str(tmp_path / "d.parquet")).get_fragments())
    assert stream._scan_options(local).pre_buffer is False
    other = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())  # not LocalFileSystem
    elsewhere = next(ds.dataset("d.parquet", filesystem=other).get_fragments())
    assert stream._scan_options(elsewhere).pre_buffer is True
    assert stream._scan_options(local).page_checksum_verification
    assert stream._scan_options(elsewhere).page_checksum_verification


@pytest.mark.parametrize("order", ["sorted by id", "shuffled within each row group"])
def test_big_row_groups_are_handed_on_in_pieces_of_whole_sequences(tmp_path, monkeypatch,
                                                                    order):

    table = _by_id(long_table(LENGTHS))
    if order != "sorted by id":  # id ranges still disjoint between row groups
        halves = [table.slice(0, 600), table.slice(600)]
        table = pa.concat_tables([h.take(np.random.default_rng(0).permutation(h.num_rows))
                                  for h in halves])
    path = write(tmp_path / "d.parquet", table, row_group_size=600)
    _tune(monkeypatch, piece_rows=40)
    config = _config(path, **{"shuffle.buffer_size": 25, "shuffle.seed": 2})
    streamed = Pipeline(config)
    assert streamed.report.streamed
    chunks = [len(c) for _, c in streamed.chunks()]
    assert sum(chunks) == len(LENGTHS)
    if order == "sorted by id":
        assert len(chunks) > 10 and max(chunks) < 10  # pieces of about 40 rows
    else:
        assert len(chunks) <= 3  # a row group in pieces would split sequences: kept whole
    for epoch in (0, 1):
        _same_batches(streamed, Pipeline(_config(None, **{"shuffle.buffer_size": 25,
                                                          "shuffle.seed": 2}), table), epoch)


@pytest.mark.parametrize("row_group_size", [7, 50, 600], ids=lambda n: f"rg{n}")
def test_the_id_runs_a_chunk_carries_are_those_of_its_rows(tmp_path, monkeypatch,
                                                           row_group_size):
    """The stream finds id runs once per row group and shifts them through its cuts
    (sequences spanning row groups, pieces); each chunk's must be its own rows' runs."""
    from seqpipe.parquet import stream
    from seqpipe.parquet.grouping import id_runs

    path = write(tmp_path / "d.parquet", _by_id(long_table(LENGTHS)),
                 row_group_size=row_group_size)
    _tune(monkeypatch, piece_rows=40)
    from seqpipe.parquet.source import open_source

    config = _config(path)
    files = open_source(config)
    carried = 0
    for chunk in stream.stream_chunks(stream.stream_order(files, config), config,
                                      files.schema, in_pieces=True):
        if chunk.id_starts is not None:
            np.testing.assert_array_equal(chunk.id_starts, id_runs(chunk.table["id"]))
            carried += 1
    assert carried >= 3


def test_a_row_group_of_one_long_sequence_is_handed_on_whole(tmp_path, monkeypatch):

    table = _by_id(long_table([200, 3]))
    path = write(tmp_path / "d.parquet", table, row_group_size=200)  # s000 fills row group 0
    _tune(monkeypatch, piece_rows=40)
    streamed = Pipeline(_config(path))
    assert [len(c) for _, c in streamed.chunks()] == [1, 1]
    _same_batches(streamed, Pipeline(_config(None), table), 0)


def test_a_directory_of_files_streams_in_id_order(tmp_path):
    table = _by_id(long_table(LENGTHS))
    (tmp_path / "dir").mkdir()
    cuts = [0, 300, 301, 700, table.num_rows]  # file boundaries inside sequences too
    # Named against id order, so the reader must order the files by their id ranges.
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        write(tmp_path / "dir" / f"part-{9 - k}.parquet", table.slice(a, b - a))
    config = _config(str(tmp_path / "dir"), **{"shuffle.buffer_size": 30, "shuffle.seed": 1})
    streamed = Pipeline(config)
    assert streamed.report.streamed and streamed.report.files == 4
    _same_batches(streamed, Pipeline(_config(None, **{"shuffle.buffer_size": 30,
                                                      "shuffle.seed": 1}), table), 0)


def test_row_groups_that_share_sequences_are_grouped_whole_with_a_warning(tmp_path, caplog):
    table = long_table(LENGTHS)  # rows shuffled: every row group holds every id range
    path = write(tmp_path / "d.parquet", table, row_group_size=100)
    config = _config(path, **{"source.cache": False})  # no regrouped copy: in memory
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        pipeline = Pipeline(config)
    assert not pipeline.report.streamed
    warning = (r"seqpipe groups .*d\.parquet whole, in memory: rows of the same sequences "
               r"are spread over row groups: .*d\.parquet \(row group \d\) holds ids 's000' "
               r"to 's\d+' and .*\(row group \d\).*Sort the rows by id")
    assert any(re.match(warning, r.getMessage()) for r in caplog.records)
    _same_batches(pipeline, Pipeline(_config(None), table), 0)


def test_streamed_report_counts_fills_and_missing_labels_during_the_first_epoch(tmp_path):
    table = _by_id(long_table(LENGTHS)).to_pandas()
    table.loc[[3, 40, 500], "x"] = np.nan
    path = write(tmp_path / "d.parquet", pa.Table.from_pandas(table, preserve_index=False))
    config = load_config(_config(path), {"inputs.steps.fill_value": 0.0})
    pipeline = Pipeline(config)
    assert pipeline.report.filled_values is None and pipeline.report.missing_labels is None
    assert "counted as the features stream in" in str(pipeline.report)
    for _ in pipeline.batches(0):
        pass
    assert pipeline.report.filled_values == {"inputs.steps.x": 3}
    missing, total = pipeline.report.missing_labels["y"]
    assert (missing, total) == (int(table["y"].isna().sum()), len(table))


def test_a_bad_feature_in_a_streamed_file_names_its_row_group(tmp_path):
    table = _by_id(long_table(LENGTHS)).to_pandas()
    table.loc[len(table) - 2, "x"] = np.inf  # in the last row group
    path = write(tmp_path / "d.parquet", pa.Table.from_pandas(table, preserve_index=False),
                 row_group_size=200)
    pipeline = Pipeline(_config(path))  # building reads ids only
    message = (r"inputs\.steps: 1 NaN, null or infinite values in 1 rows of .*d\.parquet "
               r"\(row group \d+\).*Set inputs\.steps\.fill_value")
    with pytest.raises(DataError, match=message):
        for _ in pipeline.batches(0):
            pass
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        for _ in build_dataset(pipeline):
            pass


def test_shuffled_batches_pad_little_and_still_change_order_every_epoch():
    lengths = np.clip(np.random.default_rng(0).lognormal(np.log(60), 0.9, 3000), 1, 900)
    config = load_config(base_config(None), {
        "batching": {"batch_size": 32, "bucket_boundaries": "auto"}, "padding.maxlen": 256,
        "shuffle.buffer_size": 2000, "shuffle.seed": 0})
    pipeline = Pipeline(config, long_table(lengths.astype(int), label_missing=0))
    assert pipeline.report.padding_waste < 0.05 < pipeline.report.padding_waste_unbucketed
    firsts = [[b.ids[0] for b in pipeline.batches(epoch)] for epoch in (0, 1)]
    assert firsts[0] != firsts[1] and sorted(firsts[0]) != firsts[0]
    longest = [b.lengths.max() for b in pipeline.batches(0)]
    assert longest != sorted(longest)  # batch order is not by length


def test_max_timesteps_caps_padded_timesteps_and_lets_short_buckets_grow():
    config = load_config(base_config(None), {
        "batching": {"batch_size": 100, "max_timesteps": 60, "bucket_boundaries": [5, 15]},
        "shuffle.buffer_size": 50, "shuffle.seed": 2})
    pipeline = Pipeline(config, long_table(LENGTHS))
    sizes = {}
    for batch in pipeline.batches():
        steps = batch.x["steps"].shape[1]
        assert len(batch.ids) * steps <= 60
        sizes.setdefault(int(bucket_of(batch.lengths[:1], (5, 15))[0]), set()).add(
            len(batch.ids))
    assert max(sizes[0]) > max(sizes[1]) > max(sizes[2]) >= 1
    seen = [i for b in pipeline.batches() for i in b.ids]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == len(LENGTHS)


def test_a_sequence_longer_than_max_timesteps_is_an_error():
    config = load_config(base_config(None), {"batching.max_timesteps": 10})
    with pytest.raises(DataError, match=r"sequence 's002' keeps 12 timesteps, more than "
                                        r"batching\.max_timesteps=10.*padding\.maxlen"):
        Pipeline(config, long_table([3, 4, 12]))


def test_max_timesteps_below_maxlen_is_a_config_error():
    from seqpipe import ConfigError

    with pytest.raises(ConfigError, match=r"batching\.max_timesteps \(100\) is smaller than "
                                          r"padding\.maxlen \(512\).*at least 512"):
        load_config(base_config(None), {"batching.max_timesteps": 100,
                                        "padding.maxlen": 512})


def test_a_file_rewritten_after_building_is_a_clear_error(tmp_path):
    path = write(tmp_path / "d.parquet", _by_id(long_table([3, 4, 5])))
    pipeline = Pipeline(_config(path))
    write(tmp_path / "d.parquet", _by_id(long_table([3, 6, 5, 2])))
    # The footer read at build time no longer matches the file.
    with pytest.raises(DataError, match=r"d\.parquet changed since the dataset was built "
                                        r"\(its size, .*footer, status-change time differ\).*Build the dataset"):
        for _ in pipeline.batches(0):
            pass


def test_a_forked_child_streams_with_read_threads_of_its_own(tmp_path):
    """Read and grouping threads are shared by every epoch in a process; a child forked
    after an epoch ran (whose copies of those pools have no threads) must not wait on them."""
    path = write(tmp_path / "d.parquet", _by_id(long_table(LENGTHS)), row_group_size=7)
    pipeline = Pipeline(_config(path, **{"shuffle.buffer_size": 25, "shuffle.seed": 3}))
    expected = sum(1 for _ in pipeline.batches(0))  # the parent's pools now have threads
    read, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, str(sum(1 for _ in pipeline.batches(1))).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the forked child hung waiting for its parent's read threads")
        time.sleep(0.05)
    assert int(os.read(read, 100) or b"-1") == expected
