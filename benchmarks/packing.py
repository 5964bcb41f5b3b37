"""Packed rows against bucketed batches on the reference file of `benchmarks/epoch.py`.

    python benchmarks/packing.py [--pairs 7]

The reference file: 50 k sequences, lognormal lengths (median 89, mean 124), maxlen 512
(truncating the start), batch 32, shuffle buffer 10,000. Three ways to batch it:
`bucketed` (auto buckets, each batch padded to its longest: many shapes), `static`
(auto buckets with `static_shapes`: one shape per bucket) and `packed`
(`batching.packing.length: 512`: one shape).

1. For two epochs of each: the distinct batch shapes and the padding waste (padded / all
   timesteps of the epoch's batches). For the packed epochs, also: every kept timestep
   once, checked by the sum and count of one feature's kept values and the present labels,
   computed here from the file with pyarrow and NumPy against the batches' real positions.
2. Time of one epoch through tf.data (`build_dataset` and every batch), packed and
   bucketed alternately in one process, `--pairs` pairs after one untimed epoch of each;
   the ratio of each pair is taken in the same run, because absolute times on shared
   machines are noisy. Median and range.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from epoch import ensure_data, seqpipe_config  # noqa: E402

import seqpipe  # noqa: E402

BATCH, LENGTH = 32, 512


def configs(path: Path) -> dict:
    return {
        "bucketed": seqpipe_config(path, batch_size=BATCH),
        "static": seqpipe_config(path, batch_size=BATCH, static_shapes=True),
        "packed": seqpipe_config(path, batch_size=BATCH, bucket_boundaries=None,
                                 packing={"length": LENGTH}),
    }


def truth(path: Path) -> dict:
    """From the file alone: the kept (last 512) values of f0, their count, and the present
    labels among them."""
    table = pq.read_table(path, columns=["id", "t", "f0", "label"]).sort_by(
        [("id", "ascending"), ("t", "ascending")])
    ids = table["id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    position = np.arange(len(ids)) - np.repeat(starts, ends - starts)
    from_end = np.repeat(ends - starts, ends - starts) - position
    kept = from_end <= 512  # truncating: pre keeps the last maxlen timesteps
    f0 = table["f0"].to_numpy().astype(np.float64)
    label = table["label"].to_numpy()
    return {"timesteps": int(kept.sum()), "f0": float(f0[kept].sum()),
            "labels": int((kept & ~np.isnan(label)).sum())}


def epoch_figures(pipeline: seqpipe.Pipeline, epoch: int) -> dict:
    shapes, real, total, f0, labels = set(), 0, 0, 0.0, 0
    for batch in pipeline.batches(epoch):
        features = batch.x["features"]
        shapes.add(features.shape)
        total += features.shape[0] * features.shape[1]
        if "segment_ids" in batch.x:
            at = batch.x["segment_ids"] > 0
            f0 += float(features[..., 0][at].astype(np.float64).sum())
            labels += int((batch.sample_weight["label"] > 0).sum())
            real += int(at.sum())
        else:
            real += int(batch.lengths.sum())
    return {"shapes": len(shapes), "waste": 1 - real / total, "timesteps": real,
            "f0": f0, "labels": labels}


def timed_epoch(config: dict) -> float:
    start = time.perf_counter()
    for _ in seqpipe.build_dataset(seqpipe.load_config(config)):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    path = ensure_data(quick=True, lstm_sequences=3000)["reference"]
    found = configs(path)
    expected = truth(path)
    print(f"reference: {path.name}; kept timesteps {expected['timesteps']:,}, present "
          f"labels {expected['labels']:,}")
    for name, config in found.items():
        pipeline = seqpipe.Pipeline(seqpipe.load_config(config))
        for epoch in (0, 1):
            got = epoch_figures(pipeline, epoch)
            line = (f"{name:9s} epoch {epoch}: {got['shapes']:4d} batch shapes, padding waste "
                    f"{got['waste']:.2%}, {pipeline.report.batches_per_epoch:,} batches")
            if name == "packed":
                same = (got["timesteps"] == expected["timesteps"]
                        and got["labels"] == expected["labels"]
                        and abs(got["f0"] - expected["f0"]) <= 1e-6 * abs(expected["f0"]) + 1e-3)
                line += (f"; kept timesteps {got['timesteps']:,}, present labels "
                         f"{got['labels']:,}, sum of f0 {got['f0']:.3f} (file "
                         f"{expected['f0']:.3f}): {'equal' if same else 'DIFFERENT'}")
                line += f"; segments per row {pipeline.report.segments_per_row:.2f}"
            print(line, flush=True)
    timed_epoch(found["packed"]), timed_epoch(found["bucketed"])  # warm-up
    ratios, packed_times, bucketed_times = [], [], []
    for pair in range(args.pairs):
        order = ("packed", "bucketed") if pair % 2 == 0 else ("bucketed", "packed")
        times = {name: timed_epoch(found[name]) for name in order}
        packed_times.append(times["packed"])
        bucketed_times.append(times["bucketed"])
        ratios.append(times["packed"] / times["bucketed"])
        print(f"pair {pair + 1}: packed {times['packed']:.3f} s, bucketed "
              f"{times['bucketed']:.3f} s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"packed / bucketed epoch through tf.data: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f} to {max(ratios):.3f}) over {args.pairs} pairs; medians "
          f"{statistics.median(packed_times):.3f} s and {statistics.median(bucketed_times):.3f} s")


if __name__ == "__main__":
    main()
