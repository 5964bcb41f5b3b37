"""Reading: files, directories, hive partitions and globs, checked against pyarrow."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from seqpipe import DataError, Pipeline, SourceNotFoundError, build_dataset, load_config
from seqpipe.parquet.source import read_source
from tests.helpers import base_config, long_table, raw_sequences, write


def _codes_by_id(pipeline):
    sequences = pipeline.sequences
    codes = sequences.features["steps"][:, 0]
    return {str(i): codes[a:b] for i, a, b in
            zip(sequences.ids, sequences.offsets[:-1], sequences.offsets[1:])}


def _assert_same_sequences(pipeline, table):
    expected = raw_sequences(table)
    got = _codes_by_id(pipeline)
    assert list(got) == sorted(expected)
    for key, (codes, _) in expected.items():
        np.testing.assert_array_equal(got[key], codes)


def test_one_file_matches_pyarrow(tmp_path, lengths):
    table = long_table(lengths)
    path = write(tmp_path / "d.parquet", table)
    pipeline = Pipeline(base_config(path))
    _assert_same_sequences(pipeline, pq.read_table(path))
    assert pipeline.report.rows == sum(lengths)
    assert pipeline.report.sequences == len(lengths)


def test_directory_glob_and_hive_partitions_read_the_same(tmp_path, lengths):
    table = long_table(lengths)
    parts = np.array_split(np.arange(table.num_rows), 3)
    (tmp_path / "dir").mkdir()
    for i, rows in enumerate(parts):
        write(tmp_path / "dir" / f"part-{i}.parquet", table.take(rows), row_group_size=3)
    hive = tmp_path / "hive"
    for i, rows in enumerate(parts):
        (hive / f"shard={i}").mkdir(parents=True)
        write(hive / f"shard={i}" / "data.parquet", table.take(rows))
    for path in [tmp_path / "dir", tmp_path / "dir" / "*.parquet", hive]:
        pipeline = Pipeline(base_config(str(path)))
        _assert_same_sequences(pipeline, table)
    assert Pipeline(base_config(str(tmp_path / "dir"))).report.files == 3


def test_a_uri_source_reads_what_the_local_path_reads(tmp_path, lengths):
    """source.path may be any URI pyarrow knows (gs://, s3://, hdfs://); file:// is the one
    a test can use without a network. A file, a folder and hive partitions, streamed and
    grouped whole, give the sequences pyarrow reads."""
    table = long_table(lengths)
    sorted_rows = table.sort_by([("id", "ascending"), ("t", "ascending")])
    write(tmp_path / "sorted.parquet", sorted_rows, row_group_size=10)
    for i, rows in enumerate(np.array_split(np.arange(table.num_rows), 2)):
        (tmp_path / "hive" / f"shard={i}").mkdir(parents=True)
        write(tmp_path / "hive" / f"shard={i}" / "d.parquet", table.take(rows))
    for local in [tmp_path / "sorted.parquet", tmp_path / "hive"]:
        pipeline = Pipeline(base_config(f"file://{local}"))
        _assert_same_sequences(pipeline, table)
        assert pipeline.report.streamed  # the hive folder through its regrouped copy
        assert ("regrouped copy" in str(pipeline.report)) == (local.name == "hive")
        batches = [b[0]["steps"].numpy() for b in build_dataset(base_config(f"file://{local}"))]
        expected = [b[0]["steps"].numpy() for b in build_dataset(base_config(str(local)))]
        assert len(batches) == len(expected)
        for a, b in zip(batches, expected):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("uri, message", [
    ("file:///no/such/folder", "source.path 'file:///no/such/folder' does not exist"),
    ("nosuchscheme://bucket/data", "source.path 'nosuchscheme://bucket/data': pyarrow cannot "
                                   "open this URI: "),
    ("file:///data/*.parquet", "glob patterns work on local paths only; give the folder"),
])
def test_a_uri_that_cannot_be_read_says_why(uri, message):
    with pytest.raises(SourceNotFoundError) as raised:
        Pipeline(base_config(uri))
    assert message in str(raised.value)


def test_hive_partition_column_can_be_an_input(tmp_path, lengths):
    table = long_table(lengths)
    for shard in (1, 2):
        rows = [i for i, key in enumerate(table["id"].to_pylist()) if hash(key) % 2 == shard - 1]
        (tmp_path / f"ward={shard}").mkdir()
        write(tmp_path / f"ward={shard}" / "d.parquet", table.take(rows))
    config = base_config(str(tmp_path))
    config["inputs"]["static"]["columns"] = ["age", "ward"]
    pipeline = Pipeline(config)
    assert set(np.unique(pipeline.sequences.features["static"][:, 1])) <= {1.0, 2.0}


def test_in_memory_dataframe_and_table_equal_the_file(tmp_path, lengths):
    table = long_table(lengths)
    path = write(tmp_path / "d.parquet", table)
    from_file = list(Pipeline(base_config(path)).batches())
    for data in (table, table.to_pandas()):
        from_memory = list(Pipeline(base_config(None), data).batches())
        assert len(from_memory) == len(from_file)
        for a, b in zip(from_file, from_memory):
            np.testing.assert_array_equal(a.x["steps"], b.x["steps"])
            np.testing.assert_array_equal(a.sample_weight["y"], b.sample_weight["y"])


def test_files_with_different_numeric_types_are_unified(tmp_path):
    first = long_table([3, 2], seed=1)
    second = long_table([4], seed=2).to_pandas()
    second["id"] = "s900"
    second["code"] = second["code"].astype(np.int64)
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "a.parquet", first)
    write(tmp_path / "d" / "b.parquet", pa.Table.from_pandas(second, preserve_index=False))
    pipeline = Pipeline(base_config(str(tmp_path / "d")))
    assert pipeline.sequences.features["steps"].dtype == np.float32
    assert list(pipeline.sequences.ids) == ["s000", "s001", "s900"]


@pytest.mark.parametrize("path, message", [
    ("missing.parquet", r"source\.path '.*missing\.parquet' does not exist \(relative paths "
                        r"are relative to the working directory"),
    ("*.nothing", r"source\.path '.*\*\.nothing' matched no files"),
    ("empty_dir", r"source\.path '.*empty_dir' is a directory with no Parquet files"),
])
def test_missing_sources(tmp_path, path, message):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SourceNotFoundError, match=message):
        build_dataset(base_config(str(tmp_path / path)))


def test_no_path_and_no_data():
    with pytest.raises(DataError, match=r"source\.path is not set and no in-memory data was "
                                        r"passed"):
        Pipeline(base_config(None))


def test_not_a_parquet_file(tmp_path):
    bad = tmp_path / "notes.parquet"
    bad.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.parquet' is not readable as Parquet.*Is this a 'parquet' file"):
        Pipeline(base_config(str(bad)))


def test_missing_column_names_column_key_file_and_existing_columns(tmp_path, lengths):
    table = long_table(lengths)
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "part-0.parquet", table)
    write(tmp_path / "d" / "part-3.parquet", table.drop_columns(["x"]))
    with pytest.raises(DataError, match=r"column 'x' \(inputs\.steps\.columns\) not found in "
                                        r".*part-3\.parquet; it has columns: id, t, code, y, "
                                        r"died, age"):
        build_dataset(base_config(str(tmp_path / "d")))


def test_missing_column_in_memory(lengths):
    with pytest.raises(DataError, match=r"column 'died' \(outputs\.died\.column\) not found in "
                                        r"the in-memory data"):
        Pipeline(base_config(None), long_table(lengths).drop_columns(["died"]))


def test_non_numeric_input_column(tmp_path, lengths):
    table = long_table(lengths)
    table = table.set_column(3, "x", pa.array([str(v) for v in table["x"].to_pylist()]))
    path = write(tmp_path / "part-3.parquet", table)
    with pytest.raises(DataError, match=r"column 'x' in .*part-3\.parquet is string; "
                                        r"inputs\.steps\.columns must be numeric"):
        build_dataset(base_config(path))


def test_time_column_must_be_orderable(tmp_path, lengths):
    table = long_table(lengths)
    table = table.set_column(1, "t", pa.array([str(v) for v in table["t"].to_pylist()]))
    with pytest.raises(DataError, match=r"column 't' in the in-memory data is string; "
                                        r"source\.time_column must be numeric, a date or a "
                                        r"timestamp"):
        Pipeline(base_config(None), table)


def _codes_in_id_order(table: pa.Table) -> list:
    return [codes.tolist() for _, (codes, _) in sorted(raw_sequences(table).items())]


def _streamed_codes(pipeline) -> list:
    codes = []
    for _, chunk in pipeline.chunks():
        steps = chunk.features["steps"]  # a tuple of columns streamed, a matrix whole
        column = steps[0] if isinstance(steps, tuple) else steps[:, 0]
        codes += [column[a:b].tolist() for a, b in zip(chunk.offsets[:-1], chunk.offsets[1:])]
    return codes


ID_TYPES = [pa.string(), pa.large_string(), pa.int32(), pa.int64(), pa.uint16(),
            pa.float64(), pa.date32(), pa.timestamp("ms", tz="UTC")]


@pytest.mark.parametrize("id_type", ID_TYPES, ids=str)
def test_every_id_type_groups_each_sequences_rows(tmp_path, lengths, id_type):
    """Numbers and times take the compiled pass over the ids, strings Arrow's kernels; both
    streamed from a file (sorted by id, each sequence's rows out of time order) and grouped
    whole from memory (rows shuffled)."""
    table = long_table(lengths)
    numbers = pa.array([int(key[1:]) for key in table["id"].to_pylist()], pa.int32())
    ids = (table["id"].cast(id_type) if pa.types.is_string(id_type) or
           pa.types.is_large_string(id_type) else numbers.cast(
               pa.int64() if pa.types.is_timestamp(id_type) else id_type
               if not pa.types.is_date(id_type) else pa.int32()).cast(id_type))
    table = table.set_column(0, "id", ids)
    expected = _codes_in_id_order(table)
    assert _streamed_codes(Pipeline(base_config(None), table)) == expected
    by_id = table.sort_by([("id", "ascending")])  # stable: times stay out of order
    path = write(tmp_path / "d.parquet", by_id, row_group_size=20)
    streamed = Pipeline(base_config(path))
    assert streamed.report.streamed
    assert _streamed_codes(streamed) == expected


TIME_TYPES = [pa.int32(), pa.float16(), pa.float64(), pa.date32(), pa.timestamp("s", tz="UTC"),
              pa.duration("s"), pa.time32("s")]


@pytest.mark.parametrize("time_type", TIME_TYPES, ids=str)
def test_every_time_type_orders_timesteps(tmp_path, lengths, time_type):
    table = long_table(lengths)
    order = pc.sort_indices(table, [("id", "ascending"), ("t", "ascending")])
    through = pa.int64() if time_type.bit_width == 64 else pa.int32()
    times = table["t"].cast(through).cast(time_type) if not pa.types.is_floating(
        time_type) else table["t"].cast(time_type)
    table = table.set_column(1, "t", times)
    expected = _codes_in_id_order(table)
    path = write(tmp_path / "d.parquet", table.sort_by([("id", "ascending")]), 20)
    assert _streamed_codes(Pipeline(base_config(path))) == expected
    assert _streamed_codes(Pipeline(base_config(None), table)) == expected
    in_order = table.take(order)  # Arrow cannot sort float16 itself
    times = in_order["t"].combine_chunks()
    twice = pa.concat_arrays([times[:1], times[:1], times[2:]])  # sequence s000's first two
    with pytest.raises(DataError, match=r"sequence 's000' has two rows at time"):
        Pipeline(base_config(None), in_order.set_column(1, "t", twice))


def test_an_interval_is_not_a_time_column(lengths):
    table = long_table(lengths)
    intervals = pa.array([(0, 0, v) for v in table["t"].to_pylist()],
                         pa.month_day_nano_interval())
    with pytest.raises(DataError, match=r"column 't' in the in-memory data is "
                                        r"month_day_nano_interval; source\.time_column must "
                                        r"be numeric, a date or a timestamp"):
        Pipeline(base_config(None), table.set_column(1, "t", intervals))


def test_timestamp_time_column_orders_timesteps(lengths):
    table = long_table(lengths)
    times = pd.to_datetime(table["t"].to_numpy(), unit="h")
    table = table.set_column(1, "t", pa.array(times))
    pipeline = Pipeline(base_config(None), table)
    _assert_same_sequences(pipeline, long_table(lengths))


def test_nested_list_column_must_be_a_list(lengths):
    with pytest.raises(DataError, match=r"column 'code' in the in-memory data is double; "
                                        r"inputs\.steps\.columns must be a list of numbers in "
                                        r"the nested layout"):
        Pipeline(load_config(base_config(None, layout="nested"), {"source.time_column": None}),
                 long_table(lengths))


def test_data_of_the_wrong_type():
    with pytest.raises(DataError, match=r"data must be a pandas DataFrame or a pyarrow Table; "
                                        r"got list"):
        read_source(load_config(base_config(None)), [1, 2])


def test_without_time_column_timesteps_follow_file_names_then_rows(tmp_path):
    table = long_table([6, 5], shuffle_rows=False)
    (tmp_path / "d").mkdir()
    for name, rows in [("b.parquet", [3, 4, 5, 9, 10]), ("a.parquet", [0, 1, 2, 6, 7, 8])]:
        write(tmp_path / "d" / name, table.take(rows), row_group_size=2)
    config = load_config(base_config(str(tmp_path / "d")), {"source.time_column": None})
    codes = Pipeline(config).sequences.features["steps"][:, 0]
    np.testing.assert_array_equal(codes, table["code"].to_numpy())


def test_a_broken_file_in_a_directory_is_named(tmp_path, lengths):
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "a.parquet", long_table(lengths))
    (tmp_path / "d" / "b.parquet").write_text("junk")
    with pytest.raises(DataError, match=r"d/b\.parquet is not a readable Parquet file"):
        build_dataset(base_config(str(tmp_path / "d")))
