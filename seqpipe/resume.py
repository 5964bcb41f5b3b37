"""Resuming `model.fit` mid-epoch: where the data stopped, recorded beside Keras's backup.

Keras's `BackupAndRestore(save_freq=N)` restores the weights and the epoch, but not the
batch: its metadata counts batches from the start of the run's current epoch, says
`"batch": 0` both after an epoch's first batch and when the epoch just ended, and names
epoch 0 until the first epoch of a restored run ends. `seqpipe.BackupAndRestore` keeps
Keras's backup and, each time it saves, also writes the position of the next batch in
the data, `{"epoch": e, "batch": b}`, to `seqpipe_position.json`; `resume_state` reads
it back for `build_dataset(resume=...)`:

    backup = seqpipe.BackupAndRestore("backup/", save_freq=100)
    dataset = seqpipe.build_dataset(config, resume=seqpipe.resume_state("backup/"))
    model.fit(dataset, epochs=10, callbacks=[backup])

`BackupAndRestore` imports Keras when it is first called, so that `import seqpipe` does
not.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional

from seqpipe.errors import ConfigError

POSITION = "seqpipe_position.json"
_KERAS_METADATA = "training_metadata.json"
_CLASS: Any = None


def resume_state(backup_dir: str | os.PathLike) -> Optional[dict]:
    """The position to pass as `build_dataset(resume=...)` after a `model.fit` with
    `seqpipe.BackupAndRestore(backup_dir, ...)` stopped: `{"epoch": e, "batch": b}`, the
    batch after the last one whose weights the backup holds; None when there is no backup
    (a first run, or one that finished: Keras deletes its backup then).

    Raises:
      ConfigError: the backup was written by `keras.callbacks.BackupAndRestore`, whose
        metadata does not say which batch comes next, or the position file is damaged.
    """
    folder = os.fspath(backup_dir)
    path = os.path.join(folder, POSITION)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(folder, _KERAS_METADATA)):
            raise ConfigError(
                f"{folder} holds a backup of keras.callbacks.BackupAndRestore, which does "
                f"not record which batch of the epoch comes next. Train with "
                f"seqpipe.BackupAndRestore({folder!r}, save_freq=...) instead (it keeps "
                f"Keras's backup and records the position); to start this run over, "
                f"delete {folder}.")
        return None
    try:
        with open(path) as f:
            position = json.load(f)
        found = {"epoch": int(position["epoch"]), "batch": int(position["batch"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); it should hold "
                          f'{{"epoch": e, "batch": b}}. Delete {folder} to start over.') from e
    if found["epoch"] < 0 or found["batch"] < 0:
        raise ConfigError(f"{path} holds a negative position: {position}; positions "
                          f"count from 0. Delete {folder} to start over.")
    return found


def BackupAndRestore(backup_dir: str | os.PathLike, save_freq: Any = "epoch",
                     **kwargs: Any):
    """`keras.callbacks.BackupAndRestore` that also records where the data stopped, for
    `resume_state` and `build_dataset(resume=...)`: the way to resume `model.fit`
    mid-epoch exactly, each batch trained on once.

    Pass the dataset built with `resume=seqpipe.resume_state(backup_dir)`; `format="tf"`
    on every backend (Keras takes the batches per epoch from its cardinality; from a Grain
    or NumPy dataset it would count them in the shorter resumed epoch, and cut the later
    ones short). The resumed epoch is shorter: Keras's progress bar ends before its
    total. Arguments as Keras's (`save_freq`: "epoch" or every this many batches).
    """
    return _callback_class()(backup_dir, save_freq=save_freq, **kwargs)


def _callback_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import keras

    class SeqpipeBackupAndRestore(keras.callbacks.BackupAndRestore):
        __doc__ = BackupAndRestore.__doc__

        def __init__(self, backup_dir, save_freq="epoch", **kwargs):
            super().__init__(os.fspath(backup_dir), save_freq=save_freq, **kwargs)
            self._position_path = os.path.join(os.fspath(backup_dir), POSITION)
            self._resumed: Optional[dict] = None  # where this run's data started
            self._epoch = self._offset = self._next = 0
            self._saved_at: Optional[tuple] = None
            self._quiet: Optional[warnings.catch_warnings] = None

        def on_train_begin(self, logs=None):
            self._resumed = resume_state(self.backup_dir)
            super().on_train_begin(logs)  # the weights, and Keras's idea of the epoch
            if self._resumed is not None:
                self.model._initial_epoch = self._resumed["epoch"]

        def on_epoch_begin(self, epoch, logs=None):
            # Keras's own metadata would name epoch 0 until this run's first epoch ends.
            self._current_epoch = self._epoch = epoch
            resumed = self._resumed
            self._offset = resumed["batch"] if resumed and resumed["epoch"] == epoch else 0
            self._next = self._offset
            if self._offset:
                # The resumed epoch is shorter than Keras expects, which it reports as
                # "Your input ran out of data; interrupting training", and goes on.
                self._quiet = warnings.catch_warnings()
                self._quiet.__enter__()
                warnings.filterwarnings("ignore", message="Your input ran out of data")

        def on_train_batch_end(self, batch, logs=None):
            self._next = self._offset + batch + 1  # Keras counts from this run's start
            super().on_train_batch_end(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            if self._quiet is not None:
                self._quiet.__exit__(None, None, None)
                self._quiet = None
            if self._saved_at == (epoch, self._next):  # saved after the epoch's last batch
                self._write({"epoch": epoch + 1, "batch": 0})
            self._epoch, self._next = epoch + 1, 0
            super().on_epoch_end(epoch, logs)  # saves here with save_freq="epoch"

        def _save_model(self):
            super()._save_model()
            self._saved_at = (self._epoch, self._next)
            self._write({"epoch": self._epoch, "batch": self._next})

        def _write(self, position: dict) -> None:
            temporary = self._position_path + ".tmp"
            with open(temporary, "w") as f:
                json.dump(position, f)
            os.replace(temporary, self._position_path)  # never half written

    _CLASS = SeqpipeBackupAndRestore
    return _CLASS
