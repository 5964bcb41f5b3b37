"""The one handle through which seqpipe imports TensorFlow, on first use.

Importing seqpipe, loading a config, `seqpipe inspect` and `seqpipe validate` never call
it, so they stay fast and TensorFlow-free (a test checks the modules they load).
"""

from __future__ import annotations

from typing import Any


def tensorflow() -> Any:
    """The `tensorflow` module, imported now if it was not yet."""
    import tensorflow as tf

    return tf
