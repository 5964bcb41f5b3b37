"""Grouping rows into sequences, ordering them, and the missing-value rules."""

import numpy as np
import pyarrow as pa
import pytest

from seqpipe import DataError, Pipeline, build_dataset, load_config
from tests.helpers import STEP, base_config, long_table, nested_from_long, raw_sequences, write


def _replaced(table: pa.Table, column: str, values) -> pa.Table:
    """`table` with `column` replaced by `values` (a list or an Arrow array)."""
    values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return table.set_column(table.schema.get_field_index(column), column, values)


def _batches(pipeline, epoch=0):
    return list(pipeline.batches(epoch))


def _assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a.ids, b.ids)
        for part in ("x", "y", "sample_weight"):
            for name in getattr(a, part):
                np.testing.assert_array_equal(getattr(a, part)[name], getattr(b, part)[name])


def test_shuffled_rows_over_row_groups_and_files_give_the_sorted_files_batches(tmp_path):
    lengths = np.random.default_rng(3).integers(1, 30, 40)
    shuffled = long_table(lengths, seed=3)
    order = np.lexsort((shuffled["t"].to_numpy(), shuffled["id"].to_numpy().astype(str)))
    sorted_path = write(tmp_path / "sorted.parquet", shuffled.take(order), row_group_size=1000)
    (tmp_path / "parts").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(shuffled.num_rows), 4)):
        write(tmp_path / "parts" / f"p{i}.parquet", shuffled.take(rows), row_group_size=5)
    overrides = {"shuffle.buffer_size": 16, "shuffle.seed": 7,
                 "batching.bucket_boundaries": "auto", "padding.maxlen": 20}
    expected = Pipeline(load_config(base_config(sorted_path), overrides))
    got = Pipeline(load_config(base_config(str(tmp_path / "parts")), overrides))
    for epoch in (0, 1):
        _assert_batches_equal(_batches(expected, epoch), _batches(got, epoch))


def test_nested_layout_gives_the_same_batches_as_long(lengths):
    table = long_table(lengths)
    long = Pipeline(base_config(None), table)
    nested = Pipeline(base_config(None, layout="nested"), nested_from_long(table))
    _assert_batches_equal(_batches(long), _batches(nested))


def test_nested_time_column_orders_timesteps_within_each_sequence(lengths):
    nested = nested_from_long(long_table(lengths))
    reversed_lists = {c: pa.array([v[::-1] for v in nested[c].to_pylist()])
                      for c in ("t", "code", "x", "y")}
    for column, values in reversed_lists.items():
        nested = _replaced(nested, column, values)
    pipeline = Pipeline(base_config(None, layout="nested"), nested)
    expected = raw_sequences(long_table(lengths))
    codes = pipeline.sequences.features["steps"][:, 0]
    for i, key in enumerate(pipeline.sequences.ids):
        a, b = pipeline.sequences.offsets[i:i + 2]
        np.testing.assert_array_equal(codes[a:b], expected[key][0])


def test_without_time_column_rows_keep_source_order(lengths):
    table = long_table(lengths, shuffle_rows=False)
    config = load_config(base_config(None), {"source.time_column": None})
    codes = Pipeline(config, table).sequences.features["steps"][:, 0]
    np.testing.assert_array_equal(codes, table["code"].to_numpy())


def test_nested_without_id_keeps_row_order():
    nested = nested_from_long(long_table([3, 1, 2])).drop_columns(["id"])
    config = load_config(base_config(None, layout="nested"), {"source.id_column": None})
    pipeline = Pipeline(config, nested)
    assert pipeline.sequences.ids.tolist() == [0, 1, 2]
    assert pipeline.sequences.lengths.tolist() == [3, 1, 2]


def test_per_sequence_values_may_be_missing_on_some_rows():
    table = long_table([4, 3], outcome_missing=0.0, shuffle_rows=False).to_pandas()
    table.loc[[0, 2], "died"] = np.nan  # the label is only on some rows of s000
    table.loc[4:, "died"] = np.nan  # and on no row of s001
    pipeline = Pipeline(base_config(None), table)
    assert pipeline.sequences.present["died"].tolist() == [True, False]
    assert pipeline.sequences.labels["died"][0] == table.loc[1, "died"]


def test_conflicting_per_sequence_labels_name_sequence_and_column():
    table = long_table([4, 3, 5], outcome_missing=0.0, shuffle_rows=False).to_pandas()
    table.loc[8, "died"] = 1 - table.loc[7, "died"]  # s002 gets both 0 and 1
    with pytest.raises(DataError, match=r"column 'died' \(outputs\.died\.column, level: "
                                        r"sequence\) has two different values in sequence "
                                        r"'s002' of the in-memory data: 0 and 1\. .*1 sequences "
                                        r"conflict"):
        build_dataset(base_config(None), table)


def test_repeated_time_in_a_sequence():
    table = long_table([4, 3], shuffle_rows=False).to_pandas()
    table.loc[1, "t"] = table.loc[0, "t"]
    with pytest.raises(DataError, match=r"sequence 's000' has two rows at time 0 "
                                        r"\(source\.time_column 't'\).*1 repeated \(id, time\) "
                                        r"pairs in all"):
        Pipeline(base_config(None), table)


def test_null_ids_and_times():
    table = long_table([4, 3]).to_pandas()
    table.loc[2, "id"] = None
    with pytest.raises(DataError, match=r"source\.id_column 'id' has 1 null values in the "
                                        r"in-memory data; every row needs one"):
        Pipeline(base_config(None), table)
    table = long_table([4, 3])
    times = table["t"].to_numpy().astype(float)
    times[1] = np.nan  # a NaN, not a null: it would otherwise sort silently to the end
    table = table.set_column(1, "t", pa.array(times, from_pandas=False))
    with pytest.raises(DataError, match=r"source\.time_column 't' has 1 null or NaN values"):
        Pipeline(base_config(None), table)


def test_no_rows_is_an_error(tmp_path):
    path = write(tmp_path / "empty.parquet", long_table([3]).slice(0, 0))
    with pytest.raises(DataError, match=r"no sequences: .*empty\.parquet has no rows"):
        build_dataset(base_config(path))


def test_nan_features_are_an_error_naming_column_and_rows():
    table = long_table([4, 3, 5]).to_pandas()
    table.loc[[0, 3, 5], "x"] = np.nan
    table.loc[3, "code"] = np.inf
    with pytest.raises(DataError, match=r"inputs\.steps: 4 NaN, null or infinite values in 3 "
                                        r"rows of the in-memory data \(column 'code': 1, "
                                        r"column 'x': 3\).*Set inputs\.steps\.fill_value"):
        build_dataset(base_config(None), table)


def test_fill_value_replaces_and_counts_bad_features():
    table = long_table([4, 3, 5], shuffle_rows=False).to_pandas()
    table.loc[[0, 3, 5], "x"] = np.nan
    table.loc[1, "age"] = np.nan  # one row of s000 lacks its age: fine, others have it
    table.loc[4:6, "age"] = np.nan  # s001 has no age at all
    config = base_config(None)
    config["inputs"]["steps"]["fill_value"] = {"x": -1.0}
    config["inputs"]["static"]["fill_value"] = 50.0
    pipeline = Pipeline(config, table)
    x = pipeline.sequences.features["steps"][:, 1]
    assert (x[[0, 3, 5]] == -1).all() and np.isfinite(x).all()
    assert pipeline.sequences.features["static"][:, 0].tolist() == [40.0, 50.0, 42.0]
    assert pipeline.report.filled_values == {"inputs.steps.x": 3, "inputs.static.age": 1}
    assert "filled 4 NaN/null/infinite feature values" in "; ".join(pipeline.report.changes())


def test_a_column_left_out_of_fill_value_still_errors():
    table = long_table([4, 3]).to_pandas()
    table.loc[0, "code"] = np.nan
    config = base_config(None)
    config["inputs"]["steps"]["fill_value"] = {"x": 0.0}
    with pytest.raises(DataError, match=r"inputs\.steps: 1 NaN.*\(column 'code': 1\)"):
        Pipeline(config, table)


def test_missing_labels_are_filled_finite_and_marked():
    table = long_table([6, 4], label_missing=0.5, shuffle_rows=False)
    config = base_config(None)
    config["outputs"]["y"]["fill_value"] = -5.0
    sequences = Pipeline(config, table).sequences
    missing = np.isnan(table["y"].to_numpy())
    assert (sequences.present["y"] == ~missing).all()
    assert (sequences.labels["y"][missing] == -5.0).all()
    assert np.isfinite(sequences.labels["died"]).all()


def test_infinite_labels_are_an_error():
    table = long_table([4, 3]).to_pandas()
    table.loc[2, "y"] = -np.inf
    with pytest.raises(DataError, match=r"outputs\.y: column 'y' has 1 infinite labels in the "
                                        r"in-memory data \(or values beyond float32's range\); a label must "
                                        r"be finite, or null/NaN"):
        Pipeline(base_config(None), table)


def test_nested_list_length_mismatch():
    nested = nested_from_long(long_table([3, 4]))
    xs = nested["x"].to_pylist()
    xs[1] = xs[1][:-1]
    nested = _replaced(nested, "x", xs)
    with pytest.raises(DataError, match=r"sequence 's001' in the in-memory data has 3 values in "
                                        r"column 'x' \(inputs\.steps\.columns\) but 4 in 'code'"):
        build_dataset(base_config(None, layout="nested"), nested)


def test_nested_repeated_ids():
    nested = nested_from_long(long_table([3, 4]))
    nested = pa.concat_tables([nested, nested.slice(0, 1)])
    with pytest.raises(DataError, match=r"sequence id 's000' \(source\.id_column 'id'\) appears "
                                        r"in more than one row.*Use source\.layout: long"):
        Pipeline(base_config(None, layout="nested"), nested)


def test_nested_null_lists():
    nested = nested_from_long(long_table([3, 4], label_missing=0.0))
    ys = nested["y"].to_pylist()
    ys[0] = None  # a null label list: every label of s000 is missing
    labelled = _replaced(nested, "y", ys)
    pipeline = Pipeline(base_config(None, layout="nested"), labelled)
    assert pipeline.sequences.present["y"].tolist() == [False] * 3 + [True] * 4
    xs = nested["x"].to_pylist()
    xs[1] = None
    broken = _replaced(nested, "x", xs)
    with pytest.raises(DataError, match=r"column 'x' \(inputs\.steps\.columns\) is null instead "
                                        r"of a list in 1 rows of the in-memory data, first in "
                                        r"sequence 's001'"):
        Pipeline(base_config(None, layout="nested"), broken)


def test_nested_empty_sequences_are_dropped_and_counted():
    nested = nested_from_long(long_table([3, 4, 2]))
    empty = {c: (nested[c].to_pylist()[:1] + [[]] + nested[c].to_pylist()[2:])
             for c in ("t", "code", "x", "y")}
    for column, values in empty.items():
        nested = _replaced(nested, column, values)
    pipeline = Pipeline(base_config(None, layout="nested"), nested)
    assert pipeline.sequences.ids.tolist() == ["s000", "s002"]
    assert pipeline.sequences.features["static"][:, 0].tolist() == [40.0, 42.0]
    assert pipeline.report.empty_sequences_dropped == 1
    assert "dropped 1 empty sequences" in pipeline.report.changes()


def test_features_hold_the_source_values():
    table = long_table([3, 2], shuffle_rows=False)
    sequences = Pipeline(base_config(None), table).sequences
    np.testing.assert_array_equal(sequences.features["steps"][:, 0],
                                  [0, 1, 2, STEP, STEP + 1])
    np.testing.assert_allclose(sequences.features["steps"][:, 1], table["x"].to_numpy(),
                               rtol=1e-6)


def test_nested_null_list_in_the_column_that_fixes_the_length():
    nested = nested_from_long(long_table([3, 4]))
    codes = nested["code"].to_pylist()
    codes[0] = None
    nested = _replaced(nested, "code", codes)
    with pytest.raises(DataError, match=r"column 'code' \(inputs\.steps\.columns\) is null "
                                        r"instead of a list in 1 rows of the in-memory data, "
                                        r"first in sequence 's000'"):
        Pipeline(base_config(None, layout="nested"), nested)


def test_nested_data_whose_sequences_are_all_empty():
    nested = nested_from_long(long_table([3, 4]))
    for column in ("t", "code", "x", "y"):
        nested = _replaced(nested, column, pa.array([[], []], pa.list_(pa.float64())))
    with pytest.raises(DataError, match=r"no sequences: every sequence in the in-memory data "
                                        r"is empty"):
        Pipeline(base_config(None, layout="nested"), nested)
