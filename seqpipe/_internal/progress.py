"""Progress: a bar on a terminal, plain log lines anywhere else (a job's log file)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

# Seconds between log lines when not on a terminal, and between redraws on one.
LOG_EVERY = 10.0
DRAW_EVERY = 0.2


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts work done out of `total` and shows the count, the rate and the time left.

    Args:
      total: units of work (sequences) in all.
      what: what is counted, for the text.
      stream: where to write; a terminal gets a redrawn bar, anything else a line every
        `LOG_EVERY` seconds.
    """

    def __init__(self, total: int, what: str = "sequences", stream: Optional[TextIO] = None):
        self.total, self.what = max(total, 1), what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= (DRAW_EVERY if self.tty else LOG_EVERY):
            self.last = now
            self._show(now)

    def close(self) -> None:
        self._show(time.monotonic(), final=True)

    def _show(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        share = min(self.done / self.total, 1.0)
        text = (f"{self.done:,}/{self.total:,} {self.what} ({share:.0%}), {rate:,.0f}/s, "
                + (f"took {_clock(elapsed)}" if final else f"{_clock(left)} left"))
        if self.tty:
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {text}\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(f"seqpipe: {text}\n")
        self.stream.flush()
