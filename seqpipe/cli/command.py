"""The `seqpipe` command. User mistakes print one line on stderr and exit 2, no traceback.

    seqpipe inspect PATH_OR_CONFIG [--plot FILE.png]
    seqpipe validate CONFIG [--data]
    seqpipe materialize CONFIG --out DIR [--overwrite] [--runner RUNNER [BEAM OPTIONS...]]
    seqpipe serve dispatcher --port P
    seqpipe serve worker --dispatcher HOST:P
    seqpipe demo
    seqpipe --version

Every subcommand but `serve` takes `--set KEY=VALUE` (repeatable) to override a config key.
Only `materialize`, `serve` and `demo` import TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import yaml

from seqpipe.errors import ConfigError, DataError, SeqpipeError


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, such as batching.batch_size=128; got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value) if value else None
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"the value of {key} is not valid YAML: {e}") from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpipe",
        description="Variable-length time series from Parquet to Keras-ready batches.")
    from seqpipe import __version__

    parser.add_argument("--version", action="version", version=f"seqpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", type=_override, action="append",
        default=[], help="override a config key, e.g. --set batching.batch_size=128 "
        "(the value is read as YAML; repeatable)")

    for add in (_add_inspect, _add_validate, _add_materialize, _add_serve, _add_demo):
        add(commands, overrides)
    return parser


def _add_inspect(commands, overrides: argparse.ArgumentParser) -> None:
    """`seqpipe inspect`: lengths, missing labels, padding cost."""
    inspect = commands.add_parser(
        "inspect", parents=[overrides],
        help="sequence lengths, missing labels and what padding will cost",
        description="Prints the schema, sequence and timestep counts, length percentiles "
        "and a histogram, the share of missing labels per output, and the padding waste "
        "with no buckets, with the config's boundaries and with 'auto'. Reads only the id "
        "and label columns; does not import TensorFlow.")
    inspect.add_argument("target", metavar="PATH_OR_CONFIG",
                         help="a YAML config, or a Parquet file, directory or glob")
    inspect.add_argument("--plot", metavar="FILE.png", type=Path,
                         help="also write a length histogram with the bucket boundaries "
                         "(needs matplotlib: pip install 'seqpipe[plot]')")


def _add_validate(commands, overrides: argparse.ArgumentParser) -> None:
    """`seqpipe validate`: the config and the data's schema, footers, values."""
    validate = commands.add_parser(
        "validate", parents=[overrides],
        help="check a config and the data's schema, from the Parquet footers alone",
        description="Checks every config key, then every file's schema against the config "
        "(columns exist, types fit), and says whether the source will stream. Reads only "
        "the Parquet footers; does not import TensorFlow.")
    validate.add_argument("config", metavar="CONFIG", help="the YAML config")
    validate.add_argument("--data", action="store_true",
                          help="also read every value (about as long as an epoch) and report "
                          "every problem reading would stop at: corrupt pages, null times, "
                          "repeated times, NaN features without fill_value, conflicting "
                          "per-sequence values, unequal nested lists, infinite labels")


def _add_materialize(commands, overrides: argparse.ArgumentParser) -> None:
    """`seqpipe materialize`: the preprocessing step."""
    materialize = commands.add_parser(
        "materialize", parents=[overrides],
        help="write the processed sequences as TFRecord shards, one folder per split",
        description="The preprocessing step: groups, orders, truncates and fills the "
        "sequences once and writes them as sharded TFRecord files (one tf.train.Example "
        "per sequence) with a manifest, one folder per part of the config's split. Read "
        "them back with seqpipe.load_materialized(DIR, split=...). The output appears "
        "only when complete.")
    materialize.add_argument("config", metavar="CONFIG", help="the YAML config")
    materialize.add_argument("--out", required=True, metavar="DIR",
                             help="the output folder, a path or a URI such as gs://bucket/dir "
                             "(must not exist, unless --overwrite)")
    materialize.add_argument("--overwrite", action="store_true",
                             help="replace DIR, once the new output is complete")
    materialize.add_argument("--shard-mb", type=float, default=64, metavar="MB",
                             help="start a new TFRecord file after this many MB "
                             "(default: %(default)s)")
    materialize.add_argument("--runner", metavar="RUNNER",
                             help="run as an Apache Beam pipeline on this runner "
                             "(DirectRunner, DataflowRunner, FlinkRunner, ...), for sources "
                             "too big to group on one machine; options this command does "
                             "not know (--project=..., --direct_num_workers=2) go to Beam. "
                             "Needs pip install 'seqpipe[beam]'")


def _add_serve(commands, overrides: argparse.ArgumentParser) -> None:
    """`seqpipe serve dispatcher|worker`: the tf.data service."""
    serve = commands.add_parser(
        "serve", help="run a tf.data service dispatcher or worker (a container entry point)",
        description="Starts a tf.data service server and serves until stopped. Trainers "
        "then read with seqpipe.load_materialized(DIR, service='grpc://HOST:PORT'); every "
        "worker must be able to read DIR at the same path.")
    servers = serve.add_subparsers(dest="server", required=True, metavar="SERVER")
    dispatcher = servers.add_parser("dispatcher", help="the dispatcher: hands out work")
    dispatcher.add_argument("--port", type=int, default=5050,
                            help="port to listen on (default: %(default)s; 0 picks one)")
    dispatcher.add_argument("--worker-timeout", type=float, default=10, metavar="SECONDS",
                            help="a worker silent this long is dropped from its jobs; an "
                            "epoch it had work in ends once it is back at its address "
                            "(default: %(default)s)")
    worker = servers.add_parser("worker", help="a worker: runs the input pipelines")
    worker.add_argument("--dispatcher", required=True, metavar="HOST:PORT",
                        help="the dispatcher's address")
    worker.add_argument("--port", type=int, default=0,
                        help="port to listen on (default: 0, any free port)")
    worker.add_argument("--address", default="localhost:%port%", metavar="HOST:%port%",
                        help="how consumers reach this worker; %%port%% is replaced by the "
                        "port (default: %(default)s; give the host's name when trainers "
                        "run elsewhere)")


def _add_demo(commands, overrides: argparse.ArgumentParser) -> None:
    """`seqpipe demo`: data, a pipeline and a model, end to end."""
    demo = commands.add_parser(
        "demo", parents=[overrides],
        help="generate ICU-style data, build the pipeline, train a small model",
        description="Writes a small ICU-style dataset to a cache folder (once), builds the "
        "pipeline from the packaged configs/demo.yaml, trains a two-output GRU and prints "
        "what seqpipe read and the loss Keras reports beside the true masked mean.")
    from seqpipe.cli.demo import default_cache_dir

    demo.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                      help="where the demo data goes (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    demo.add_argument("--patients", type=int, default=2000,
                      help="sequences to generate (default: 2000)")

def _config(path: str, overrides: dict):
    from seqpipe.config import load_config

    if not str(path).endswith((".yaml", ".yml")) and Path(path).is_dir():
        raise ConfigError(f"{path} is a folder; this command takes a YAML config file")
    return load_config(path, overrides)

def _inspect(args, overrides: dict) -> None:
    from seqpipe.cli.inspect import config_for, format_inspection, inspect, plot

    found = inspect(*config_for(args.target, overrides))
    print(format_inspection(found))
    if args.plot is not None:
        plot(found, args.plot)
        print(f"wrote {args.plot}")

def _validate(args, overrides: dict) -> None:
    from seqpipe.cli.validate import validate, validate_data

    config = _config(args.config, overrides)
    print(f"config: {args.config}: every key known, every value within its rule")
    for line in validate(config):
        print(line)
    if not args.data:
        print("valid (read nothing but the config and the Parquet footers)")
        return
    read, problems = validate_data(config)
    for line in read:
        print(line)
    for problem in problems:
        print(f"  problem: {problem}")
    if problems:
        raise DataError(f"{len(problems):,} problem{'s' if len(problems) != 1 else ''} in the "
                        f"data, listed above; fix them and validate again")
    print("valid (read every value)")

def _materialize(args, overrides: dict, beam_options: list) -> None:
    from seqpipe._internal import paths
    if args.shard_mb <= 0:
        raise ConfigError(f"--shard-mb must be positive; got {args.shard_mb}")
    config = _config(args.config, overrides)
    shard_bytes = int(args.shard_mb * 2**20)
    if args.runner is None:
        from seqpipe.materialized.write import materialize

        manifest = materialize(config, args.out, overwrite=args.overwrite,
                               shard_bytes=shard_bytes, progress=True)
        how = ""
    else:
        from seqpipe.materialized.beam import materialize_on_beam

        manifest = materialize_on_beam(config, args.out, args.runner, beam_options,
                                       overwrite=args.overwrite, shard_bytes=shard_bytes)
        how = f" on Apache Beam ({args.runner})"
    print(f"wrote {args.out}{how}:")
    for part, info in manifest["parts"].items():
        print(f"  {part}: {info['sequences']:,} sequences, {info['kept_timesteps']:,} "
              f"timesteps, {len(info['shards'])} shard{'s' if len(info['shards']) != 1 else ''}"
              f", {info['bytes'] / 2**20:,.1f} MB")
    print(f"  manifest: {paths.join(args.out, 'manifest.json')} (config sha256 "
          f"{manifest['config_sha256'][:12]}...)")

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not (args.command == "materialize" and args.runner):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}"
                     + (" (options for Beam need --runner)" if args.command == "materialize"
                        else ""))
    overrides = dict(getattr(args, "overrides", []))
    try:
        if args.command == "inspect":
            _inspect(args, overrides)
        elif args.command == "validate":
            _validate(args, overrides)
        elif args.command == "materialize":
            _materialize(args, overrides, unknown)
        elif args.command == "serve":
            from seqpipe.tfdata.service import serve

            serve(args)
        elif args.command == "demo":
            from seqpipe.cli.demo import run_demo

            run_demo(args.cache_dir, epochs=args.epochs, patients=args.patients,
                     overrides=overrides)
    except (SeqpipeError, OSError) as e:
        print(f"seqpipe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqpipe: interrupted", file=sys.stderr)
        return 130
    return 0
