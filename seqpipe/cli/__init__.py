"""The command line: `seqpipe inspect|validate|materialize|serve|demo` (see `command`)."""

from seqpipe.cli.command import main

__all__ = ["main"]
