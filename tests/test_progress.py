"""Progress: a redrawn bar on a terminal, a plain line now and then anywhere else."""

import io

from seqpipe._internal import progress as progress_module
from seqpipe._internal.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_with_rate_and_time_left(monkeypatch):
    monkeypatch.setattr(progress_module, "DRAW_EVERY", 0.0)
    screen = Terminal()
    bar = Progress(200, stream=screen)
    bar.update(50)
    bar.update(50)
    bar.close()
    frames = screen.getvalue().split("\r")[1:]
    assert frames[0].startswith("[#######") and "50/200 sequences (25%)" in frames[0]
    assert "left" in frames[1] and "100/200 sequences (50%)" in frames[1]
    assert frames[-1].endswith("\n") and "took 0:00" in frames[-1]


def test_a_log_file_gets_lines_not_redraws(monkeypatch):
    log = io.StringIO()
    bar = Progress(10, stream=log)
    bar.update(4)  # within LOG_EVERY of the start: nothing yet
    assert log.getvalue() == ""
    monkeypatch.setattr(progress_module, "LOG_EVERY", 0.0)
    bar.update(4)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("seqpipe: 8/10 sequences (80%), ") and lines[0].endswith("left")
    assert "\r" not in log.getvalue() and lines[-1].startswith("seqpipe: 8/10 sequences")
