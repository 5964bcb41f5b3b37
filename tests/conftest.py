"""Shared fixtures; the helpers the tests share are in tests/helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture
def lengths():
    return [5, 1, 9, 3, 12, 7, 2, 8, 4, 6, 11]


@pytest.fixture(autouse=True)
def regrouping_cache(tmp_path_factory, monkeypatch):
    """Every test regroups into a cache folder of its own, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "seqpipe" / "regrouped"


@pytest.fixture
def reads(monkeypatch):
    """Counts the row groups read from Parquet: `reads[0]`."""
    import seqpipe.parquet.stream

    count = [0]
    real = seqpipe.parquet.stream.read_row_group

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(seqpipe.parquet.stream, "read_row_group", counted)
    return count
