"""The exceptions seqpipe raises for user mistakes.

Every seqpipe error states the rule, echoes the value received and says where (key path,
file, row group, column or sequence), so that nobody has to read a TensorFlow traceback to
learn that a column is missing. Config, schema and id errors come before the first batch;
a streamed source's bad values come when their row group is read.
"""

from __future__ import annotations

from typing import Optional


class SeqpipeError(Exception):
    """Base class of every error seqpipe raises for bad input or bad configuration."""


class ConfigError(SeqpipeError, ValueError):
    """A config key is unknown, missing, or has a value outside its rule."""


class DataError(SeqpipeError, ValueError):
    """The data does not fit the config: a missing column, a bad type, a bad value."""


class SourceNotFoundError(SeqpipeError, FileNotFoundError):
    """`source.path` names no file, or matches no Parquet file."""


def raise_or_collect(problems: Optional[list], error: Optional[DataError]) -> None:
    """Raises `error`, or keeps it in `problems` when they are collected."""
    if error is None:
        return
    if problems is None:
        raise error
    problems.append(error)
