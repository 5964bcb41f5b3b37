"""Materialize and load_materialized: the TFRecord output batches exactly like Parquet."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tensorflow as tf

from seqpipe import (
    ConfigError,
    DataError,
    SourceNotFoundError,
    build_dataset,
    load_config,
    load_materialized,
    materialize,
)
from seqpipe.materialized.manifest import config_hash
from tests.helpers import (
    base_config,
    long_table,
    nested_from_long,
    passing,
    raw_sequences,
    scatter,
    write,
)

LENGTHS = np.random.default_rng(11).integers(1, 25, 150)
SPLIT = {"validation": 0.2, "test": 0.2, "seed": 5}


def _assert_same_epochs(expected, got, epochs=2):
    """Both datasets, iterated `epochs` times (each pass is one epoch), give equal batches."""
    batches = 0
    for _ in range(epochs):
        for a, b in zip(expected, got, strict=True):
            tf.nest.assert_same_structure(a, b)
            for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
                np.testing.assert_array_equal(u.numpy(), v.numpy())
            batches += 1
    assert batches > 2 * epochs


def _sources(tmp_path, table):
    """The same sequences three ways: sorted by id in one file (streamed), rows shuffled
    over three files (grouped whole), and one row per sequence with lists (nested)."""
    sorted_file = write(tmp_path / "sorted.parquet",
                        table.sort_by([("id", "ascending"), ("t", "ascending")]), 300)
    folder = scatter(table, tmp_path / "scattered", seed=1, row_group_size=100)
    nested = write(tmp_path / "nested.parquet", nested_from_long(table), 40)
    return {"long, streamed": (sorted_file, "long"), "long, grouped whole": (folder, "long"),
            "nested": (nested, "nested")}


@pytest.mark.parametrize("source", ["long, streamed", "long, grouped whole", "nested"])
def test_load_materialized_equals_build_dataset_batch_for_batch(tmp_path, source):
    table = long_table(LENGTHS, seed=2)
    path, layout = _sources(tmp_path, table)[source]
    config = load_config(base_config(
        path, layout, split=SPLIT, padding={"maxlen": 15, "side": "pre", "truncating": "pre"},
        batching={"batch_size": 4, "bucket_boundaries": "auto"},
        shuffle={"buffer_size": 30, "seed": 3},
        outputs={"y": {"column": "y", "weights": "global_mean"},
                 "died": {"column": "died", "level": "sequence"}}))
    out = tmp_path / "out"
    manifest = materialize(config, out)
    assert set(manifest["parts"]) == {"train", "validation", "test"}
    assert sum(p["sequences"] for p in manifest["parts"].values()) == len(LENGTHS)
    for part in ("train", "validation", "test"):
        _assert_same_epochs(build_dataset(config, split=part),
                            load_materialized(out, split=part))


def test_the_report_of_a_materialized_part_says_it_is_streamed_from_its_records(tmp_path):
    from seqpipe import Pipeline
    from seqpipe.materialized.read import open_part

    path = write(tmp_path / "d.parquet", long_table(LENGTHS, seed=2), 300)
    out = tmp_path / "out"
    materialize(load_config(base_config(path)), out)
    report = Pipeline.from_source(open_part(out)).report
    assert report.streamed
    assert "streamed from its TFRecord files" in str(report)
    assert "in memory" not in str(report)


def test_a_record_holds_the_sequence_pyarrow_reads(tmp_path):
    """Any TensorFlow job can parse the records: each holds the sequence in time order,
    truncated, with NaN where its label is missing."""
    table = long_table(LENGTHS[:40], seed=4)
    path = write(tmp_path / "a.parquet", table, 50)
    config = load_config(base_config(path, padding={"maxlen": 10, "truncating": "pre"}))
    materialize(config, tmp_path / "out")
    raw = raw_sequences(table)
    records = list(tf.data.TFRecordDataset(str(tmp_path / "out/all/part-00000.tfrecord")))
    assert len(records) == len(raw)
    for record in records:
        example = tf.train.Example.FromString(record.numpy()).features.feature
        key = example["id"].bytes_list.value[0].decode()
        codes, labels = raw[key][0][-10:], raw[key][1][-10:]
        steps = np.array(example["x/steps"].float_list.value).reshape(-1, 2)
        assert example["length"].int64_list.value[0] == len(codes)
        np.testing.assert_array_equal(steps[:, 0], codes.astype(np.float32))
        np.testing.assert_array_equal(np.array(example["y/y"].float_list.value),
                                      labels.astype(np.float32))  # NaN stays NaN


def test_loading_may_change_batching_but_not_what_the_records_hold(tmp_path):
    table = long_table(LENGTHS, seed=6)
    path = write(tmp_path / "a.parquet", table.sort_by("id"), 200)
    config = load_config(base_config(path, shuffle={"buffer_size": 40, "seed": 1}))
    materialize(config, tmp_path / "out")
    other = load_config(config, {"batching.batch_size": 7, "weights.mode": "sequence_mean",
                                 "padding.side": "pre", "shuffle.seed": 9})
    _assert_same_epochs(build_dataset(other), load_materialized(tmp_path / "out", other))
    changed = load_config(config, {"padding.maxlen": 5, "inputs.steps.columns": ["x"]})
    with pytest.raises(ConfigError, match=r"padding.maxlen: written with None, asked for 5"):
        load_materialized(tmp_path / "out", changed)


def test_the_manifest_says_what_was_written(tmp_path):
    table = long_table(LENGTHS, seed=7)
    path = write(tmp_path / "a.parquet", table, 200)
    config = load_config(base_config(path, split=SPLIT, padding={"maxlen": 12}))
    materialize(config, tmp_path / "out", shard_bytes=2000)
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["config_sha256"] == config_hash(config)
    assert load_config(manifest["config"]) == config
    assert manifest["seqpipe_version"]
    assert manifest["element_spec"]["x"]["steps"] == {"shape": [None, None, 2],
                                                      "dtype": "float32"}
    lengths = pc.value_counts(table["id"]).field("counts").to_numpy()
    parts = manifest["parts"]
    assert sum(p["timesteps"] for p in parts.values()) == int(lengths.sum())
    assert sum(p["truncated_timesteps"] for p in parts.values()) == \
        int(np.maximum(lengths - 12, 0).sum())
    labels = table["y"].to_numpy(zero_copy_only=False)
    assert sum(p["missing_labels"]["y"][0] for p in parts.values()) == \
        int(np.isnan(labels).sum())
    assert len(parts["train"]["shards"]) > 1  # shard_bytes starts new files
    for part in parts.values():
        for shard in part["shards"]:
            assert (tmp_path / "out" / part["folder"] / shard).stat().st_size > 0


def test_an_existing_output_is_refused_unless_overwritten(tmp_path):
    path = write(tmp_path / "a.parquet", long_table(LENGTHS[:20]), 50)
    config = load_config(base_config(path))
    materialize(config, tmp_path / "out")
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        materialize(config, tmp_path / "out")
    materialize(load_config(config, {"padding.maxlen": 3}), tmp_path / "out", overwrite=True)
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["config"]["padding"]["maxlen"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_through_a_link_replaces_the_folder_it_names_and_leaves_nothing(tmp_path):
    path = write(tmp_path / "a.parquet", long_table(LENGTHS[:20]), 50)
    config = load_config(base_config(path))
    (tmp_path / "store").mkdir()
    materialize(config, tmp_path / "store" / "v1")
    (tmp_path / "latest").symlink_to(tmp_path / "store" / "v1")
    materialize(load_config(config, {"padding.maxlen": 3}), tmp_path / "latest", overwrite=True)
    assert (tmp_path / "latest").is_symlink()
    assert json.loads((tmp_path / "latest/manifest.json").read_text())["config"]["padding"][
        "maxlen"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "latest", "store"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["v1"]


@pytest.mark.parametrize("source, out", [("data", "data/out"), ("data", "data"),
                                         ("data/*.parquet", "data/materialized"),
                                         ("data/**/*.parquet", "data/deep/out")])
def test_an_out_inside_the_source_folder_is_refused(tmp_path, monkeypatch, source, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "deep").mkdir(parents=True)
    write(tmp_path / "data" / "a.parquet", long_table(LENGTHS[:20]), 50)
    with pytest.raises(DataError, match=r"--out .* lies inside the source folder .*data "
                                        r"\(source\.path '.*'\): its files would be read as "
                                        r"part of the source from then on"):
        materialize(load_config(base_config(source)), out)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a.parquet", "deep"]
    materialize(load_config(base_config(source)), "elsewhere")  # beside it is fine


def test_loading_something_that_is_not_a_finished_output_is_an_error(tmp_path):
    with pytest.raises(SourceNotFoundError, match="is not a folder"):
        load_materialized(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(SourceNotFoundError, match="holds no manifest.json"):
        load_materialized(tmp_path / "half")
    path = write(tmp_path / "a.parquet", long_table(LENGTHS[:20]), 50)
    config = load_config(base_config(path, split=SPLIT))
    materialize(config, tmp_path / "out")
    with pytest.raises(ConfigError, match="holds the parts train, validation, test; say which"):
        load_materialized(tmp_path / "out")
    next((tmp_path / "out/test").glob("*.tfrecord")).unlink()
    with pytest.raises(DataError, match="is incomplete: .*part-00000.tfrecord is missing"):
        load_materialized(tmp_path / "out", split="test")


def test_a_damaged_or_foreign_output_is_a_clear_error(tmp_path):
    path = write(tmp_path / "a.parquet", long_table(LENGTHS[:20]), 50)
    out = tmp_path / "out"
    materialize(load_config(base_config(path)), out)
    manifest = (out / "manifest.json").read_text()
    with pytest.raises(ConfigError, match=r"holds no part 'train'; it holds all"):
        load_materialized(out, split="train")
    (out / "manifest.json").write_text(manifest[:40])
    with pytest.raises(DataError, match=r"manifest.json is not readable JSON"):
        load_materialized(out)
    (out / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match=r"is not a seqpipe materialize manifest: its format "
                                        r"is 'something else', not 'seqpipe.materialized'"):
        load_materialized(out)
    newer = dict(json.loads(manifest), format_version=99)
    (out / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(DataError, match=r"has format version 99, newer than this seqpipe reads "
                                        r"\(1\); upgrade seqpipe"):
        load_materialized(out)
    fewer = json.loads(manifest)
    fewer["parts"]["all"]["sequences"] += 1
    (out / "manifest.json").write_text(json.dumps(fewer))
    with pytest.raises(DataError, match=r"index.parquet lists 20 sequences, the manifest 21; "
                                        r"materialize again"):
        load_materialized(out)


def test_materialize_to_a_uri_and_load_it_back(tmp_path):
    """The output folder may be a URI (gs://, hdfs://; TensorFlow's file systems): written
    and read through them, file:// gives what the local path gives, batch for batch."""
    table = long_table(LENGTHS[:60], seed=8)
    path = write(tmp_path / "d.parquet", table, 40)
    config = load_config(base_config(path, split=SPLIT, padding={"maxlen": 12}))
    materialize(config, tmp_path / "local")
    uri = f"file://{tmp_path}/by-uri"
    manifest = materialize(config, uri)
    assert (tmp_path / "by-uri" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-uri", "d.parquet", "local"]
    for part in manifest["parts"]:
        _assert_same_epochs(load_materialized(tmp_path / "local", split=part),
                            load_materialized(uri, split=part), epochs=1)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        materialize(config, uri)
    materialize(config, uri, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-uri", "d.parquet", "local"]


def _small_output(tmp_path, **config_updates):
    path = write(tmp_path / "a.parquet", long_table(LENGTHS[:20]), 50)
    config = load_config(base_config(path), config_updates)
    materialize(config, tmp_path / "out")
    return tmp_path / "out"


def _manifest_edit(out, edit):
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_whose_config_was_edited_is_refused(tmp_path):
    """Lowering maxlen in the manifest loaded shortened sequences that reported
    'truncated: 0'; the manifest carries the config's hash."""
    out = _small_output(tmp_path)
    _manifest_edit(out, lambda m: m["config"]["padding"].update(maxlen=2))
    with pytest.raises(DataError, match=r"manifest\.json was edited: its config no longer "
                                        r"matches its config_sha256.*Materialize again"):
        load_materialized(out)


def _drop(key):
    return lambda m: m.pop(key)


@pytest.mark.parametrize("edit, message", [
    (_drop("parts"), r"is damaged: it has no key 'parts'\. Materialize again"),
    (_drop("config_sha256"), r"is damaged: it has no key 'config_sha256'"),
    (lambda m: m.update(config=["not", "a", "mapping"]),
     r"is damaged: config must be a mapping; got \['not', 'a', 'mapping'\]"),
    (lambda m: m["parts"]["all"].pop("shards"), r"is damaged: it has no key 'parts\.all\.shards'"),
    (lambda m: m["source"].update(rows="many"), r"is damaged: source\.rows must be a whole "
                                                r"number; got 'many'"),
], ids=["no-parts", "no-hash", "config-not-mapping", "no-shards", "rows-not-a-number"])
def test_a_damaged_manifest_is_one_clear_error(tmp_path, edit, message):
    out = _small_output(tmp_path)
    _manifest_edit(out, edit)
    with pytest.raises(DataError, match=message):
        load_materialized(out)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["statistics"]["columns"]["steps"]["x"].update(std=-2.0),
     r"columns\.steps\.x\.std must be >= 0; got -2\.0"),
    (lambda m: m["statistics"]["columns"]["steps"]["x"].update(mean=None),
     r"columns\.steps\.x\.mean must be a finite number; got None"),
], ids=["negative-std", "no-mean"])
def test_a_manifest_whose_statistics_were_edited_is_refused(tmp_path, edit, message):
    out = _small_output(tmp_path, **{"inputs.steps.normalize": "standard"})
    _manifest_edit(out, edit)
    with pytest.raises(DataError, match=r"manifest\.json \(its statistics\) does not hold usable "
                                        r"seqpipe statistics: " + message +
                                        r"\. Materialize again rather than edit the manifest"):
        load_materialized(out)


def _equal_shards_output(tmp_path):
    """Sequences of one length and ids of one width: every record, and so every shard,
    has the same size."""
    n = 24
    table = long_table([5] * n, label_missing=0.0, outcome_missing=0.0)
    table = table.set_column(table.schema.get_field_index("code"), "code",
                             pa.array(np.ones(table.num_rows)))
    path = write(tmp_path / "a.parquet", table, 40)
    config = load_config(base_config(path))
    manifest = materialize(config, tmp_path / "out", shard_bytes=1000)
    shards = [tmp_path / "out" / "all" / s for s in manifest["parts"]["all"]["shards"]]
    assert len(shards) > 2 and len({s.stat().st_size for s in shards[:-1]}) == 1
    return config, shards


def test_shards_of_equal_size_swapped_are_refused(tmp_path):
    config, shards = _equal_shards_output(tmp_path)
    a, b = shards[0], shards[1]
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    with pytest.raises(Exception, match=r"part-00000\.tfrecord holds sequence 's00\d' as record "
                                        r"0 of its part, where index\.parquet lists 's000': the "
                                        r"shards were renamed, swapped or edited"):
        list(load_materialized(tmp_path / "out"))


def test_a_shard_cut_mid_record_is_named(tmp_path):
    config, shards = _equal_shards_output(tmp_path)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:-7])
    with pytest.raises(Exception, match=r"DataError: .*part-00001\.tfrecord cannot be read "
                                        r"\(truncated record at \d+.*\): the shard is truncated "
                                        r"or corrupt\. Materialize again"):
        list(load_materialized(tmp_path / "out"))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_index_is_one_clear_error(tmp_path, damage):
    out = _small_output(tmp_path)
    index = out / "all" / "index.parquet"
    if damage == "missing":
        index.unlink()
        message = r"all/index\.parquet is missing: the output is incomplete or damaged"
    else:
        index.write_bytes(index.read_bytes()[:100])
        message = r"all/index\.parquet cannot be read \(.*\): the output is incomplete"
    with pytest.raises(DataError, match=message):
        load_materialized(out)


def test_an_output_that_appears_during_a_run_is_not_replaced(tmp_path):
    """The last step, the rename into place, checks again: another run may have finished
    first (the lock keeps seqpipe runs apart; this is the last line of defence)."""
    from seqpipe._internal import paths

    out, temp = tmp_path / "out", tmp_path / "temp"
    out.mkdir()
    (out / "theirs").write_text("x")
    temp.mkdir()
    with pytest.raises(DataError, match=r"out appeared while this run was writing.*left as it "
                                        r"is.*Pass --overwrite"):
        paths.publish(str(temp), out, overwrite=False)
    assert (out / "theirs").exists()


@pytest.mark.parametrize("key, name", [
    ("shards", "../x.tfrecord"), ("shards", "/etc/passwd"), ("shards", "gs://bucket/x"),
    ("folder", ".."), ("folder", "/etc"),
], ids=["dot-dot", "absolute", "scheme", "folder-up", "folder-absolute"])
def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path, key, name):
    out = _small_output(tmp_path)

    def point_outside(manifest):
        part = manifest["parts"]["all"]
        part[key] = [name] if key == "shards" else name

    _manifest_edit(out, point_outside)
    with pytest.raises(DataError, match=rf"manifest\.json is damaged: parts\.all\.{key} names "
                                        rf"'{re.escape(name)}', which is not a file in the "
                                        rf"output's own folder"):
        load_materialized(out)


PREPARED = {
    "inputs": {"vitals": {"columns": ["hr", "bp", "visits"], "normalize": "standard",
                          "time_delta": True, "missing_indicators": True},
               "event": {"columns": ["event"], "categorical": True},
               "device": {"columns": ["device"], "categorical": True, "level": "sequence"}},
    "outputs": {"targets": {"columns": ["y1", "y2"]},
                "dx": {"column": "dx", "level": "sequence", "categorical": True}},
    "padding": {"maxlen": 10, "mask": "timestep_mask"},
    "batching": {"batch_size": 4}, "shuffle": {"buffer_size": 20, "seed": 5},
    "split": {"validation": 0.3, "seed": 2},
}


def _prepared_config(path):
    return load_config({"source": {"path": path, "id_column": "id", "time_column": "ts"},
                        **PREPARED})


def test_prepared_data_loads_materialized_as_build_dataset_makes_it(tmp_path):
    """Scaled, categorical, time-delta and missing-flag inputs, several label columns, a
    class label and the mask input: the materialized copy gives the same batches, its
    statistics are the train part's, and predictions read from it carry ids and times."""
    import keras

    from seqpipe import Pipeline, Statistics, predict
    from tests.helpers import sessions

    config = _prepared_config(write(tmp_path / "s.parquet", sessions(n=50, seed=7), 60))
    out = tmp_path / "out"
    manifest = materialize(config, out)
    train = Pipeline(config, split="train")
    assert Statistics.from_dict(manifest["statistics"]) == train.statistics
    for part in ("train", "validation"):
        _assert_same_epochs(build_dataset(config, split=part),
                            load_materialized(out, split=part))
    inputs = {"timestep_mask": keras.Input((None,), dtype="bool", name="timestep_mask"),
              "vitals": keras.Input((None, 7), name="vitals"),
              "event": keras.Input((None,), dtype="int32", name="event"),
              "device": keras.Input((), dtype="int32", name="device")}  # unused
    hidden = keras.layers.Concatenate()(
        [inputs["vitals"], keras.layers.Embedding(train.statistics.input_dim("event"), 2)(
            inputs["event"])])
    hidden = keras.layers.GRU(2, return_sequences=True)(passing(hidden, inputs["device"]),
                                                        mask=inputs["timestep_mask"])
    model = keras.Model(inputs, {"targets": keras.layers.Dense(2, name="targets")(hidden)})
    from_files = predict(model, config, split="validation")["targets"]
    with pytest.raises(ConfigError, match=r"'.*out' is a materialized output; data= does not "
                                          r"apply to it"):
        predict(model, out, data=sessions(n=5), split="validation")
    other = Statistics(sequences=1)  # not the statistics the records were written with
    with pytest.raises(ConfigError, match=r"was written with its own statistics, and its "
                                          r"records hold values prepared with them"):
        predict(model, out, split="validation", statistics=other)
    from_records = predict(model, out, split="validation")["targets"]
    assert from_records.id.tolist() == from_files.id.tolist()
    assert from_records.ts.tolist() == from_files.ts.tolist()
    np.testing.assert_allclose(from_records.iloc[:, 2:], from_files.iloc[:, 2:], rtol=1e-5)
