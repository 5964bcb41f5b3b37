"""Train/validation/test split by sequence id: one part per id, whatever the file layout."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from seqpipe import ConfigError, DataError, Pipeline, build_dataset, load_config
from seqpipe.config import SplitConfig
from seqpipe.split import part_of
from tests.helpers import base_config, long_table, nested_from_long, scatter, write

SPLIT = {"validation": 0.2, "test": 0.1, "seed": 7}


def _ids_by_part(config, **kwargs):
    found = {}
    for part in ("train", "validation", "test"):
        pipeline = Pipeline(config, split=part, **kwargs)
        found[part] = [i for b in pipeline.batches(0) for i in b.ids.tolist()]
    return found


@pytest.fixture
def table():
    rng = np.random.default_rng(3)
    return long_table(rng.integers(1, 12, 600), seed=3, shuffle_rows=True)


def test_every_sequence_is_in_exactly_one_part_whatever_the_layout(tmp_path, table):
    every = set(pc.unique(table["id"]).to_pylist())
    # Layout 1: one file, rows sorted by id (streamed by row group).
    one = write(tmp_path / "sorted.parquet", table.sort_by([("id", "ascending"), ("t", "ascending")]),
                row_group_size=500)
    # Layout 2: rows shuffled and dealt at random over three files (grouped whole).
    folder = scatter(table, tmp_path / "scattered")
    layouts = [_ids_by_part(base_config(str(path), split=SPLIT, shuffle={"buffer_size": 64,
                                                                          "seed": 1}))
               for path in (one, folder)]
    for found in layouts:
        parts = [set(ids) for ids in found.values()]
        assert sum(len(ids) for ids in found.values()) == len(every)  # no id twice
        assert set.union(*parts) == every
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert {p: set(ids) for p, ids in layouts[0].items()} == \
        {p: set(ids) for p, ids in layouts[1].items()}
    shares = {p: len(ids) / len(every) for p, ids in layouts[0].items()}
    assert shares["validation"] == pytest.approx(0.2, abs=0.05)
    assert shares["test"] == pytest.approx(0.1, abs=0.04)


def test_a_part_is_batched_as_if_it_were_the_whole_source(table):
    """A part's batches depend only on its own sequences: the same config over a table
    holding only that part's rows gives the same batches."""
    config = base_config(split=SPLIT, shuffle={"buffer_size": 50, "seed": 4},
                         batching={"batch_size": 4, "bucket_boundaries": "auto"})
    ids = pc.unique(table["id"])
    train_ids = pc.filter(ids, pa.array(part_of(ids, load_config(config).split) == 0))
    alone = table.filter(pc.is_in(table["id"], train_ids))
    without_split = {k: v for k, v in config.items() if k != "split"}
    for epoch in (0, 1):
        got = list(Pipeline(config, data=table, split="train").batches(epoch))
        want = list(Pipeline(without_split, data=alone).batches(epoch))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.ids.tolist() == b.ids.tolist()
            np.testing.assert_array_equal(a.x["steps"], b.x["steps"])
            for name in ("y", "died"):
                np.testing.assert_array_equal(a.sample_weight[name], b.sample_weight[name])


def test_the_part_of_an_id_does_not_depend_on_its_column_type_or_neighbours():
    split = SplitConfig(validation=0.3, test=0.3, seed=2)
    ints = np.arange(1000)
    assert (part_of(pa.array(ints, pa.int32()), split)
            == part_of(pa.array(ints, pa.int64()), split)).all()
    names = pa.array([f"patient-{i}" for i in ints])
    assert (part_of(names.slice(100, 50), split) == part_of(names, split)[100:150]).all()
    assert (part_of(names.cast(pa.large_string()), split) == part_of(names, split)).all()
    assert not (part_of(names, split) == part_of(names, SplitConfig(0.3, 0.3, 3))).all()
    # Raising validation only moves sequences out of train; test does not change.
    wider = part_of(names, SplitConfig(validation=0.5, test=0.3, seed=2))
    narrow = part_of(names, split)
    assert ((narrow == 2) == (wider == 2)).all() and (wider[narrow == 1] == 1).all()


def test_build_dataset_reads_only_its_part(table):
    config = base_config(split=SPLIT)
    pipeline = Pipeline(config, data=table, split="validation")
    sizes = [int(b[0]["steps"].shape[0]) for b in build_dataset(pipeline)]
    assert sum(sizes) == pipeline.report.sequences < pipeline.report.source_sequences
    assert len(sizes) == pipeline.report.batches_per_epoch
    assert "split 'validation'" in str(pipeline.report)


@pytest.mark.parametrize("config, split, message", [
    (base_config(split=SPLIT), None, r"the config splits the data .* say which part to read: "
                                     r"split='train', 'validation' or 'test'"),
    (base_config(), "train", r"split='train' asks for one part of the data, but the config "
                             r"has no split"),
    (base_config(split=SPLIT), "dev", r"split must be one of 'train', 'validation', 'test'; "
                                      r"got 'dev'"),
    (base_config(split={"validation": 0.2}), "test", r"split='test' is empty: split.test is 0"),
])
def test_asking_for_a_part_the_config_does_not_make_is_an_error(table, config, split, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline(config, data=table, split=split)


@pytest.mark.parametrize("split, message", [
    ({"validation": 0.6, "test": 0.4}, r"split.validation \+ split.test must be below 1"),
    ({"test": 1.5}, r"split.test must be a number in \[0, 1\); got 1.5"),
    ({"seed": -1}, r"split.seed must be an integer >= 0; got -1"),
])
def test_bad_split_config_is_an_error(split, message):
    with pytest.raises(ConfigError, match=message):
        load_config(base_config(split=split))


def test_split_needs_an_id_column():
    config = base_config(layout="nested", split=SPLIT)
    config["source"] = {"layout": "nested"}
    with pytest.raises(ConfigError, match="split needs source.id_column"):
        load_config(config)


def test_a_part_that_gets_no_sequence_is_an_error():
    table = long_table([3, 4, 5])
    with pytest.raises(DataError, match=r"split 'test' holds none of the 3 sequences in the "
                                        r"in-memory data; raise split.test or use more data"):
        Pipeline(base_config(split={"test": 0.001, "seed": 0}), data=table, split="test")


def test_ids_of_a_type_that_cannot_be_hashed_are_an_error():
    table = long_table([3, 4])
    table = table.set_column(0, "id", pc.equal(table["id"], "s000"))  # True or False
    with pytest.raises(DataError, match=r"split needs sequence ids that are integers, strings, "
                                        r"floats, dates or timestamps; source.id_column has "
                                        r"type bool"):
        Pipeline(base_config(split=SPLIT), data=table, split="train")


def _with_parts(frame, seed=0):
    """Each sequence's part, repeated on its rows, in a column of its own."""
    rng = np.random.default_rng(seed)
    ids = sorted(frame["id"].unique())
    chosen = dict(zip(ids, rng.choice(["train", "validation", "test"], len(ids),
                                      p=[0.6, 0.25, 0.15])))
    return frame.assign(part=frame["id"].map(chosen)), chosen


@pytest.mark.parametrize("layout", ["long", "nested", "in-memory"])
def test_split_column_reads_each_sequences_part_as_pandas_sees_it(tmp_path, layout):
    frame, chosen = _with_parts(long_table([3, 5, 2, 7, 4, 6, 1, 8, 3, 5, 2, 9, 4, 3, 6],
                                           seed=2).to_pandas())
    table = pa.Table.from_pandas(frame, preserve_index=False)
    raw = base_config(None, layout="nested" if layout == "nested" else "long",
                      split={"column": "part"})
    if layout == "nested":
        nested = nested_from_long(table)
        parts = frame.groupby("id")["part"].first()
        table = nested.append_column("part", pa.array(parts[nested["id"].to_pylist()].tolist()))
    if layout != "in-memory":
        raw["source"]["path"] = str(tmp_path / "data.parquet")
        pq.write_table(table, raw["source"]["path"], row_group_size=10)
    data = table if layout == "in-memory" else None
    for part in ("train", "validation", "test"):
        pipeline = Pipeline(raw, data, split=part)
        found = sorted(i for b in pipeline.batches() for i in b.ids)
        assert found == sorted(i for i, p in chosen.items() if p == part)


def test_split_column_errors_name_the_column_the_value_and_the_sequence(tmp_path):
    frame, _ = _with_parts(long_table([3, 5, 2, 7], seed=2).to_pandas())
    frame.loc[frame["id"] == "s002", "part"] = "holdout"
    path = str(tmp_path / "data.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    raw = base_config(path, split={"column": "part"})
    with pytest.raises(DataError, match=r"split\.column 'part' holds 'holdout' for sequence "
                                        r"'s002' in .*data\.parquet \(row group 0\); each sequence's part "
                                        r"must be one of 'train', 'validation', 'test'"):
        Pipeline(raw, split="train")
    frame.loc[frame["id"] == "s002", "part"] = ["train", "test"]  # its two rows
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with pytest.raises(DataError, match=r"column 'part' \(split\.column, level: sequence\) has "
                                        r"two different values in sequence 's002'"):
        Pipeline(raw, split="train")
    with pytest.raises(ConfigError, match=r"split\.column \('part'\) reads each sequence's "
                                          r"part from the data, so split\.validation and "
                                          r"split\.test do not apply"):
        load_config(base_config(path, split={"column": "part", "validation": 0.2}))


def test_materialize_writes_the_parts_split_column_holds(tmp_path):
    from seqpipe import materialize

    frame, chosen = _with_parts(long_table([3, 5, 2, 7, 4, 6, 1, 8, 3, 5], seed=4).to_pandas())
    path = str(tmp_path / "data.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    materialize(load_config(base_config(path, split={"column": "part"})), tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    expected = frame.groupby("part")["id"].nunique().to_dict()
    assert {part: p["sequences"] for part, p in manifest["parts"].items()} == expected
    timesteps = frame.groupby("part").size().to_dict()
    assert {part: p["timesteps"] for part, p in manifest["parts"].items()} == timesteps
