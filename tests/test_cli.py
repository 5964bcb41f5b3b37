"""The command line, driven as a user would: a subprocess, real files, output checked."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from seqpipe import Pipeline
from tests.helpers import base_config, long_table, nested_from_long, write

SUBCOMMANDS = ["inspect", "validate", "materialize", "demo"]


def _seqpipe(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "seqpipe", *args], capture_output=True,
                          text=True, timeout=timeout)


def _without_tensorflow(*args, numba=False):
    """Runs the command in a process that fails if anything imported TensorFlow, or numba
    unless `numba` (computing statistics groups sequences, with numba's kernels)."""
    code = ("import sys; from seqpipe.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; "
            + ("" if numba else "assert 'numba' not in sys.modules, 'numba was imported'; ")
            + "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=120)


def _config_file(tmp_path, config, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def table():
    return long_table(np.random.default_rng(2).integers(1, 40, 200), seed=2)


@pytest.mark.slow
def test_demo_trains_and_keras_reports_the_true_masked_mean(tmp_path):
    result = _seqpipe("demo", "--cache-dir", str(tmp_path), "--patients", "300",
                      "--epochs", "1", "--set", "batching.batch_size=32")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"wrote [\d,]+ rows of ICU-style vitals", out)
    assert re.search(r"sequences: 300, timesteps: [\d,]+", out)
    assert re.search(r"padding waste: [\d.]+% \(without buckets: [\d.]+%\)", out)
    assert re.search(r"  vitals\.hr: mean [\d.]+, std [\d.]+", out)  # scaled by seqpipe
    assert re.search(r"^  sex: 2 values \('[FM]', '[FM]'\); input_dim 4$", out, re.M)
    assert re.search(r"^  unit: 5 values \('MICU', ", out, re.M)
    rows = re.findall(r"^(hr_change|mortality)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["hr_change", "mortality"] * 2
    for _, reported, true_mean, naive in rows[:2]:  # one batch
        assert float(reported) == pytest.approx(float(true_mean), abs=2e-4)
        assert float(naive) < float(true_mean)
    for _, _, metric, true_mean in rows[2:]:  # the epoch: masked_metric
        assert float(metric) == pytest.approx(float(true_mean), abs=2e-4)
    again = _seqpipe("demo", "--cache-dir", str(tmp_path), "--patients", "300",
                     "--epochs", "1")
    assert again.returncode == 0 and "wrote" not in again.stdout  # the cached data is reused
    assert f"reading the ICU-style vitals written earlier to {tmp_path}" in again.stdout


def test_every_subcommand_has_help_with_set():
    result = _seqpipe("--help", timeout=60)
    assert result.returncode == 0
    for command in SUBCOMMANDS:
        assert command in result.stdout
        sub = _seqpipe(command, "--help", timeout=60)
        assert sub.returncode == 0 and "--set KEY=VALUE" in sub.stdout, command


def test_a_user_error_is_one_line_on_stderr_without_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _seqpipe("demo", "--cache-dir", str(blocker / "sub"), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"^seqpipe: error: .*file/sub", result.stderr, re.M)


def test_inspect_a_parquet_path_counts_what_pyarrow_counts(tmp_path, table):
    path = write(tmp_path / "data.parquet", table, 100)
    result = _without_tensorflow("inspect", path, "--set", "padding.maxlen=30",
                                 "--set", "batching.batch_size=8")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lengths = pc.value_counts(table["id"]).field("counts").to_numpy()
    assert f"sequences: {len(lengths):,}, timesteps: {table.num_rows:,}" in out
    assert re.search(rf"min {lengths.min()}, .* p50 {int(np.percentile(lengths, 50, method='lower'))}"
                     rf", .* max {lengths.max()}$", out, re.M)
    assert f"truncated by padding.maxlen=30: {int((lengths > 30).sum())} sequences" in out
    histogram = re.findall(r"^\s+([\d,]+)-([\d,]+) #* +([\d,]+)$", out, re.M)
    assert sum(int(c) for _, _, c in histogram) == len(lengths)
    assert re.search(r"^\s+id\s+string\s+source.id_column$", out, re.M)
    waste = dict((label.split(":")[0].split(",")[0], float(share)) for share, label in
                 re.findall(r"^\s+([\d.]+)%\s+(.+)$", out, re.M))
    assert set(waste) == {"no buckets", "auto"}
    assert waste["auto"] < waste["no buckets"]


def test_inspect_a_config_reports_missing_labels_and_draws_the_boundaries(tmp_path, table):
    path = write(tmp_path / "nested.parquet", nested_from_long(table), 50)
    config = base_config(path, "nested", batching={"batch_size": 8,
                                                   "bucket_boundaries": [10, 20]},
                         split={"validation": 0.25, "test": 0.25, "seed": 3})
    result = _without_tensorflow("inspect", _config_file(tmp_path, config), "--plot",
                                 str(tmp_path / "plots/lengths.png"))
    assert result.returncode == 0, result.stderr
    y = table["y"].to_numpy(zero_copy_only=False)
    died = table.to_pandas().groupby("id")["died"].first().to_numpy()
    assert f"missing labels: y: {int(np.isnan(y).sum()):,} of {len(y):,}" in result.stdout
    assert f"missing labels: died: {int(np.isnan(died).sum()):,} of {len(died):,}" in \
        result.stdout
    assert re.search(r"^\s+[\d.]+%\s+the config's bucket_boundaries \(\[10, 20\]\)$",
                     result.stdout, re.M)
    parts = {part: Pipeline(config, split=part).report.sequences
             for part in ("train", "validation", "test")}
    assert (f"split by id: train {parts['train']}, validation {parts['validation']}, "
            f"test {parts['test']}") in result.stdout
    png = (tmp_path / "plots/lengths.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_inspect_counts_padding_under_static_shapes(tmp_path, table):
    path = write(tmp_path / "rows.parquet", table, 50)
    config = base_config(path, batching={"batch_size": 8, "bucket_boundaries": "auto",
                                         "static_shapes": True}, padding={"maxlen": 30})
    result = _without_tensorflow("inspect", _config_file(tmp_path, config))
    assert result.returncode == 0, result.stderr
    assert "maxlen 30, static shapes (each bucket's batches padded to its boundary and " \
           "full)" in result.stdout
    # Without buckets every batch is 8 x 30, the last one with empty rows.
    kept = np.minimum(pc.value_counts(table["id"]).field("counts").to_numpy(), 30)
    blind = 1 - kept.sum() / (-(-len(kept) // 8) * 8 * 30)
    assert re.search(rf"^\s+{blind:.1%}\s+no buckets, batches cut in random order$",
                     result.stdout, re.M)
    auto = re.search(r"^\s+([\d.]+)%\s+auto \(the config\): \[([\d, ]+)\]$", result.stdout,
                     re.M)
    pipeline = Pipeline(config)
    assert [int(b) for b in auto.group(2).split(", ")] == list(pipeline.report.bucket_boundaries)
    assert float(auto.group(1)) / 100 == pytest.approx(pipeline.report.padding_waste, abs=5e-4)


def test_inspect_shows_missing_feature_values_vocabulary_sizes_and_statistics(tmp_path):
    from tests.helpers import sessions

    data = sessions(n=40, seed=6)
    config = {"source": {"path": write(tmp_path / "s.parquet", data, 60), "id_column": "id",
                         "time_column": "ts"},
              "inputs": {"vitals": {"columns": ["hr", "bp"], "normalize": "standard"},
                         "event": {"columns": ["event"], "categorical": True}},
              "outputs": {"dx": {"column": "dx", "level": "sequence", "categorical": True}},
              "split": {"validation": 0.25, "seed": 1}}
    result = _without_tensorflow("inspect", _config_file(tmp_path, config), numba=True)
    assert result.returncode == 0, result.stderr
    hr = data["hr"].to_numpy(zero_copy_only=False)
    assert (f"missing feature values: inputs.vitals.hr: {int(np.isnan(hr).sum()):,} of "
            f"{len(hr):,}") in result.stdout
    statistics = Pipeline(config, split="train").statistics
    mean = statistics.columns["vitals"]["hr"].mean
    assert re.search(rf"  vitals\.hr: mean {mean:.6g}, std [\d.]+", result.stdout)
    assert f"event: {len(statistics.vocabularies['event'])} values" in result.stdout
    assert f"input_dim {statistics.input_dim('event')}" in result.stdout
    assert "statistics over the train part of" in result.stdout


def test_inspect_asks_for_the_id_column_when_it_cannot_tell(tmp_path, table):
    path = write(tmp_path / "data.parquet", table.rename_columns(
        ["key" if c == "id" else c for c in table.column_names]), 100)
    result = _seqpipe("inspect", path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--set source.id_column=NAME" in result.stderr
    fixed = _seqpipe("inspect", path, "--set", "source.id_column=key", timeout=60)
    assert fixed.returncode == 0, fixed.stderr


def test_validate_checks_every_column_from_the_footers(tmp_path, table):
    path = write(tmp_path / "data.parquet", table.sort_by("id"), 100)
    config = _config_file(tmp_path, base_config(path, split={"validation": 0.1}))
    result = _without_tensorflow("validate", config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for column, key in [("id", "source.id_column"), ("t", "source.time_column"),
                        ("code", "inputs.steps.columns"), ("age", "inputs.static.columns"),
                        ("died", "outputs.died.column")]:
        assert re.search(rf"^  ok  {column}\s+\S+: {re.escape(key)} \(", out, re.M)
    assert f"{table.num_rows:,} rows in" in out
    assert "streams by row group" in out
    assert "split by id: train 90%, validation 10%, test 0%" in out

    missing = _without_tensorflow("validate", config, "--set", "outputs.y.column=label")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "column 'label' (outputs.y.column) not found in" in missing.stderr
    typo = _seqpipe("validate", config, "--set", "batching.batch_sise=3", timeout=60)
    assert typo.returncode == 2 and "Did you mean 'batch_size'" in typo.stderr
    bad = _seqpipe("validate", config, "--set", "batching.batch_size", timeout=60)
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr


@pytest.mark.slow
def test_materialize_writes_one_folder_per_split_and_refuses_to_overwrite(tmp_path, table):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(
        path, split={"validation": 0.2, "test": 0.1, "seed": 1}))
    out = tmp_path / "out"
    result = _seqpipe("materialize", config, "--out", str(out), "--set",
                      "padding.maxlen=20")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["padding"]["maxlen"] == 20
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "train",
                                                     "validation"]
    for part, info in manifest["parts"].items():
        assert re.search(rf"^  {part}: {info['sequences']:,} sequences", result.stdout, re.M)
    # Not a terminal: progress comes as plain log lines, the last one with the total.
    assert re.search(r"^seqpipe: 200/200 sequences \(100%\), [\d,]+/s, took 0:\d\d$",
                     result.stderr, re.M)
    again = _seqpipe("materialize", config, "--out", str(out))
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    replaced = _seqpipe("materialize", config, "--out", str(out), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "manifest.json").read_text())["config"]["padding"]["maxlen"] is None
    (out / "notes.md").write_text("what this output is for")
    (out / "train" / "extra.csv").write_text("1,2")
    kept = _seqpipe("materialize", config, "--out", str(out), "--overwrite")
    assert kept.returncode == 2 and re.search(
        r"--overwrite replaces only what seqpipe wrote, and .*out also holds files it did not "
        r"write: notes\.md, train/extra\.csv; nothing was touched", kept.stderr), kept.stderr
    assert (out / "notes.md").read_text() == "what this output is for"


def test_beam_options_without_a_runner_are_refused(tmp_path, table):
    config = _config_file(tmp_path, base_config(write(tmp_path / "d.parquet", table, 100)))
    result = _seqpipe("materialize", config, "--out", str(tmp_path / "out"),
                      "--direct_num_workers=2", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "error: unrecognized arguments: --direct_num_workers=2 (options for Beam need "
        "--runner)")
    assert not (tmp_path / "out").exists()
    other = _seqpipe("validate", config, "--runner=DirectRunner", timeout=60)
    assert other.returncode == 2 and "unrecognized arguments: --runner" in other.stderr


def test_a_runner_without_beam_installed_says_which_extra(tmp_path, table):
    """With apache_beam unimportable, --runner names the extra to install."""
    config = _config_file(tmp_path, base_config(write(tmp_path / "d.parquet", table, 100)))
    code = ("import sys; sys.modules['apache_beam'] = None; from seqpipe.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "materialize", config, "--out",
                             str(tmp_path / "out"), "--runner", "DirectRunner"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("seqpipe: error: --runner needs Apache Beam, which is not installed")
    assert last.endswith("pip install 'seqpipe[beam]'")


def test_nothing_but_the_beam_path_imports_apache_beam(tmp_path, table):
    """Beam is an optional extra: building and materializing locally never import it."""
    path = write(tmp_path / "d.parquet", table, 100)
    code = ("import sys, seqpipe; config = seqpipe.load_config(" + repr(base_config(path))
            + "); seqpipe.materialize(config, sys.argv[1]); "
            "[b for b in seqpipe.build_dataset(config)]; "
            "assert 'apache_beam' not in sys.modules, 'apache_beam was imported'")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_materialize_leaves_nothing_that_looks_complete(tmp_path):
    rng = np.random.default_rng(0)
    sequences = 6000
    table = long_table(rng.integers(50, 400, sequences), seed=0, shuffle_rows=False)
    path = write(tmp_path / "data.parquet", table, 50_000)
    config = _config_file(tmp_path, base_config(path))
    out = tmp_path / "out"
    # About 60 MB of records in 0.5 MB shards: the kill lands after some shards are
    # written and long before the last.
    process = subprocess.Popen([sys.executable, "-m", "seqpipe", "materialize", config,
                                "--out", str(out), "--shard-mb", "0.5"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    shards = []
    while time.monotonic() < deadline and process.poll() is None:
        shards = list(tmp_path.glob(".out.seqpipe-tmp-*/all/*.tfrecord"))
        if len(shards) >= 4:
            break
        time.sleep(0.005)
    assert len(shards) >= 4 and process.poll() is None, "materialize ended before the kill"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    assert not list(tmp_path.rglob("manifest.json"))
    result = _seqpipe("materialize", config, "--out", str(out), "--shard-mb", "0.5")
    assert result.returncode == 0, result.stderr
    assert (out / "manifest.json").exists()
    assert not list(tmp_path.glob(".out.seqpipe-tmp-*"))  # the dead run's folder is gone
    ids = pq.read_table(out / "all/index.parquet")["id"]
    assert len(ids) == sequences == len(pc.unique(table["id"]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["parts"]["all"]["shards"]) > 2 * len(shards)  # killed well before the end


def test_bad_arguments_are_one_line_errors(tmp_path, table):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    shards = _seqpipe("materialize", config, "--out", str(tmp_path / "out"), "--shard-mb", "0",
                      timeout=60)
    assert shards.returncode == 2 and "Traceback" not in shards.stderr
    assert "seqpipe: error: --shard-mb must be positive; got 0.0" in shards.stderr
    folder = _seqpipe("validate", str(tmp_path), timeout=60)
    assert folder.returncode == 2
    assert "is a folder; this command takes a YAML config file" in folder.stderr
    words = write(tmp_path / "words.parquet", pa.table({"id": ["a", "b"], "word": ["x", "y"]}))
    nothing = _seqpipe("inspect", words, timeout=60)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
    assert "words.parquet has no numeric columns to use as features; it has id, word" in \
        nothing.stderr


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, table, monkeypatch):
    from seqpipe import DataError
    from seqpipe.cli.inspect import config_for, inspect, plot

    path = write(tmp_path / "data.parquet", table, 100)
    found = inspect(*config_for(path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(DataError, match=r"--plot needs matplotlib: pip install 'seqpipe\[plot\]'"):
        plot(found, tmp_path / "lengths.png")


def test_serve_refuses_bad_ports_timeouts_and_addresses_in_one_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            (["dispatcher", "--port", "70000"], "--port must be a port number from 0 to 65535; "
                                                "got 70000"),
            (["dispatcher", "--port", "0", "--worker-timeout", "0"],
             "--worker-timeout must be a positive number of seconds; got 0.0"),
            (["dispatcher", "--port", str(port)], f"--port {port} is in use"),
            (["worker", "--dispatcher", "nohost"], "--dispatcher must be HOST:PORT, such as "
                                                   "localhost:5050; got 'nohost'"),
        ]
        for args, message in cases:
            done = _seqpipe("serve", *args, timeout=60)
            assert done.returncode == 2, (args, done.stderr)
            assert done.stderr.startswith(f"seqpipe: error: {message}"), done.stderr
            assert "Traceback" not in done.stderr


def _in_process(args, capsys):
    from seqpipe.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_two_materialize_runs_into_one_out_at_once_one_fails(tmp_path, table):
    """Both exited 0 before, and one silently replaced the other's output."""
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    out = tmp_path / "out"
    runs = [subprocess.Popen([sys.executable, "-m", "seqpipe", "materialize", config, "--out",
                              str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.wait(timeout=240), run.communicate()[1]) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    failed = next(err for code, err in results if code == 2)
    assert re.search(r"seqpipe: error: (another seqpipe run \(process \d+\) is writing .*out "
                     r"now|.*out already exists; pass --overwrite|.*out appeared while this run "
                     r"was writing)", failed), failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "data.parquet", "out"]


def test_a_run_in_progress_keeps_others_out_and_a_dead_ones_lock_is_taken_over(
        tmp_path, table, capsys):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    out = tmp_path / "out"
    lock = tmp_path / ".out.seqpipe-lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(holder.pid))
        code, _, err = _in_process(["materialize", config, "--out", out], capsys)
        assert code == 2
        assert err == (f"seqpipe: error: another seqpipe run (process {holder.pid}) is writing "
                       f"{out} now (it holds {lock}); wait for it to finish, or choose another "
                       f"--out\n")
        assert not out.exists() and lock.read_text() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    code, _, err = _in_process(["materialize", config, "--out", out], capsys)
    assert code == 0, err
    assert (out / "manifest.json").exists() and not lock.exists()


def test_an_out_that_is_a_file_or_below_one_is_refused_and_left_alone(tmp_path, table, capsys):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    note = tmp_path / "note.txt"
    note.write_text("mine")
    code, _, err = _in_process(["materialize", config, "--out", note / "out"], capsys)
    assert code == 2
    assert err == (f"seqpipe: error: --out {note / 'out'} cannot be made: {note} is a file, "
                   f"not a folder; choose another --out\n")
    code, _, err = _in_process(["materialize", config, "--out", note, "--overwrite"], capsys)
    assert code == 2
    assert err == (f"seqpipe: error: --out {note} is a file, and materialize writes a folder; "
                   f"choose another --out (--overwrite replaces only a folder)\n")
    assert note.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "data.parquet",
                                                          "note.txt"]


def test_a_parquet_file_given_as_the_config_is_one_line(tmp_path, table, capsys):
    path = write(tmp_path / "data.parquet", table, 100)
    code, out, err = _in_process(["validate", path], capsys)
    assert code == 2 and out == ""
    assert err == (f"seqpipe: error: config file {path!r} is a Parquet file, not a YAML "
                   f"config; give the YAML config here (seqpipe inspect reads Parquet files)\n")


# -- what --overwrite may replace (a data tool never deletes what it did not write) --------


def test_overwrite_refuses_a_folder_seqpipe_did_not_write_and_leaves_it_untouched(
        tmp_path, table, capsys):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "train.py").write_text("print('mine')")
    (project / "notes.txt").write_text("notes")
    code, _, err = _in_process(["materialize", config, "--out", project, "--overwrite"], capsys)
    assert code == 2
    assert err == (f"seqpipe: error: --overwrite replaces only an earlier seqpipe materialize "
                   f"output or an empty folder, and {project} is neither (it holds notes.txt, "
                   f"src, train.py); nothing was touched. Choose another --out.\n")
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "src", "train.py"]
    assert (project / "train.py").read_text() == "print('mine')"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "data.parquet",
                                                          "project"]


def test_overwrite_replaces_an_earlier_output_and_an_empty_folder_is_used(
        tmp_path, table, capsys):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _in_process(["materialize", config, "--out", out], capsys)  # empty: used
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["all", "manifest.json"]
    code, _, err = _in_process(["materialize", config, "--out", out, "--set",
                                "padding.maxlen=5", "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["config"]["padding"]["maxlen"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "data.parquet", "out"]


def test_the_working_directory_is_never_an_out(tmp_path, table, capsys, monkeypatch):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    monkeypatch.chdir(tmp_path)
    code, _, err = _in_process(["materialize", config, "--out", ".", "--overwrite"], capsys)
    assert code == 2 and "is the working directory or a root folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "data.parquet"]


def test_a_killed_runs_leftover_is_removed_only_when_it_carries_seqpipes_marker(
        tmp_path, table, capsys):
    path = write(tmp_path / "data.parquet", table, 100)
    config = _config_file(tmp_path, base_config(path))
    dead = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    for process in dead:
        process.wait()
    ours, theirs = (tmp_path / f".out.seqpipe-tmp-{p.pid}" for p in dead)
    ours.mkdir()
    (ours / ".seqpipe-temporary").write_text("")
    theirs.mkdir()  # named like a leftover of a dead run, but seqpipe did not make it
    (theirs / "keep.txt").write_text("x")
    code, _, err = _in_process(["materialize", config, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert not ours.exists() and (theirs / "keep.txt").exists()
    assert ".seqpipe-temporary" not in [p.name for p in (tmp_path / "out").iterdir()]


def test_version_prints_the_package_version(capsys):
    import seqpipe
    from seqpipe.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"seqpipe {seqpipe.__version__}\n"
