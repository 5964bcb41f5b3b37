"""Nothing silently wrong: bad sources that used to be read without a word, each refused
with a message naming the file, column, key or sequence (real files in tmp_path)."""

import logging
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqpipe import DataError, Pipeline, build_dataset
from seqpipe.cli import main
from tests.helpers import base_config, long_table, nested_from_long, write


def _config(path, layout="long", **sections):
    config = base_config(str(path), layout, **sections)
    config["inputs"] = {"steps": {"columns": ["x"]}}
    config["outputs"] = {"y": {"column": "y"}}
    return config


def _sorted(table):
    return table.sort_by([("id", "ascending"), ("t", "ascending")])


def _read_all(pipeline):
    return [batch.ids.tolist() for batch in pipeline.batches(0)]


def _cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- 1. nested layout: a null or NaN inside a time list --------------------------------


@pytest.mark.parametrize("times, kind", [
    (pa.array([[2, None, 1], [1, 2]], pa.list_(pa.int64())), "null"),
    (pa.array([[2.0, float("nan"), 1.0], [1.0, 2.0]]), "NaN"),
], ids=["null", "nan"])
def test_a_missing_time_inside_a_nested_list_names_the_sequence(tmp_path, times, kind):
    table = pa.table({"id": ["a", "b"], "t": times, "x": [[1.0, 2.0, 3.0], [1.0, 2.0]],
                      "y": [[1.0, 2.0, 3.0], [1.0, 2.0]]})
    path = write(tmp_path / "n.parquet", table)
    with pytest.raises(DataError, match=r"^source\.time_column 't' has 1 null or NaN times "
                                        r"inside the lists of 1 sequences of .*n\.parquet.*, "
                                        r"first in sequence 'a'; every timestep needs a time"):
        _read_all(Pipeline(_config(path, "nested")))


# -- 2. a file rewritten between building and reading ----------------------------------


def _rewrite_keeping_time(path, table) -> bool:
    """Writes `table` over `path`, then puts the old modification time back; whether the
    size stayed the same."""
    before = os.stat(path)
    write(path, table)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    return os.stat(path).st_size == before.st_size


@pytest.mark.parametrize("change", ["new ids", "labels all null"])
def test_a_file_rewritten_with_the_same_layout_is_refused(tmp_path, change):
    table = _sorted(long_table([4, 4, 4, 4], label_missing=0.0))
    path = write(tmp_path / "d.parquet", table)
    pipeline = Pipeline(_config(path))
    dataset = build_dataset(_config(path))
    if change == "new ids":
        ids = pa.array([f"z{v.as_py()[1:]}" for v in table["id"]])
        new = table.set_column(0, "id", ids)
    else:
        new = table.set_column(table.schema.get_field_index("y"), "y",
                               pa.array([None] * table.num_rows, pa.float64()))
        new = new.cast(table.schema)
    same_size = _rewrite_keeping_time(path, new)
    assert same_size or change == "labels all null"  # new ids: the same byte layout
    message = (r"d\.parquet changed since the dataset was built \(its (size, )?footer, "
               r"status-change time differ\): its rows would be read under the old index.*Build "
               r"the dataset \(or Pipeline\) again")
    with pytest.raises(DataError, match=message):
        _read_all(pipeline)
    with pytest.raises(Exception, match=message):  # its first epoch may have been read
        for _ in range(2):
            list(dataset)


def test_a_rewrite_that_keeps_size_footer_and_time_is_refused(tmp_path):
    """One value changed in an uncompressed, plain-encoded file keeps every byte of the
    footer; the status-change time still tells."""
    table = _sorted(long_table([6, 6, 6], label_missing=0.0))
    options = {"compression": "NONE", "use_dictionary": False, "row_group_size": 7}
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, **options)
    pipeline = Pipeline(_config(str(path)))
    x = table["x"].to_numpy().copy()
    order = np.argsort(x[:7])  # the first row group: neither its minimum nor its maximum
    x[order[2]] = (x[order[2]] + x[order[3]]) / 2
    pq.write_table(table.set_column(table.schema.get_field_index("x"), "x", pa.array(x)),
                   tmp_path / "new.parquet", **options)
    old, new = path.read_bytes(), (tmp_path / "new.parquet").read_bytes()
    footer = 8 + int.from_bytes(old[-8:-4], "little")
    assert len(old) == len(new) and old[-footer:] == new[-footer:] and old != new
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match=r"d\.parquet changed since the dataset was built \(its "
                                        r"status-change time differs\)"):
        _read_all(pipeline)


def test_pipeline_sequences_reads_a_rewritten_file_as_it_is_now(tmp_path):
    """`Pipeline.sequences` opens the source anew: it reads the file as it is, and is not
    refused by the index it does not use."""
    table = _sorted(long_table([4, 4, 4], label_missing=0.0))
    path = write(tmp_path / "d.parquet", table)
    pipeline = Pipeline(_config(path))
    _rewrite_keeping_time(path, table.set_column(
        0, "id", pa.array([f"z{v.as_py()[1:]}" for v in table["id"]])))
    assert pipeline.sequences.ids.tolist() == ["z000", "z001", "z002"]  # read anew, as it is


# -- 3. Parquet page checksums ---------------------------------------------------------


def _corrupt_page(path, value: float) -> None:
    """Flips one bit of `value` where it lies in an uncompressed data page."""
    data = bytearray(open(path, "rb").read())
    at = data.find(np.float64(value).tobytes())
    assert at > 0
    data[at + 7] ^= 0x01
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("rows", ["sorted", "shuffled"], ids=["streamed", "grouped-whole"])
def test_a_corrupt_page_with_a_checksum_is_an_error_not_wrong_values(tmp_path, rows):
    lengths = [10] * 10
    table = pa.table({"id": np.repeat(np.arange(10), 10), "t": np.tile(np.arange(10), 10),
                      "x": np.arange(100, dtype=np.float64) + 0.5, "y": np.ones(100)})
    if rows == "shuffled":
        table = table.take(np.random.default_rng(0).permutation(sum(lengths)))
    path = str(tmp_path / "crc.parquet")
    pq.write_table(table, path, write_page_checksum=True, compression="NONE",
                   row_group_size=100)
    _corrupt_page(path, 42.5)
    assert 42.5 not in pq.read_table(path)["x"].to_pylist()  # pyarrow alone reads it
    with pytest.raises(DataError, match=r"crc\.parquet.*CRC checksum verification failed"):
        _read_all(Pipeline(_config(path)))


# -- 4. id types that differ between files ---------------------------------------------


@pytest.mark.parametrize("statistics", [True, False], ids=["with-statistics", "without"])
def test_string_ids_in_one_partition_and_integers_in_another_are_refused(tmp_path,
                                                                         statistics):
    for key, ids in (("a", ["0", "1"]), ("b", [0, 2])):
        (tmp_path / f"p={key}").mkdir()
        pq.write_table(pa.table({"id": ids, "t": [0, 1], "x": [1.0, 2.0], "y": [1.0, 1.0]}),
                       tmp_path / f"p={key}" / "f.parquet", write_statistics=statistics)
    with pytest.raises(DataError, match=r"^source\.id_column 'id' is string in .*p=a/f\.parquet "
                                        r"but int64 in .*p=b/f\.parquet; every file must store "
                                        r"its ids as one kind"):
        Pipeline(_config(tmp_path))


def test_int32_and_int64_ids_in_different_files_are_one_kind(tmp_path):
    for name, kind in (("a", pa.int32()), ("b", pa.int64())):
        pq.write_table(pa.table({"id": pa.array([int(name == "b")] * 2, kind), "t": [0, 1],
                                 "x": [1.0, 2.0], "y": [1.0, 1.0]}), tmp_path / f"{name}.parquet")
    assert Pipeline(_config(tmp_path)).report.sequences == 2


# -- 9. what the footers show, at build time and in `seqpipe validate` -----------------


def _file_with(tmp_path, **columns):
    base = {"id": [1, 1, 2], "t": [0, 1, 0], "x": [1.0, 2.0, 3.0], "y": [1.0, 1.0, 1.0]}
    base.update(columns)
    return write(tmp_path / "d.parquet", pa.table(base))


FOOTER_CASES = [
    ({"id": pa.array([1, None, 2])},
     r"source\.id_column 'id' has 1 null values in .*d\.parquet \(row group 0, from its "
     r"footer\); every row needs one"),
    ({"t": pa.array([0, None, 0])},
     r"source\.time_column 't' has 1 null values in .*d\.parquet \(row group 0, from its "
     r"footer\)"),
    ({"x": pa.array([1, 2**25 + 1, 3], pa.int64())},
     r"column 'x' \(inputs\.steps\.columns\) holds the integer 33,554,433 in .*d\.parquet "
     r"\(row group 0, from its footer\), beyond 2\^24 = 16,777,216: float32.*cannot hold it "
     r"exactly\. Scale it \(set inputs\.steps\.normalize: seqpipe scales in float64 and "
     r"casts after"),
    ({"y": pa.array([1.0, 1e39, 2.0])},
     r"column 'y' \(outputs\.y\.column\) holds 1e\+39 in .*d\.parquet \(row group 0, from its "
     r"footer\), which overflows float32"),
]


@pytest.mark.parametrize("columns, message", FOOTER_CASES,
                         ids=["null-id", "null-time", "integer-beyond-2^24", "overflow"])
def test_footer_problems_are_build_time_errors_and_validate_reports_them(
        tmp_path, capsys, columns, message):
    path = _file_with(tmp_path, **columns)
    with pytest.raises(DataError, match=message):
        Pipeline(_config(path))
    config = tmp_path / "c.yaml"
    import yaml

    config.write_text(yaml.safe_dump(_config(path)))
    code, out, err = _cli(["validate", config], capsys)
    assert code == 2
    assert err.startswith("seqpipe: error: ") and "Traceback" not in err
    assert __import__("re").search(message, err)


@pytest.mark.parametrize("cache, message", [
    # grouped in memory: found when the values are read and cast
    (False, r"could not read .*d\.parquet.*: Integer value 33554433 not in range: -16777216 "
            r"to 16777216\. Its values do not fit the types the config reads them as"),
    # regrouped (a file without statistics does not stream): found in the copy's footers,
    # and the message names the source
    (True, r"column 'x' \(inputs\.steps\.columns\) holds the integer 33,554,433 in "
           r".*d\.parquet \(its regrouped copy, .*sorted\.parquet\) \(row group 0, from its "
           r"footer\), beyond 2\^24"),
], ids=["in memory", "regrouped"])
def test_an_integer_float32_cannot_hold_in_a_file_without_statistics_says_so(tmp_path, cache,
                                                                             message):
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"id": [1, 1, 2], "t": [0, 1, 0],
                             "x": pa.array([1, 2**25 + 1, 3], pa.int64()), "y": [1.0] * 3}),
                   path, write_statistics=False)
    config = _config(path)
    config["source"]["cache"] = cache
    with pytest.raises(DataError, match=message):
        _read_all(Pipeline(config))


def test_a_partition_key_used_as_a_feature_must_hold_numbers(tmp_path):
    for site, ids in (("abc", [1, 1]), ("2", [2, 2])):
        (tmp_path / f"site={site}").mkdir()
        write(tmp_path / f"site={site}" / "f.parquet",
              pa.table({"id": ids, "t": [0, 1], "x": [1.0, 2.0], "y": [1.0, 1.0]}))
    config = _config(tmp_path)
    config["inputs"]["steps"]["columns"] = ["x", "site"]
    with pytest.raises(DataError, match=r"^hive partition key 'site' \(inputs\.steps\.columns\) "
                                        r"is 'abc' in the folder of .*site=abc/f\.parquet; "
                                        r"inputs\.steps\.columns must be numeric"):
        Pipeline(config)


# -- 11. raw errors that are now one line ----------------------------------------------


def test_a_glob_that_matches_a_file_that_is_not_parquet_names_it(tmp_path, capsys):
    write(tmp_path / "b.parquet", pa.table({"id": [1], "t": [0], "x": [1.0], "y": [1.0]}))
    (tmp_path / "a.txt").write_text("not parquet")
    with pytest.raises(DataError, match=r"source\.path '.*/\*' matched .*a\.txt, which is not a "
                                        r"Parquet file \(.*\)\. Narrow the pattern"):
        Pipeline(_config(tmp_path / "*"))


def test_categorical_ids_whose_rows_need_sorting_sort_by_their_values(tmp_path):
    frame = pd.DataFrame({"id": pd.Categorical(["b", "a", "b", "c"], categories=["c", "b", "a"]),
                          "t": [1, 0, 0, 0], "x": [1.0, 2.0, 3.0, 4.0], "y": [1.0] * 4})
    pipeline = Pipeline(_config(None), data=frame)
    batches = list(pipeline.batches(0))
    assert [b.ids.tolist() for b in batches] == [["a", "b", "c"]]
    assert batches[0].x["steps"][1, :, 0].tolist() == [3.0, 1.0]  # b's rows in time order
    frame.to_parquet(tmp_path / "d.parquet")
    assert _read_all(Pipeline(_config(tmp_path / "d.parquet"))) == [["a", "b", "c"]]


# -- 12. accepted mistakes -------------------------------------------------------------


def test_a_finite_value_beyond_float32_in_memory_is_said_to_overflow():
    frame = pd.DataFrame({"id": [1, 1], "t": [0, 1], "x": [1.0, -1e39], "y": [1.0, 1.0]})
    with pytest.raises(DataError, match=r"column 'x' \(inputs\.steps\.columns\) holds -1e\+39 "
                                        r"in the in-memory data, which overflows float32"):
        Pipeline(_config(None), data=frame)


@pytest.mark.parametrize("layout", ["long", "nested"])
def test_a_label_column_that_is_entirely_null_is_warned_about(tmp_path, caplog, layout):
    table = _sorted(long_table([3, 4, 5]))
    table = table.set_column(table.schema.get_field_index("y"), "y",
                             pa.array([None] * table.num_rows, pa.float64()))
    if layout == "nested":
        table = nested_from_long(table)
    path = write(tmp_path / "d.parquet", table)
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        pipeline = Pipeline(_config(path, layout))
        _read_all(pipeline)
    said = [r.getMessage() for r in caplog.records if "every label" in r.getMessage()]
    assert said == ["seqpipe: outputs.y: every label in column 'y' is missing (null or NaN), "
                    "so every weight of that output is 0 and it teaches the model nothing. "
                    "Check the column, or drop the output."]


def test_a_label_fed_as_an_input_with_also_input_is_warned_about(tmp_path, caplog):
    path = write(tmp_path / "d.parquet", _sorted(long_table([3, 4])))
    config = _config(path)
    config["outputs"]["y"].update(column="x", also_input=True)
    with caplog.at_level(logging.WARNING, logger="seqpipe"):
        Pipeline(config)
    assert any(r.getMessage().startswith("seqpipe: outputs.y.column 'x' also feeds an input")
               for r in caplog.records)


# -- 10. value errors found while reading ----------------------------------------------


def _bad_values_file(tmp_path) -> str:
    """Row group 0: a repeated time and a NaN feature; row group 1: conflicting ages and
    an infinite label."""
    table = pa.table({"id": [1, 1, 2, 2, 3, 3, 4, 4], "t": [0, 0, 0, 1, 0, 1, 0, 1],
                      "x": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0],
                      "age": [1.0, 1.0, 2.0, 2.0, 4.0, 5.0, 6.0, 6.0],
                      "y": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, np.inf, 1.0]})
    return write(tmp_path / "d.parquet", table, row_group_size=4)


def _values_config(path) -> dict:
    config = _config(path)
    config["inputs"]["static"] = {"columns": ["age"], "level": "sequence"}
    return config


def test_a_value_error_while_training_is_logged_by_seqpipe_as_it_happens(tmp_path, caplog):
    dataset = build_dataset(_values_config(_bad_values_file(tmp_path)))
    with caplog.at_level(logging.ERROR, logger="seqpipe"):
        with pytest.raises(Exception, match=r"sequence 1 has two rows at time 0"):
            list(dataset)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert re_match(r"^seqpipe: error in epoch 0, while reading: sequence 1 has two rows at "
                    r"time 0 \(source\.time_column 't'\) in .*d\.parquet \(row group 0\)",
                    errors[0])


def re_match(pattern, text):
    import re

    return re.match(pattern, text) is not None


def test_validate_data_reports_every_problem_in_one_run(tmp_path, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_values_config(_bad_values_file(tmp_path))))
    code, out, err = _cli(["validate", config], capsys)
    assert code == 0 and "valid (read nothing but the config and the Parquet footers)" in out
    code, out, err = _cli(["validate", config, "--data"], capsys)
    assert code == 2
    assert err == ("seqpipe: error: 4 problems in the data, listed above; fix them and "
                   "validate again\n")
    problems = [line for line in out.splitlines() if line.startswith("  problem: ")]
    expected = [
        r"sequence 1 has two rows at time 0 .* in .*d\.parquet \(row group 0\).*1 repeated",
        r"inputs\.steps: 1 NaN, null or infinite values in 1 rows of .*d\.parquet \(row group 0\)",
        r"column 'age' .* has two different values in sequence 3 of .*d\.parquet \(row group 1\)"
        r": 4 and 5.*1 sequences conflict",
        r"outputs\.y: column 'y' has 1 infinite labels in .*d\.parquet \(row group 1\)",
    ]
    assert len(problems) == len(expected)
    for line, pattern in zip(problems, expected):
        assert re_match(r"  problem: " + pattern, line), line
    assert "data: read every value of 2 row groups, 8 rows, a row group at a time" in out


def test_validate_data_finds_a_corrupt_page_and_passes_clean_data(tmp_path, capsys):
    import yaml

    table = pa.table({"id": np.repeat(np.arange(10), 10), "t": np.tile(np.arange(10), 10),
                      "x": np.arange(100, dtype=np.float64) + 0.5, "y": np.ones(100)})
    path = str(tmp_path / "crc.parquet")
    pq.write_table(table, path, write_page_checksum=True, compression="NONE")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(path)))
    code, out, _ = _cli(["validate", config, "--data"], capsys)
    assert code == 0 and out.rstrip().endswith("valid (read every value)")
    _corrupt_page(path, 42.5)
    code, out, err = _cli(["validate", config, "--data"], capsys)
    assert code == 2 and "1 problem in the data" in err
    assert re_match(r"(?s).*  problem: could not read .*crc\.parquet \(row group 0\): .*CRC "
                    r"checksum verification failed", out)


def test_validate_data_does_not_import_tensorflow(tmp_path):
    import subprocess
    import sys

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_values_config(_bad_values_file(tmp_path))))
    code = ("import sys; from seqpipe.cli import main; main(['validate', sys.argv[1], "
            "'--data']); assert 'tensorflow' not in sys.modules, 'imported tensorflow'")
    result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                            text=True, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("layout", ["long", "nested"])
def test_float16_features_and_labels_are_read_as_float32(tmp_path, capsys, layout):
    table = long_table([3, 5, 2], label_missing=0.3)
    for name in ("x", "y"):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 table[name].cast(pa.float16()))
    stored = nested_from_long(table) if layout == "nested" else table
    if layout == "nested":
        stored = stored.cast(pa.schema([f if f.name not in ("x", "y") else
                                        pa.field(f.name, pa.list_(pa.float16()))
                                        for f in stored.schema]))
    path = write(tmp_path / "half.parquet", stored)
    raw = _config(path, layout)
    pipeline = Pipeline(raw)
    frame = table.to_pandas().sort_values(["id", "t"])
    for batch in pipeline.batches():
        for r, (i, n) in enumerate(zip(batch.ids, batch.lengths)):
            rows = frame[frame.id == i]
            np.testing.assert_array_equal(batch.x["steps"][r, :n, 0],
                                          rows.x.to_numpy(np.float32))
            present = rows.y.notna().to_numpy()
            np.testing.assert_array_equal(batch.y["y"][r, :n, 0][present],
                                          rows.y.to_numpy(np.float32)[present])
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(pipeline.config.to_dict()))
    assert main(["validate", str(tmp_path / "c.yaml"), "--data"]) == 0
    assert "halffloat" in capsys.readouterr().out
