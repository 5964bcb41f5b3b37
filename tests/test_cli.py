"""The command line, driven as a user would: a subprocess, real files, output checked."""

import re
import subprocess
import sys

import pytest


def _seqpipe(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "seqpipe", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_trains_and_keras_reports_the_true_masked_mean(tmp_path):
    result = _seqpipe("demo", "--cache-dir", str(tmp_path), "--patients", "300",
                      "--epochs", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"wrote [\d,]+ rows of ICU-style vitals", out)
    assert re.search(r"sequences: 300, timesteps: [\d,]+", out)
    assert re.search(r"padding waste: [\d.]+% \(without buckets: [\d.]+%\)", out)
    rows = re.findall(r"^(hr_change|mortality)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["hr_change", "mortality"]
    for _, reported, true_mean, naive in rows:
        assert float(reported) == pytest.approx(float(true_mean), abs=2e-4)
        assert float(naive) < float(true_mean)
    again = _seqpipe("demo", "--cache-dir", str(tmp_path), "--patients", "300",
                     "--epochs", "1")
    assert again.returncode == 0 and "wrote" not in again.stdout  # the cached data is reused


def test_help_lists_the_demo():
    result = _seqpipe("--help", timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout
    result = _seqpipe("demo", "--help", timeout=60)
    assert result.returncode == 0 and "--cache-dir" in result.stdout


def test_a_user_error_is_one_line_on_stderr_without_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _seqpipe("demo", "--cache-dir", str(blocker / "sub"), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"^seqpipe: error: .*file/sub", result.stderr, re.M)
