"""The `seqpipe` command. User mistakes print one line on stderr and exit 2, no traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from seqpipe.errors import SeqpipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpipe",
        description="Variable-length time series from Parquet to Keras-ready batches.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="generate ICU-style data, build the pipeline, train a small model",
        description="Writes a small ICU-style dataset to a cache folder (once), builds the "
        "pipeline from the packaged configs/demo.yaml, trains a two-output GRU and prints "
        "what seqpipe read and the loss Keras reports beside the true masked mean.")
    from seqpipe.demo import default_cache_dir

    demo.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                      help="where the demo data goes (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    demo.add_argument("--patients", type=int, default=2000,
                      help="sequences to generate (default: 2000)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from seqpipe.demo import run_demo

            run_demo(args.cache_dir, epochs=args.epochs, patients=args.patients)
    except (SeqpipeError, OSError) as e:
        print(f"seqpipe: error: {e}", file=sys.stderr)
        return 2
    return 0
