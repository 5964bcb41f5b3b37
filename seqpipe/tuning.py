"""Tuning: the constants that trade speed against memory, in one typed object.

Each has one line saying why its value; the measurements behind them are in
docs/performance.md ("Why the tuning values"). They are not config keys: a value that
suits one machine or file does not change what the batches hold, only how fast and in how
much memory they are made. Code reads them as `tuning.TUNING.<name>` at the time of use,
so a benchmark or test can swap the object for `dataclasses.replace(TUNING, ...)`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Speed and memory trade-offs of the reading, assembling and writing stages."""

    # stream: reading
    read_ahead_rows: int = 1 << 20  # one big row group read while the last is grouped
    read_threads: int = 2  # small files are read two at a time; pyarrow decodes in its own
    piece_rows: int = 1 << 17  # sorted row groups go on in pieces: batches start sooner
    producer_depth: int = 4  # finished blocks queued for tf.data: each holds its batches
    # batching and assembly
    batches_per_block: int = 64  # fewer, bigger blocks cost fewer copies and tf.data crossings
    unshuffled_block: int = 2048  # unshuffled, batches go out as they fill: a block per this many
    parked_share: float = 0.05  # a block's earliest members parked before its store exists
    slice_timesteps: int = 1 << 20  # a source grouped whole is assembled in row-group-sized slices
    auto_kept: int = 8  # auto boundaries kept for lengths seen again (per epoch, per fold)
    # memory pool (seqpipe._internal.buffers)
    reuse_buffers: bool = True  # False: fresh memory for every block (never on free-threaded)
    slack: float = 1.5  # a spare buffer serves requests down to 1/slack of its size
    headroom: float = 1.125  # new buffers are this much larger: a slightly larger block fits
    spare_bytes: int = 64 << 20  # spare buffers kept at most, oldest forgotten first
    tracked_bytes: int = 256 << 20  # buffers in use tracked at most, so kept batches are let go
    # materialized records and the tf.data service
    read_batch: int = 1024  # records parsed per tf.io.parse_example call
    sort_batches: int = 32  # service batches sorted by length together: more pads less, holds more
    beam_sequences_per_batch: int = 512  # Beam groups and encodes this many sequences per call
    beam_silent_seconds: float = 120.0  # no worker started by then: say what to check


TUNING = Tuning()
