"""Dataset: the thin tf.data layer over `Pipeline`'s NumPy batches.

TensorFlow is imported here, when a dataset is built, and nowhere earlier: importing
seqpipe or validating a config stays fast and TensorFlow-free.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Optional, Union

import numpy as np

from seqpipe._internal.lazy import tensorflow
from seqpipe._internal.threads import Background
from seqpipe.batches.kinds import batch_structure
from seqpipe.config import PipelineConfig, load_config
from seqpipe.errors import SeqpipeError
from seqpipe.pipeline import Pipeline, Resume
from seqpipe.tfdata import eager, handoff, stages

logger = logging.getLogger("seqpipe")


def tf_dataset(pipeline: Pipeline, read_early: bool = False,
               resume: Optional[Resume] = None):
    """The `tf.data.Dataset` of a pipeline's batches (see `seqpipe.build_dataset`)."""
    tf = tensorflow()

    config, token = pipeline.config, next(_TOKENS)
    _LIVE[token] = _Epochs(pipeline, token, read_early, resume or Resume(0, 0))
    # The dataset is traced once per shape of config and told which dataset's epochs to
    # read by a token; see `_traced_dataset`.
    dataset = _traced_dataset(config)(tf.constant(token, tf.int64))
    # Every epoch has the same number of batches (bucket sizes do not change), and saying
    # so lets Keras show progress from the first epoch instead of warning at its end.
    batches = pipeline.report.batches_per_epoch
    if resume is None or not resume.batch:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    else:
        # The resumed first pass is shorter, and Keras reads the batches per epoch once,
        # from the cardinality: it must say the full epoch's without asserting it. An
        # epoch followed by an endless run of nothing is "infinite" to tf.data, and taking
        # the epoch's batches of that makes its cardinality exactly that, with no check.
        nothing = tf.data.Dataset.from_generator(
            _nothing, output_signature=dataset.element_spec).repeat()
        dataset = dataset.concatenate(nothing).take(batches)
    dataset = eager.batches(dataset.with_options(_options()),
                            starting=functools.partial(_start, token))
    # The pipeline goes with the dataset. Datasets made from this one, and iterators over
    # them, keep it alive while they are in use.
    weakref.finalize(dataset, _forget, token)
    return dataset


def _nothing() -> Iterator[tuple]:
    """No batches, of a cardinality tf.data does not know (see `tf_dataset`)."""
    return iter(())


# The epochs of every dataset alive, by the token its graph holds.
_LIVE: dict = {}
_TOKENS = itertools.count()


def _forget(token: int) -> None:
    epochs = _LIVE.pop(token, None)
    if epochs is not None:
        epochs.close()


def _epochs_of(token) -> Iterator[tuple]:
    """The generator the dataset's source (`stages.generator`) calls at the start of every
    epoch of every dataset (with the dataset's token): the one TensorFlow keeps for the life
    of the process."""
    epochs = _LIVE.get(int(token))
    if epochs is None:
        raise RuntimeError("this seqpipe dataset was deleted: keep a reference to the "
                           "dataset (or to one made from it) while iterating it")
    return epochs()


class _Epochs:
    """One dataset's epochs: each call yields the next epoch's blocks, handed off
    (`handoff.HandOff`). `close` stops a first epoch nobody read and lets go of the pipeline.

    Epoch k is the pass after k passes read to their last batch, as Grain and NumPy count
    them: a pass cut short (Keras on JAX, PyTorch or tf.distribute draws one batch to
    build a model before epoch 0; a loop that breaks) does not use up an epoch's shuffle.
    A batch is cut out of its block only when it is asked for, and cutting an epoch's last
    batch records the epoch (`handoff.finished_epochs`). A pass's epoch starts when its
    iterator is made (`start`), or when it asks for its first block, whichever is first."""

    def __init__(self, pipeline: Pipeline, token: int, read_early: bool,
                 resume: Resume) -> None:
        self._pipeline: Optional[Pipeline] = pipeline
        self._token, self._resume = token, resume
        self._lock = threading.Lock()
        # A producer started before its pass asked for it, and its epoch. With read_early,
        # the first epoch is read while TensorFlow builds the dataset and its iterator; it
        # stops when the dataset is deleted unread.
        self._warm: Optional[tuple[int, Background]] = None
        if read_early:
            self.start()

    def start(self) -> None:
        """Starts the next pass's epoch now, unless started already: a pass begins when
        an iterator is made (`eager.batches`), and TensorFlow sets the iterator up (it
        instantiates the dataset's functions) before it asks for the first block."""
        with self._lock:
            pipeline = self._pipeline
            if self._warm is None and pipeline is not None:
                epoch = self._next_epoch()
                self._warm = (epoch, Background(self._pieces(
                    pipeline, epoch, self._resume.start(epoch))))

    def _next_epoch(self) -> int:
        return max(int(handoff.finished_epochs().lookup(np.int64(self._token))) + 1,
                   self._resume.epoch)

    def __call__(self) -> Iterator[tuple]:
        pipeline = self._pipeline
        if pipeline is None:
            raise RuntimeError("this seqpipe dataset was deleted: keep a reference to the "
                               "dataset (or to one made from it) while iterating it")
        epoch = self._next_epoch()
        with self._lock:
            warm, self._warm = self._warm, None
        if warm is not None and warm[0] == epoch and not warm[1].stopped:
            producer = warm[1]
        else:  # none started, or for another epoch (a pass cut short, two iterators)
            if warm is not None:
                warm[1].stop()
            producer = Background(self._pieces(pipeline, epoch, self._resume.start(epoch)))
        # A block of no batches goes first. TensorFlow sets up its per-block machinery (the
        # function that cuts a block into batches) on the first block it sees; with this
        # one it does so while the first real block is still being assembled.
        yield handoff.no_batches(pipeline.config)
        yield from producer

    def _pieces(self, pipeline: Pipeline, epoch: int, start: int) -> Iterator[tuple]:
        total, handed = pipeline.report.batches_per_epoch, start
        try:
            for block in pipeline.blocks(epoch, start):
                handed += len(block.places)
                finish = (self._token, epoch) if handed == total else None
                yield handoff.hand_off(block, pipeline.config, finish)
        except SeqpipeError as e:
            # TensorFlow hands the error on as an InvalidArgumentError whose first line
            # names its own function; the log says it first, as it happens.
            logger.error("seqpipe: error in epoch %d, while reading: %s", epoch, e)
            raise

    def close(self) -> None:
        with self._lock:
            warm, self._warm, self._pipeline = self._warm, None, None
        if warm is not None:
            warm[1].stop()


def _start(token: int) -> None:
    """Starts the next epoch of the dataset with this token, if it is alive."""
    epochs = _LIVE.get(token)
    if epochs is not None:
        epochs.start()


def _options():
    """Autotuning and tf.data's default graph rewrites off.

    Autotuning: the pipeline has no AUTOTUNE parameter for it to tune, and deleting an
    iterator joins the autotuner's model thread, which often sleeps through the wake-up
    (benchmarks/iterator_deletion.py); Keras deletes its iterator at the end of every epoch.

    Default rewrites (map parallelization, fusions, injected prefetches): none applies to
    seqpipe's stages, and running them made every epoch's iterator slower to create.

    A user who appends stages of their own can turn either back on with `with_options`:
    the later options win."""
    tf = tensorflow()

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


_TRACED: dict = {}
_TRACED_LOCK = threading.Lock()


def _traced_dataset(config: PipelineConfig):
    """The dataset of a pipeline's epochs, from its token, as a `tf.function` traced once
    per process for each shape of config (input and output names, levels, widths): each
    pass over the dataset calls the generator (`_epochs_of`) once, for one epoch.

    Built afresh for every dataset, the generator and `flat_map` traced their functions
    each time, on the main thread; and so did `flat_map` over a traced function, wrapping
    it. TensorFlow also keeps the Python functions a traced dataset calls, with whatever
    they refer to, as long as the trace lives (`from_generator` ties them to the global
    graph, tensorflow/tensorflow#57690): here that is one function (`_epochs_of`) per shape
    of config, and a dataset's pipeline goes when the dataset does."""
    tf = tensorflow()

    key = repr(batch_structure(config))
    with _TRACED_LOCK:
        if key not in _TRACED:
            spec, split = handoff.spec(config), handoff.split_block(config)

            def dataset(token):
                blocks = stages.generator(_epochs_of, token, spec)
                # Blocks are prefetched; batches are not. Cutting a batch out of its block
                # is a few slices, cheaper than handing it over from a prefetch thread.
                return stages.flat_map(blocks.prefetch(1), split)

            # No AutoGraph: no function here has control flow on tensors to convert.
            _TRACED[key] = tf.function(dataset, autograph=False,
                                       input_signature=[tf.TensorSpec((), tf.int64)])
        return _TRACED[key]


def element_spec(config: Union[PipelineConfig, Mapping, str, os.PathLike]):
    """The `tf.TensorSpec` structure of one batch, from the config alone (a `PipelineConfig`,
    a YAML path or a mapping, as `build_dataset` takes)."""
    config = config if isinstance(config, PipelineConfig) else load_config(config)
    tf = tensorflow()

    return _map_specs(lambda s: tf.TensorSpec(shape=s["shape"], dtype=s["dtype"]),
                      batch_structure(config))


def _map_specs(function, structure):
    if isinstance(structure, tuple):
        return tuple(_map_specs(function, part) for part in structure)
    return {name: function(leaf) for name, leaf in structure.items()}
