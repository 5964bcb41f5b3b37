"""Accumulation: weights that make each run of `batching.accumulation_steps` batches one mean.

With `gradient_accumulation_steps=k`, a Keras optimizer applies the mean of k batches'
gradients. Each batch's weights make its own loss a mean over its own labels (or
sequences), so the mean of k such losses weighs a batch of few labels as much as one of
many: not the mean over the k batches' labels. Batch j of a run is rescaled by
`k * D_j / D`, where `D_j` is what its weight mode averages over in it (present labels for
`batch_mean`; sequences with a present label for `sequence_mean`) and `D` the run's sum:
the mean of the k losses is then the mean over all the run's labels (or sequences).
`binary` and `global_mean` weigh every label alike across batches already and are left as
they are.

Runs start at the epoch's first batch; the batches per epoch are a multiple of k (each kind
sees to it), so no run is cut short. A run may cross blocks: blocks are held until the runs
they end are complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from seqpipe.batches.block import Block
from seqpipe.config import PipelineConfig

# units(block, output) -> (batches,) what the output's weight mode averages over, per batch
Units = Callable[[Block, str], np.ndarray]

RESCALED = ("batch_mean", "sequence_mean")


def accumulated(blocks: Iterable[Block], steps: int, config: PipelineConfig,
                units: Units) -> Iterator[Block]:
    """`blocks`, starting on a run's first batch, with the weights of every run of `steps`
    consecutive batches rescaled (see the module's docstring)."""
    outputs = [name for name in config.outputs if config.weight_mode(name) in RESCALED]
    if steps == 1 or not outputs:
        yield from blocks
        return
    pending: list = []  # (block, batch, {output: its units}) of runs not complete yet
    waiting: list = []  # blocks not yet handed on, in order
    for block in blocks:
        waiting.append(block)
        found = {name: units(block, name) for name in outputs}
        pending += [(block, j, {name: int(u[j]) for name, u in found.items()})
                    for j in range(len(block.places))]
        while len(pending) >= steps:
            _rescale(pending[:steps], outputs, steps)
            del pending[:steps]
        unfinished = {id(b) for b, _, _ in pending}
        while waiting and id(waiting[0]) not in unfinished:
            yield waiting.pop(0)
    if pending:
        raise AssertionError(f"the epoch's batches are not a multiple of "
                             f"accumulation_steps={steps} (a seqpipe bug; please report it)")


def _rescale(run: list, outputs: list, steps: int) -> None:
    """Rescales the weights of one run's batches by `steps * D_j / D`."""
    for name in outputs:
        total = sum(found[name] for _, _, found in run)
        for block, j, found in run:
            p, axis = block.places, block.axes[name]
            a, size = int(p.start[axis][j]), int(p.size(axis)[j])
            factor = steps * found[name] / total if total else 0.0
            block.sample_weight[name][a:a + size] *= np.float32(factor)


def units(block: Block, output: str, config: PipelineConfig) -> np.ndarray:
    """(batches,) what the output's weight mode averages over in each batch of a block of
    one sequence (or window) per row: its present labels; for `sequence_mean` of a
    per-timestep output, its rows with a present label."""
    p, axis, valid = block.places, block.axes[output], block.valid[output]
    if config.weight_mode(output) == "sequence_mean" and config.levels[output] == "timestep":
        return np.array([np.count_nonzero(valid[a:a + r * t].reshape(r, t).any(axis=1))
                         for a, r, t in zip(p.start[axis].tolist(), p.rows.tolist(),
                                            p.steps[axis].tolist())], dtype=np.int64)
    from seqpipe._internal.runs import count_runs  # numba, imported with the first batch

    return count_runs(valid, p.start[axis], p.size(axis))
