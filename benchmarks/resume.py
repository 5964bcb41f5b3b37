"""Time to the first batch of a resumed epoch against a fresh epoch's, on the reference file.

    python benchmarks/resume.py [--pairs 7]

The reference file and config of `benchmarks/epoch.py` (50 k sequences, 6.2 M rows in six
row groups, auto buckets, batch 64, shuffle buffer 10,000, maxlen 512), and the same
data written in row groups of 65,536 rows (a resumed epoch reads by row group, so their
size matters). A restarted job builds its
dataset and asks for the first batch: timed from `build_dataset` to that batch, for

- `fresh`: epoch 1 from its first batch (`resume={"epoch": 1, "batch": 0}`);
- `resumed`: epoch 1 from the batch 90 % of the way through it;
- `replayed` (once, for scale): what resuming by replaying costs, epoch 1 read up to
  that batch.

Fresh and resumed alternate, `--pairs` pairs after one untimed run of each, with the
NumPy output and with tf.data; the ratio of each pair is taken in the same run, because
absolute times on shared machines are noisy. Median and range. The resumed batches are
checked against the uninterrupted epoch's (hashes of every array).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import DATA, ensure_data, make_reference, seqpipe_config  # noqa: E402

import seqpipe  # noqa: E402


def first_batch(config: dict, format: str, position: dict) -> float:
    start = time.perf_counter()
    dataset = seqpipe.build_dataset(config, format=format, resume=position)
    next(iter(dataset))
    return time.perf_counter() - start


def digest(element) -> str:
    found = hashlib.sha256()
    for part in element:
        for name in sorted(part):
            found.update(np.ascontiguousarray(np.asarray(part[name])).tobytes())
    return found.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    reference = ensure_data(quick=True, lstm_sequences=3000)["reference"]
    small = DATA / "reference-50000-rowgroups-65536.parquet"
    if not small.exists():
        make_reference(small, 50_000, row_group_size=65_536)
    for path in (reference, small):
        measure(path, args.pairs)


def measure(path: Path, pairs: int) -> None:
    config = seqpipe_config(path)
    import pyarrow.parquet as pq

    print(f"\n{path.name}: {pq.ParquetFile(path).metadata.num_row_groups} row groups")
    batches = len(seqpipe.build_dataset(config, format="numpy"))
    late = int(batches * 0.9)
    fresh, resumed = {"epoch": 1, "batch": 0}, {"epoch": 1, "batch": late}
    print(f"reference file: {batches:,} batches per epoch; resuming at batch {late:,} of "
          f"epoch 1 (90 %)")

    whole = seqpipe.build_dataset(config, format="numpy")
    expected = [digest(b) for b in whole.epoch(1)][late:]
    got = [digest(b) for b in seqpipe.build_dataset(config, format="numpy", resume=resumed)]
    assert got == expected, "the resumed epoch differs from the uninterrupted one"
    print(f"checked: the resumed epoch's {len(got):,} batches equal the uninterrupted "
          f"epoch's from batch {late:,}")

    start = time.perf_counter()
    replay = seqpipe.build_dataset(config, format="numpy")
    for k, _ in enumerate(replay.epoch(1)):
        if k == late:
            break
    replayed = time.perf_counter() - start

    for format in ("numpy", "tf"):
        first_batch(config, format, fresh)  # untimed: imports, caches
        first_batch(config, format, resumed)
        times: dict = {"fresh": [], "resumed": []}
        for _ in range(pairs):
            times["fresh"].append(first_batch(config, format, fresh))
            times["resumed"].append(first_batch(config, format, resumed))
        ratios = [r / f for f, r in zip(times["fresh"], times["resumed"])]
        print(f"{format}: first batch, resumed at 90 % / fresh: median "
              f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}, "
              f"{pairs} pairs); medians {statistics.median(times['resumed']):.3f} s vs "
              f"{statistics.median(times['fresh']):.3f} s")
    print(f"replaying the epoch up to batch {late:,} instead: {replayed:.2f} s")


if __name__ == "__main__":
    main()
