"""Shared fixtures; the helpers the tests share are in tests/helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture
def lengths():
    return [5, 1, 9, 3, 12, 7, 2, 8, 4, 6, 11]
