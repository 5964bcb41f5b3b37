"""What the integrity checks cost: paired runs with them on and off, in one process.

    python benchmarks/checks.py [--pairs 8]

The checks: the footers' statistics at build time, each file's fingerprint taken at build
and compared after every row group read, Parquet page checksums verified while reading,
and each materialized record's id compared with the index. They are turned off here by
swapping seqpipe's own functions for no-ops, which only a benchmark may do. Each pair runs
one epoch (build_dataset or load_materialized, and every batch) with the checks and one
without, in alternating order, on the reference file of `benchmarks/epoch.py`, on a copy
of it written with page checksums, and on its materialized records; the ratio of each
pair's times is taken in the same run, because absolute times on shared machines are
noisy. Last, `seqpipe validate --data`'s pass over every value is paired with an epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch import DATA, ensure_data, seqpipe_config  # noqa: E402


def with_checksums(path: Path) -> Path:
    """A copy of `path` whose pages carry CRC checksums, written once."""
    copy = DATA / f"{path.stem}-crc.parquet"
    if not copy.exists():
        print(f"writing {copy.name} ...", file=sys.stderr, flush=True)
        source = pq.ParquetFile(path)
        with pq.ParquetWriter(copy, source.schema_arrow, write_page_checksum=True) as writer:
            for group in range(source.num_row_groups):
                writer.write_table(source.read_row_group(group))
    return copy


@contextlib.contextmanager
def checks_off():
    """seqpipe without its integrity checks: no footer statistics, fingerprints, page
    checksums or record ids."""
    from seqpipe.materialized import records
    from seqpipe.parquet import source, stream

    saved = (source.check_footers, source.fingerprint, stream._check_unchanged, stream._LOCAL,
             source.PARQUET, records._check_ids)
    source.check_footers = lambda files: []
    source.fingerprint = lambda filesystem, path: None
    stream._check_unchanged = lambda part: None
    stream._LOCAL = pads.ParquetFragmentScanOptions(pre_buffer=False)
    source.PARQUET = "parquet"
    records._check_ids = lambda *args: None
    try:
        yield
    finally:
        (source.check_footers, source.fingerprint, stream._check_unchanged, stream._LOCAL,
         source.PARQUET, records._check_ids) = saved


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def paired(first, second, pairs: int) -> tuple[list, list]:
    """Times `first` and `second` `pairs` times each, alternating which goes first."""
    first(), second()  # warm-up: compiled code, TensorFlow's first use of its ops
    a, b = [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            a.append(seconds(first))
            b.append(seconds(second))
        else:
            b.append(seconds(second))
            a.append(seconds(first))
    return a, b


def row(name: str, a: list, b: list) -> str:
    ratios = [x / y for x, y in zip(a, b)]
    return (f"| {name} | {statistics.median(a):.3f} | {statistics.median(b):.3f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
            f"{len(ratios)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    reference = ensure_data(quick=True, lstm_sequences=5000)["reference"]
    import seqpipe
    from seqpipe.cli.validate import validate_data

    logging.getLogger("seqpipe").setLevel(logging.ERROR)

    def epoch(path):
        config = seqpipe.load_config(seqpipe_config(path))
        return lambda: [None for _ in seqpipe.build_dataset(config)]

    def without(run):
        def run_without():
            with checks_off():
                run()
        return run_without

    print("| what | with checks, s | without, s | ratio with/without: median of pairs "
          "(range) | pairs |")
    print("|---|---|---|---|---|")
    for name, path in {"reference file (no page checksums)": reference,
                       "reference file with page checksums": with_checksums(reference)}.items():
        print(row(f"epoch, {name}", *paired(epoch(path), without(epoch(path)), args.pairs)),
              flush=True)
    out = DATA / "materialized-checks"
    seqpipe.materialize(seqpipe_config(reference), out, overwrite=True)
    loaded = lambda: [None for _ in seqpipe.load_materialized(out)]  # noqa: E731
    print(row("epoch, materialized records", *paired(loaded, without(loaded), args.pairs)),
          flush=True)
    shutil.rmtree(out, ignore_errors=True)
    config = seqpipe.load_config(seqpipe_config(reference))
    a, b = paired(lambda: validate_data(config), epoch(reference), args.pairs)
    print()
    print("| what | validate --data, s | one epoch, s | ratio | pairs |")
    print("|---|---|---|---|---|")
    print(row("reference file", a, b))


if __name__ == "__main__":
    main()
