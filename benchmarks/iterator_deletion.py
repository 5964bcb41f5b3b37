"""How long deleting a tf.data iterator takes at the end of an epoch, with tf.data's
autotuner on and off.

    python benchmarks/iterator_deletion.py [--rounds 20]

seqpipe turns autotuning off (`seqpipe.tfdata.dataset._options`): deleting an iterator joins the
autotuner's model thread, and on our 2-core machines that often took about a second.
Keras deletes its iterator at the end of every epoch, and a `for` loop over a dataset
deletes it when the loop ends, so the second lands in the epoch's time. Each round runs
one epoch of the reference file with seqpipe's options and one with autotuning turned
back on, in alternating order, and times `del iterator` alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from epoch import ensure_data, seqpipe_config  # noqa: E402


def deletion_seconds(autotune: bool, config) -> float:
    import tensorflow as tf

    import seqpipe

    dataset = seqpipe.build_dataset(config)
    if autotune:
        options = tf.data.Options()
        options.autotune.enabled = True
        dataset = dataset.with_options(options)
    iterator = iter(dataset)
    for _ in iterator:
        pass
    start = time.perf_counter()
    del iterator
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = ensure_data(quick=True, lstm_sequences=5000)["reference"]

    import seqpipe

    logging.getLogger("seqpipe").setLevel(logging.ERROR)
    config = seqpipe.load_config(seqpipe_config(path))
    seconds = {False: [], True: []}
    for round_ in range(args.rounds):
        for autotune in ((False, True) if round_ % 2 else (True, False)):
            seconds[autotune].append(deletion_seconds(autotune, config))
    print(f"deleting the iterator after one epoch, {args.rounds} epochs each:")
    for autotune, values in seconds.items():
        slow = sum(value > 0.1 for value in values)
        print(f"  autotune {'on ' if autotune else 'off'}: {slow} of {len(values)} took over "
              f"0.1 s; median {statistics.median(values) * 1e3:.1f} ms, "
              f"max {max(values):.2f} s")


if __name__ == "__main__":
    main()
