"""One checkpoint format for every workflow: model, optimizer (step included) and epoch at once.

A `TrainingCheckpoint` holds every variable of the model (weights, pruning masks, BatchNorm
statistics, random-seed state) and of its optimizer (the step, slots such as momentum, the
loss-scale state of mixed precision) together with the number of finished epochs, in one
`tf.train.Checkpoint`. `tf.train.CheckpointManager` writes it after every epoch and keeps the
previous one too; the files of a checkpoint are complete before the manager's state file
names them, so a process killed while saving leaves the earlier checkpoints intact, and a
resumed run can never read weights from one epoch and a counter from another.

`restore()` runs before `fit`, because kprune's replayable training stream must begin with
the restored epoch. A checkpoint that cannot be read (cut short, damaged) is skipped for the
previous one, with a warning in the log. One that contradicts the run (an epoch beyond its
end, a step that disagrees with the epoch) is refused with a `ValueError`: never trained on.

Files in the directory: `checkpoint` (the manager's state, a text file), and for each of the
last two epochs `ckpt-<epoch>.index` and `ckpt-<epoch>.data-00000-of-00001`.

Example:

>>> import tempfile
>>> directory = tempfile.mkdtemp()
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> model.compile(keras.optimizers.SGD(0.1), "mse")
>>> checkpoint = TrainingCheckpoint(directory, model)
>>> checkpoint.restore(epochs=3, steps_per_epoch=10)  # nothing saved yet: start at epoch 0
0
>>> _ = model.optimizer.iterations.assign(10)  # as after one epoch of 10 steps
>>> _ = checkpoint.save(1)
>>> saved_epochs(directory)
[1]
>>> TrainingCheckpoint(directory, model).restore(epochs=3, steps_per_epoch=10)
1
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import keras
import tensorflow as tf

__all__ = ["CHECKPOINT_DIR", "TrainingCheckpoint", "CheckpointCallback", "saved_epochs"]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # inside a run (or lottery round) directory
_NAME = "ckpt"
_EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"


def _saved_prefixes(directory):
    """Checkpoint prefixes in `directory`, newest (highest epoch) first.

    Found from the files themselves, not the manager's state file, so a damaged or missing
    state file hides nothing.
    """
    found = []
    for index in Path(directory).glob(f"{_NAME}-*.index"):
        number = index.name[len(_NAME) + 1 : -len(".index")]
        if number.isdigit():
            found.append((int(number), str(index)[: -len(".index")]))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def saved_epochs(directory):
    """The epochs the checkpoints in `directory` say they hold, oldest first.

    Only each checkpoint's epoch is read, not its weights: use it to look, and
    `TrainingCheckpoint.restore` to load.

    Example:

    >>> saved_epochs("saved_models/run/checkpoints")  # doctest: +SKIP
    [1, 2]
    """
    epochs = []
    for prefix in _saved_prefixes(directory):
        try:
            epochs.append(int(tf.train.load_checkpoint(prefix).get_tensor(_EPOCH_KEY)))
        except Exception:  # unreadable: as `TrainingCheckpoint.restore` skips it
            continue
    return sorted(epochs)


def _first_line(error):
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class TrainingCheckpoint:
    """The model, its optimizer and the finished epochs, saved and restored as one.

    Args:
        directory: where the checkpoints live (created on the first save).
        model: a built, compiled Keras model. Its optimizer is built here if it is not yet,
            so that its variables (step, slots) exist to be restored.
        max_to_keep: checkpoints kept; 2 keeps the previous one to fall back to.

    Example:

    >>> checkpoint = TrainingCheckpoint("run/checkpoints", model)  # doctest: +SKIP
    >>> first_epoch = checkpoint.restore(epochs=30, steps_per_epoch=391)  # doctest: +SKIP
    """

    def __init__(self, directory, model, max_to_keep=2):
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"A training checkpoint needs a compiled model; model '{model.name}' has no "
                "optimizer. Call model.compile(...) first."
            )
        if not model.built:
            raise ValueError(f"Model '{model.name}' is not built: build it before checkpointing.")
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        self.directory = Path(directory)
        self.model = model
        self.max_to_keep = max_to_keep
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # Flat lists of variables rather than the Keras object graph: Keras 3 layers do not
        # expose all their variables (e.g. a wrapper's masks) to tf.train's graph walk, while
        # `model.variables` and `optimizer.variables` list everything, in a fixed order.
        self._checkpoint = tf.train.Checkpoint(
            model=list(model.variables), optimizer=list(optimizer.variables), epoch=self._epoch
        )
        self._manager = None

    def _make_manager(self):
        def make():
            return tf.train.CheckpointManager(
                self._checkpoint, str(self.directory), self.max_to_keep, checkpoint_name=_NAME
            )

        try:
            return make()
        except ValueError as error:  # the state file is empty or damaged
            logger.warning(
                "The checkpoint state file in %s is damaged (%s); it is rewritten at the next "
                "save, and the checkpoints are found from their files.",
                self.directory,
                error,
            )
            (self.directory / "checkpoint").unlink()
            return make()

    @property
    def manager(self):
        """The `tf.train.CheckpointManager` that writes and prunes the checkpoints."""
        if self._manager is None:
            self._manager = self._make_manager()
        return self._manager

    def save(self, epoch):
        """Writes the model and optimizer as they are, as the state after `epoch` epochs.

        Returns:
            The checkpoint's path prefix (`<directory>/ckpt-<epoch>`).
        """
        self._epoch.assign(epoch)
        path = self.manager.save(checkpoint_number=epoch)
        # The manager only deletes the checkpoints its state file names; after that file was
        # lost, older ones would stay forever.
        for prefix in _saved_prefixes(self.directory)[self.max_to_keep :]:
            for file in self.directory.glob(Path(prefix).name + ".*"):
                file.unlink(missing_ok=True)
        return path

    def restore(self, *, epochs, steps_per_epoch, start_step=0):
        """Loads the newest usable checkpoint; returns the epoch to start at (0: none saved).

        Args:
            epochs: the epochs of the whole run.
            steps_per_epoch: optimizer steps per epoch; the restored step must equal
                `epoch * steps_per_epoch` (or be below it when a `LossScaleOptimizer` may have
                skipped steps).
            start_step: the step training starts from without a checkpoint (a lottery round
                rewound to step k); a checkpoint must lie after it.

        Raises:
            ValueError: the checkpoint contradicts the run (nothing is trained on it).
            RuntimeError: checkpoints exist but none can be read.
        """
        prefixes = _saved_prefixes(self.directory)
        failures = []
        for prefix in prefixes:
            try:
                self._checkpoint.restore(prefix).assert_consumed()
            # A damaged file fails in many ways (DataLossError, IndexError from the reader,
            # AssertionError when it holds other variables); each means "try the previous
            # one", and when none can be read, restore raises below.
            except Exception as error:
                failures.append(f"{Path(prefix).name}: {_first_line(error)}")
                logger.warning(
                    "Checkpoint %s cannot be read (%s); falling back to the previous one.",
                    prefix,
                    _first_line(error),
                )
                continue
            epoch = int(self._epoch.numpy())
            self._check_plan(prefix, epoch, epochs, steps_per_epoch, start_step)
            level = logging.WARNING if failures else logging.INFO
            logger.log(level, "Resuming from checkpoint %s (epoch %d).", prefix, epoch)
            return epoch
        if failures:
            raise RuntimeError(
                f"No checkpoint in {self.directory} can be read ({'; '.join(failures)}). Delete "
                "the directory to start this training again."
            )
        if (Path(self.directory) / "training_metadata.json").exists():
            logger.warning(
                "%s holds a backup in the format of kprune 0.1 (BackupAndRestore), which this "
                "version does not resume; training starts again from epoch 0.",
                self.directory,
            )
        return 0

    def _check_plan(self, prefix, epoch, epochs, steps_per_epoch, start_step):
        optimizer = self.model.optimizer
        step = int(optimizer.iterations.numpy())
        expected = epoch * steps_per_epoch
        advice = (
            f"It belongs to another run, or was changed, and is not trained on: use a new run "
            f"directory, or delete {self.directory} to start this training again."
        )
        if not 1 <= epoch <= epochs:
            raise ValueError(
                f"The checkpoint {prefix} is at epoch {epoch}, outside this run's 1..{epochs} "
                f"epochs. {advice}"
            )
        # Dynamic loss scaling skips the steps whose gradients overflow: fewer steps than
        # batches is then expected; more never is.
        skips = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if step > expected or (step < expected and not skips) or expected <= start_step:
            raise ValueError(
                f"The checkpoint {prefix} holds optimizer step {step} after epoch {epoch}, but "
                f"this run has {steps_per_epoch} steps per epoch ({expected} steps after "
                f"{epoch} epochs, starting from step {start_step}). {advice}"
            )


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a `TrainingCheckpoint` at the end of every epoch.

    An epoch whose loss is not finite (the run diverged; `TerminateOnNaN` stops it) is not
    saved: a resumed run goes back to the last finite state.

    Example:

    >>> model.fit(data, epochs=3, callbacks=[CheckpointCallback(checkpoint)])  # doctest: +SKIP
    """

    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            logger.warning("Epoch %d ended with loss %s: no checkpoint written.", epoch + 1, loss)
            return
        self.checkpoint.save(epoch + 1)
