"""A/B: one epoch of an older commit against the working tree, alternating in one process.

    python benchmarks/ab.py COMMIT [--pairs 10] [--windows]

The package as it was at COMMIT is copied out of git into a temporary folder and renamed
`seqpipe_old` (every `seqpipe` import in it rewritten), so that both versions load side by
side. Each pair runs one epoch (build_dataset and every batch, the config of epoch.py) of
each version on the reference file, in alternating order; the ratio of each pair's times is
taken in the same run, because absolute times on shared machines are noisy. Peak memory
is not comparable inside one process: use epoch.py's per-process table for that.
`--windows` runs the forecasting windows of windows.py over its 1x file instead;
`--in-memory` hands both the reference file as a pyarrow Table (`data=`, grouped whole
every epoch); `--materialized` reads the reference file materialized once
(`load_materialized`).
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import ensure_data, seqpipe_config  # noqa: E402


def load_old(commit: str, folder: Path):
    """The package at `commit`, importable as `seqpipe_old`."""
    archive = subprocess.run(["git", "archive", commit, "seqpipe"], cwd=HERE.parent,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "seqpipe").rename(folder / "seqpipe_old")
    for path in (folder / "seqpipe_old").rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bseqpipe\.", "seqpipe_old.", re.sub(
            r"\bfrom seqpipe import\b", "from seqpipe_old import", text)))
    sys.path.insert(0, str(folder))
    import seqpipe_old

    return seqpipe_old


def epoch(package, config: dict, materialized: Optional[Path] = None, **options):
    def run() -> float:
        start = time.perf_counter()
        dataset = (package.load_materialized(materialized) if materialized is not None else
                   package.build_dataset(package.load_config(config), **options))
        for _ in dataset:
            pass
        return time.perf_counter() - start
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--read-early", action="store_true",
                        help="build the new datasets with read_early=True")
    parser.add_argument("--windows", action="store_true",
                        help="the forecasting windows of windows.py instead")
    parser.add_argument("--in-memory", action="store_true",
                        help="the reference file as a pyarrow Table (data=)")
    parser.add_argument("--materialized", action="store_true",
                        help="the reference file materialized once (load_materialized)")
    args = parser.parse_args()
    if args.windows:
        import windows

        config = windows.seqpipe_config(windows.series_file(1))
    else:
        config = seqpipe_config(ensure_data(quick=True, lstm_sequences=5000)["reference"])
    with tempfile.TemporaryDirectory() as folder:
        old = load_old(args.commit, Path(folder))
        import seqpipe as new

        for name in ("seqpipe", "seqpipe_old"):
            logging.getLogger(name).setLevel(logging.ERROR)
        options: dict = {"read_early": True} if args.read_early else {}
        shared: dict = {}
        if args.in_memory:
            shared["data"] = pq.read_table(config["source"]["path"])
        own: dict = {"old": {}, "new": {}}
        if args.materialized:  # each version its own copy: the manifest names the package
            for which, package in (("old", old), ("new", new)):
                own[which]["materialized"] = Path(folder) / f"materialized-{which}"
                package.materialize(config, own[which]["materialized"])
        runs = {"old": epoch(old, config, **shared, **own["old"]),
                "new": epoch(new, config, **shared, **own["new"], **options)}
        runs["old"](), runs["new"]()  # warm-up: compiled code, TensorFlow's first ops
        times: dict = {"old": [], "new": []}
        for pair in range(args.pairs):
            for which in (("old", "new") if pair % 2 == 0 else ("new", "old")):
                times[which].append(runs[which]())
    ratios = [n / o for n, o in zip(times["new"], times["old"])]
    what = ("the windows of windows.py" if args.windows else "the reference file"
            + (" as a pyarrow Table" if args.in_memory else "")
            + (", materialized" if args.materialized else ""))
    print(f"A/B against {args.commit}, {args.pairs} pairs of epochs of {what}, "
          f"alternating in one process{' (new: read_early=True)' if args.read_early else ''}:")
    print(f"  old: median {statistics.median(times['old']):.3f} s")
    print(f"  new: median {statistics.median(times['new']):.3f} s")
    print(f"  new / old per pair: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
