"""Time-partitioned sources: rows of one sequence spread over files are regrouped once into
a sorted cache (DuckDB, out of core) and streamed from it, batch for batch as the in-memory
path groups them."""

import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqpipe import DataError, Pipeline, load_config, load_materialized, materialize
from seqpipe.lockstep import Lockstep
from tests.helpers import base_config, long_table, same_batches, scatter

LENGTHS = np.random.default_rng(8).integers(1, 40, 150)


def _by_day(table: pa.Table, folder, days: int = 5) -> str:
    """One file per 'day': each holds a slice of every sequence's timesteps, rows shuffled,
    as loggers and warehouses write time-partitioned data."""
    os.makedirs(folder, exist_ok=True)
    frame = table.to_pandas().sort_values(["id", "t"])
    position = frame.groupby("id").cumcount().to_numpy()
    length = frame.groupby("id").id.transform("size").to_numpy()
    day = position * days // length
    rng = np.random.default_rng(0)
    for d in range(days):
        rows = frame[day == d].sample(frac=1, random_state=d)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                       os.path.join(folder, f"day-{d}.parquet"), row_group_size=int(
                           rng.integers(40, 90)))
    return str(folder)


def _config(path, **overrides):
    return load_config(base_config(path), {
        "batching.bucket_boundaries": "auto", "shuffle.buffer_size": 40, "shuffle.seed": 3,
        "padding.maxlen": 25, "padding.truncating": "pre",
        "split.validation": 0.3, "split.seed": 2, **overrides})


def _same_batches(a: Pipeline, b: Pipeline, epoch: int = 0) -> int:
    return sum(same_batches(a, b, epoch))


@pytest.mark.parametrize("layout", ["by day", "rows dealt at random"])
def test_a_regrouped_source_streams_the_in_memory_batches(tmp_path, layout, caplog):
    table = long_table(LENGTHS, seed=4)
    folder = (_by_day(table, tmp_path / "days") if layout == "by day"
              else scatter(table, tmp_path / "rows", files=4, seed=3, row_group_size=70))
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        regrouped = Pipeline(_config(folder), split="train")
    assert regrouped.report.streamed and "regrouped copy" in str(regrouped.report)
    assert any(re.match(r"seqpipe regroups .* \([\d,]+ rows in \d files, sequences spread "
                        r"over row groups\) into .*, once, within 1GB of memory",
                        r.getMessage()) for r in caplog.records)
    seen = 0
    for part in ("train", "validation"):
        mine = Pipeline(_config(folder), split=part)
        whole = Pipeline(_config(None), table, split=part)
        for epoch in (0, 1):
            count = _same_batches(mine, whole, epoch)
        seen += count
        assert mine.report.missing_labels == whole.report.missing_labels
        assert mine.report.truncated_timesteps == whole.report.truncated_timesteps
    assert seen == len(LENGTHS)


def test_a_second_build_reuses_the_copy_and_a_changed_source_replaces_it(
        tmp_path, caplog, regrouping_cache):
    table = long_table(LENGTHS, seed=5)
    folder = _by_day(table, tmp_path / "days")
    Pipeline(_config(folder), split="train")
    copies = list(regrouping_cache.iterdir())
    assert len(copies) == 1 and (copies[0] / "complete.json").exists()
    written = (copies[0] / "sorted.parquet").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seqpipe"):
        Pipeline(_config(folder), split="train")
    assert not any("regroups" in r.getMessage() for r in caplog.records)
    assert any("from its regrouped copy in" in r.getMessage() for r in caplog.records)
    assert (copies[0] / "sorted.parquet").stat().st_mtime_ns == written
    changed = pq.read_table(os.path.join(folder, "day-0.parquet"))
    changed = changed.set_column(changed.schema.get_field_index("x"), "x",
                                 pa.compute.multiply(changed["x"], 2.0))
    time.sleep(0.01)
    pq.write_table(changed, os.path.join(folder, "day-0.parquet"))
    again = Pipeline(_config(folder), split="train")
    now = list(regrouping_cache.iterdir())
    assert len(now) == 1 and now[0] != copies[0]  # a new copy; the stale one removed
    table = pa.concat_tables([pq.read_table(os.path.join(folder, f"day-{d}.parquet"))
                              for d in range(5)])
    _same_batches(again, Pipeline(_config(None), table, split="train"))


def test_cache_false_groups_in_memory_and_cache_dir_is_where_the_copy_goes(tmp_path,
                                                                          regrouping_cache):
    table = long_table(LENGTHS[:40], seed=6)
    folder = _by_day(table, tmp_path / "days")
    in_memory = Pipeline(_config(folder, **{"source.cache": False}), split="train")
    assert not in_memory.report.streamed and not regrouping_cache.exists()
    elsewhere = tmp_path / "my-cache"
    Pipeline(_config(folder, **{"source.cache": {"dir": str(elsewhere),
                                                 "memory_limit": "200MB"}}), split="train")
    assert len(list(elsewhere.iterdir())) == 1 and not regrouping_cache.exists()


def test_two_processes_building_the_same_copy_at_once_both_get_it_whole(tmp_path):
    table = long_table(np.random.default_rng(1).integers(1, 60, 2000), seed=7)
    folder = _by_day(table, tmp_path / "days")
    code = ("import sys, seqpipe; from tests.test_regroup import _config; "
            "p = seqpipe.Pipeline(_config(sys.argv[1]), split='train'); "
            "print(sum(len(b.ids) for b in p.batches()))")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    runs = [subprocess.Popen([sys.executable, "-c", code, folder], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    expected = Pipeline(_config(None), table, split="train").report.sequences
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
        assert int(out.split()[-1]) == expected
    cache = os.path.join(os.environ["XDG_CACHE_HOME"], "seqpipe", "regrouped")
    assert [n for n in os.listdir(cache) if not n.startswith(".")] and \
        not [n for n in os.listdir(cache) if n.startswith(".")]  # no half-written folder left


def test_a_repeated_time_across_files_is_found_and_names_the_source(tmp_path):
    table = long_table(LENGTHS[:30], seed=2)
    folder = _by_day(table, tmp_path / "days")
    extra = table.filter(pa.compute.equal(table["id"], "s007")).slice(0, 1)
    pq.write_table(extra, os.path.join(folder, "late.parquet"))  # s007 twice at one time
    with pytest.raises(DataError, match=r"sequence 's007' has two rows at time \d+ "
                                        r"\(source\.time_column 't'\) in .*days \(regrouped: "
                                        r"row group \d+ of .*sorted\.parquet\)"):
        for part in ("train", "validation"):
            for _ in Pipeline(_config(folder), split=part).batches():
                pass


def test_processes_share_the_copy_and_materialize_reads_it(tmp_path):
    table = long_table(LENGTHS, seed=9)
    folder = _by_day(table, tmp_path / "days")
    config = _config(folder, **{"split.validation": 0.0})
    ids = []
    for index in range(2):
        ids += [i for b in Pipeline(config, lockstep=Lockstep(index, 2)).batches() for i in b.ids]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == len(LENGTHS)
    manifest = materialize(config, tmp_path / "out")
    assert manifest["parts"]["all"]["sequences"] == len(LENGTHS)
    batches = list(load_materialized(tmp_path / "out"))
    assert sum(int(b[0]["steps"].shape[0]) for b in batches) == len(LENGTHS)


def test_a_per_sequence_label_that_differs_across_files_is_found(tmp_path):
    table = long_table(LENGTHS[:30], seed=3)
    folder = _by_day(table, tmp_path / "days")
    day = pq.read_table(os.path.join(folder, "day-4.parquet")).to_pandas()
    changed = day.id[day.died.notna()].iloc[0]  # with a label here and in other files
    day.loc[day.id == changed, "died"] = 7.0  # another value than its other rows hold
    pq.write_table(pa.Table.from_pandas(day, preserve_index=False),
                   os.path.join(folder, "day-4.parquet"))
    config = _config(folder, **{"split.validation": 0.0})
    with pytest.raises(DataError, match=rf"column 'died' \(outputs\.died\.column, level: "
                                        rf"sequence\) has two different values in sequence "
                                        rf"'{changed}' of .*days \(regrouped: row group \d+ of "):
        for _ in Pipeline(config).batches():
            pass


def test_the_sort_shows_its_progress_and_inspect_and_validate_say_how_it_is_read(
        tmp_path, capsys):
    from seqpipe.parquet.regroup import regrouped
    from seqpipe.parquet.source import open_source

    table = long_table(LENGTHS[:60], seed=4)
    folder = _by_day(table, tmp_path / "days")
    config = _config(folder)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(__import__("yaml").safe_dump(config.to_dict()))

    def command(name):
        run = subprocess.run([sys.executable, "-m", "seqpipe", name, str(yaml_file)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout

    assert re.search(r"needs regrouping, once, into .*seqpipe/regrouped/\S+ \(source\.cache; "
                     r"within 1GB\): rows of the same sequences are spread", command("inspect"))
    regrouped(open_source(config), config, progress=True)
    assert re.search(rf"seqpipe: {table.num_rows:,}/{table.num_rows:,} rows \(100%\), "
                     r"[\d,]+/s, took \d+:\d\d", capsys.readouterr().err)
    assert re.search(r"reading: streams from its regrouped copy in .*seqpipe/regrouped/",
                     command("validate"))


def test_a_cache_folder_that_cannot_be_written_says_what_to_do(tmp_path):
    table = long_table(LENGTHS[:20], seed=1)
    folder = _by_day(table, tmp_path / "days")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = _config(folder, **{"source.cache": {"dir": str(blocker / "cache")}})
    with pytest.raises(DataError, match=r"cannot write the regrouping cache in .*a-file/cache "
                                        r".*; set source\.cache\.dir to a writable folder, or "
                                        r"source\.cache: false"):
        Pipeline(config, split="train")


def _footer(path) -> bytes:
    data = open(path, "rb").read()
    return data[-8 - int.from_bytes(data[-8:-4], "little"):]


def test_a_source_rewritten_with_the_same_size_footer_and_time_is_regrouped_again(
        tmp_path, regrouping_cache):
    # Uncompressed, plain-encoded values: changing one value in the middle of a column keeps
    # the size, every offset and the footer's statistics, so the footer's bytes too.
    table = long_table(LENGTHS[:40], seed=5, label_missing=0.0)
    folder = _by_day(table, tmp_path / "days")
    path = os.path.join(folder, "day-2.parquet")
    day = pq.read_table(path)
    options = {"compression": "NONE", "use_dictionary": False, "row_group_size": 1000}
    pq.write_table(day, path, **options)
    before = Pipeline(_config(folder, **{"split.validation": 0.0}))
    x = day["x"].to_numpy().copy()
    middle = int(np.argsort(x)[len(x) // 2])  # neither the minimum nor the maximum
    x[middle] = (x[middle] + x[int(np.argsort(x)[len(x) // 2 + 1])]) / 2
    pq.write_table(day.set_column(day.schema.get_field_index("x"), "x", pa.array(x)),
                   tmp_path / "new.parquet", **options)
    stat = os.stat(path)
    assert os.path.getsize(tmp_path / "new.parquet") == stat.st_size
    assert _footer(tmp_path / "new.parquet") == _footer(path)
    with open(path, "r+b") as f:  # in place, as a same-second rewrite or `cp -p` leaves it
        f.write((tmp_path / "new.parquet").read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    del before
    after = Pipeline(_config(folder, **{"split.validation": 0.0}))
    changed = day["id"][middle].as_py()
    rows = {i: (batch.x["steps"][r, :n, 1])
            for batch in after.batches() for r, (i, n) in enumerate(zip(batch.ids,
                                                                         batch.lengths))}
    whole = pa.concat_tables([pq.read_table(os.path.join(folder, f"day-{d}.parquet"))
                              for d in range(5)]).to_pandas().sort_values(["id", "t"])
    want = whole[whole.id == changed].x.to_numpy(np.float32)[-len(rows[changed]):]
    np.testing.assert_array_equal(rows[changed], want)
    assert np.float32(x[middle]) in rows[changed]


def test_without_a_time_column_the_copy_keeps_files_and_rows_in_source_order(tmp_path):
    table = long_table(LENGTHS[:50], seed=6, label_missing=0.0)
    folder = scatter(table, tmp_path / "rows", files=4, seed=3, row_group_size=30)
    no_time = load_config(base_config(folder, source={"path": folder, "id_column": "id"}),
                          {"batching.batch_size": 64, "split.validation": 0.0})
    regrouped = Pipeline(no_time)
    assert regrouped.report.streamed and "regrouped copy" in str(regrouped.report)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    in_order = pa.concat_tables([pq.read_table(f) for f in files])  # files by name, rows
    whole = Pipeline(load_config(no_time.to_dict(), {"source.path": None}), in_order)
    assert _same_batches(regrouped, whole) == 50


def test_two_projects_with_the_same_relative_path_keep_copies_of_their_own(
        tmp_path, monkeypatch, regrouping_cache):
    projects = []
    for name, seed in (("a", 1), ("b", 2)):
        os.makedirs(tmp_path / name)
        _by_day(long_table(LENGTHS[:30], seed=seed), tmp_path / name / "data")
        projects.append(tmp_path / name)
    monkeypatch.chdir(projects[0])
    first = Pipeline(_config("data", **{"split.validation": 0.0}))
    epoch0 = [b.ids for b in first.batches(0)]
    monkeypatch.chdir(projects[1])
    Pipeline(_config("data", **{"split.validation": 0.0}))
    assert len(list(regrouping_cache.iterdir())) == 2
    monkeypatch.chdir(projects[0])
    assert sorted(i for ids in epoch0 for i in ids) == \
        sorted(i for b in first.batches(1) for i in b.ids)  # its copy is still there


def test_a_stale_copy_is_kept_while_a_pipeline_reads_it_and_removed_after(
        tmp_path, regrouping_cache):
    table = long_table(LENGTHS[:30], seed=3)
    folder = _by_day(table, tmp_path / "days")
    reading = Pipeline(_config(folder, **{"split.validation": 0.0}))
    changed = pq.read_table(os.path.join(folder, "day-0.parquet"))
    pq.write_table(changed.slice(1), os.path.join(folder, "day-0.parquet"))
    Pipeline(_config(folder, **{"split.validation": 0.0}))
    assert len(list(regrouping_cache.iterdir())) == 2  # the old copy is still read
    assert sum(len(b.ids) for b in reading.batches(1)) == 30
    del reading
    Pipeline(_config(folder, **{"split.validation": 0.0}))
    assert len(list(regrouping_cache.iterdir())) == 1


def test_a_truncated_copy_is_found_and_built_again(tmp_path, regrouping_cache, caplog):
    table = long_table(LENGTHS[:30], seed=4)
    folder = _by_day(table, tmp_path / "days")
    first = Pipeline(_config(folder), split="train")
    expected = [b.ids for b in first.batches(0)]
    del first
    [copy] = regrouping_cache.iterdir()
    data = (copy / "sorted.parquet").read_bytes()
    (copy / "sorted.parquet").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        again = Pipeline(_config(folder), split="train")
    assert any(re.search(r"the regrouped copy in .* is damaged \(.*\); it is built again",
                         r.getMessage()) for r in caplog.records)
    assert [b.ids.tolist() for b in again.batches(0)] == [e.tolist() for e in expected]


@pytest.mark.slow
def test_ctrl_c_during_the_sort_exits_as_an_interrupt_and_leaves_nothing(tmp_path):
    import json
    import signal

    rng = np.random.default_rng(0)
    rows = 3_000_000  # a sort of a second or more, so that Ctrl-C comes during it
    ids, times = rng.integers(0, 50_000, rows), rng.permutation(rows)
    (tmp_path / "days").mkdir()
    for d in range(4):
        at = slice(d * rows // 4, (d + 1) * rows // 4)
        pq.write_table(pa.table({"id": ids[at], "t": times[at], "x": rng.normal(size=rows // 4),
                                 "y": rng.normal(size=rows // 4)}),
                       tmp_path / "days" / f"day-{d}.parquet", row_group_size=100_000)
    config = {"source": {"path": str(tmp_path / "days"), "id_column": "id", "time_column": "t",
                         "cache": {"dir": str(tmp_path / "cache"), "memory_limit": "100MB"}},
              "inputs": {"steps": {"columns": ["x"]}}, "outputs": {"y": {"column": "y"}}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    run = subprocess.Popen([sys.executable, "-m", "seqpipe", "materialize",
                            str(tmp_path / "c.json"), "--out", str(tmp_path / "out")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = "x"
    while line and "regroups" not in line:  # the sort has started
        line = run.stderr.readline()
    time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "seqpipe: interrupted" in err and "Traceback" not in err
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written copy left
    assert not (tmp_path / "out").exists()
