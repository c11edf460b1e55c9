"""The training loop every workflow shares: optimizer, learning rate, loss, callbacks, evaluation.

Workflows (`kprune.workflows.gradual`, `kprune.workflows.at_init`, `kprune.workflows.lottery`)
differ in how they prune; they
all train with `fit_and_evaluate(model, data, TrainConfig(...), run_dir=...)`, which compiles the
model with the optimizer, learning-rate schedule, weight decay and loss described by the config,
runs `model.fit` with TensorBoard logging, resumable checkpoints and (for pruned models)
`kprune.PruningCallback`, then evaluates on the test split.

Conventions taken from the reference implementations (PyTorch):

* Weight decay is coupled L2, as PyTorch's `SGD(weight_decay=wd)`: the gradient of every
  trainable variable gets `+ wd * w` (an L2 penalty `wd / 2 * ||w||^2` on each variable, biases
  and BatchNorm included), so it goes through momentum like the published recipes.
* Step decay multiplies the learning rate by `lr_decay_factor` from the *start* of each listed
  epoch (PyTorch's MultiStepLR); warm-up rises linearly over `lr_warmup_epochs`; cosine decays
  to 0 at the last step.

Example:

>>> from kprune import data as data_lib, models
>>> config = TrainConfig(epochs=2, learning_rate=0.05, lr_schedule="cosine")
>>> data = data_lib.load_dataset("digits", batch_size=64)
>>> model = models.lenet300_100(data.input_shape, data.num_classes)
>>> results = fit_and_evaluate(model, data, config, verbose=0)  # doctest: +SKIP
>>> sorted(results)[:3]  # doctest: +SKIP
['best_test_accuracy', 'epochs_run', 'fit_time_s']
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kprune._internal.files import write_text_atomic
from kprune.api import pruning_wrappers
from kprune.callbacks import PruningCallback
from kprune.distribute import ReplicaMaskCheck, strategy_scope

__all__ = [
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "TrainConfig",
    "WarmupDecay",
    "SparseCrossentropy",
    "make_learning_rate",
    "make_optimizer",
    "make_loss",
    "TrainTimer",
    "apply_weight_decay",
    "fit_and_evaluate",
]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "step", "cosine")


def _number(name, value, low, high=None, *, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    bad_low = value <= low if low_open else value < low
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        upper = "inf" if high is None else high
        raise ValueError(f"`{name}` must be in {left}{low}, {upper}{right}. Received: {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs, optimizer, learning rate, regularization. Plain values only.

    Attributes:
        epochs: passes over the training split, >= 1.
        optimizer: "sgd" (with `momentum`, optionally Nesterov) or "adam".
        learning_rate: the base (peak) learning rate, > 0.
        momentum: SGD momentum in [0, 1).
        nesterov: Nesterov momentum for SGD.
        lr_schedule: "constant", "step" (times `lr_decay_factor` at each of `lr_decay_epochs`)
            or "cosine" (to 0 at the end).
        lr_decay_epochs: epochs (may be fractional) where step decay applies, increasing.
        lr_decay_factor: multiplier of each step decay, in (0, 1].
        lr_warmup_epochs: linear warm-up length in epochs, >= 0.
        weight_decay: coupled L2 coefficient (PyTorch convention), >= 0.
        label_smoothing: in [0, 1).
        eval_every_epoch: evaluate on the test split after every epoch (TensorBoard curves and
            `best_test_accuracy`); the final evaluation always runs.

    Example:

    >>> TrainConfig(epochs=160, lr_schedule="step", lr_decay_epochs=(80, 120)).lr_decay_factor
    0.1
    """

    epochs: int = 30
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "constant"
    lr_decay_epochs: tuple = ()
    lr_decay_factor: float = 0.1
    lr_warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    eval_every_epoch: bool = True

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"`epochs` must be an integer >= 1. Received: {self.epochs!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}. Received: {self.optimizer!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"`lr_schedule` must be one of {LR_SCHEDULES}. Received: {self.lr_schedule!r}"
            )
        _number("learning_rate", self.learning_rate, 0.0, low_open=True)
        _number("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _number("lr_decay_factor", self.lr_decay_factor, 0.0, 1.0, low_open=True)
        _number("lr_warmup_epochs", self.lr_warmup_epochs, 0.0, self.epochs, high_open=True)
        _number("weight_decay", self.weight_decay, 0.0)
        _number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        decay = tuple(float(_number("lr_decay_epochs", e, 0.0)) for e in self.lr_decay_epochs)
        if list(decay) != sorted(set(decay)):
            raise ValueError(
                f"`lr_decay_epochs` must be strictly increasing. Received: {self.lr_decay_epochs}"
            )
        if decay and decay[-1] >= self.epochs:
            raise ValueError(
                f"`lr_decay_epochs` must lie within training (< epochs={self.epochs}). "
                f"Received: {self.lr_decay_epochs}"
            )
        if self.lr_schedule == "step" and not decay:
            raise ValueError("lr_schedule='step' needs `lr_decay_epochs`, e.g. (80, 120).")
        object.__setattr__(self, "lr_decay_epochs", decay)


@keras.saving.register_keras_serializable(package="kprune")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate by step: optional linear warm-up, then constant, step or cosine decay.

    Args:
        base_lr: the learning rate after warm-up, > 0.
        total_steps: length of training in steps (the cosine reaches 0 at the last step).
        kind: "constant", "step" or "cosine".
        boundaries: steps from which the rate is multiplied by `factor` once more ("step").
        factor: multiplier per boundary.
        warmup_steps: the rate rises linearly from `base_lr / warmup_steps` to `base_lr` over
            the first `warmup_steps` steps.

    Example:

    >>> lr = WarmupDecay(0.1, 100, kind="step", boundaries=(50, 75))
    >>> [round(float(lr(s)), 4) for s in (0, 49, 50, 75)]
    [0.1, 0.1, 0.01, 0.001]
    """

    def __init__(
        self, base_lr, total_steps, kind="constant", boundaries=(), factor=0.1, warmup_steps=0
    ):
        if kind not in LR_SCHEDULES:
            raise ValueError(f"`kind` must be one of {LR_SCHEDULES}. Received: kind={kind!r}")
        self.base_lr = float(_number("base_lr", base_lr, 0.0, low_open=True))
        self.total_steps = int(_number("total_steps", total_steps, 1))
        self.kind = kind
        self.boundaries = tuple(int(b) for b in boundaries)
        self.factor = float(factor)
        self.warmup_steps = int(_number("warmup_steps", warmup_steps, 0))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.kind == "step":
            for boundary in self.boundaries:
                lr = ops.where(step >= boundary, lr * self.factor, lr)
        elif self.kind == "cosine":
            span = max(self.total_steps - 1 - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps:
            ramp = ops.minimum((step + 1.0) / self.warmup_steps, 1.0)
            lr = lr * ramp
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "kind": self.kind,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "warmup_steps": self.warmup_steps,
        }


@keras.saving.register_keras_serializable(package="kprune")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits for integer labels, with optional label smoothing.

    `keras.losses.SparseCategoricalCrossentropy` has no label smoothing; this loss one-hot
    encodes the labels and smooths them as `(1 - ls) * one_hot + ls / num_classes`.

    Args:
        label_smoothing: in [0, 1).
        name: loss name.

    Example:

    >>> loss = SparseCrossentropy(label_smoothing=0.1)
    >>> round(float(loss(np.array([0]), np.array([[0.0, 0.0]]))), 4)
    0.6931
    """

    def __init__(self, label_smoothing=0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(
            _number("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        )

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_loss(config):
    """The loss for `config`: sparse cross-entropy from logits (label smoothing if asked).

    Example:

    >>> type(make_loss(TrainConfig(label_smoothing=0.1))).__name__
    'SparseCrossentropy'
    """
    return SparseCrossentropy(label_smoothing=config.label_smoothing)


def make_learning_rate(config, steps_per_epoch):
    """The `WarmupDecay` learning-rate schedule of `config`, in optimizer steps.

    Example:

    >>> lr = make_learning_rate(TrainConfig(lr_schedule="constant", learning_rate=0.1), 10)
    >>> round(float(lr(5)), 6)
    0.1
    """
    steps_per_epoch = int(_number("steps_per_epoch", steps_per_epoch, 1))
    return WarmupDecay(
        config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        kind=config.lr_schedule,
        boundaries=[round(e * steps_per_epoch) for e in config.lr_decay_epochs],
        factor=config.lr_decay_factor,
        warmup_steps=round(config.lr_warmup_epochs * steps_per_epoch),
    )


def make_optimizer(config, steps_per_epoch):
    """The optimizer for `config`, with a `WarmupDecay` learning rate in steps.

    Args:
        config: a `TrainConfig`.
        steps_per_epoch: training batches per epoch (converts epochs to steps).

    Example:

    >>> opt = make_optimizer(TrainConfig(optimizer="sgd", nesterov=True), steps_per_epoch=10)
    >>> type(opt).__name__, opt.nesterov
    ('SGD', True)
    """
    learning_rate = make_learning_rate(config, steps_per_epoch)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=config.momentum, nesterov=config.nesterov
        )
    return keras.optimizers.Adam(learning_rate)


def apply_weight_decay(model, weight_decay):
    """Puts a coupled L2 penalty `weight_decay / 2 * ||w||^2` on every trainable variable.

    The regularizer sits on the variables themselves, so it also reaches the kernels inside
    `PruningWrapper`s (whose pruned entries are zero and add nothing). Call it on the model you
    train (after `kprune.prune`, which creates new variables).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> apply_weight_decay(model, 5e-4)
    >>> len(model.losses)
    2
    """
    _number("weight_decay", weight_decay, 0.0)
    regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None
    for variable in model.trainable_variables:
        variable.regularizer = regularizer


class TrainTimer(keras.callbacks.Callback):
    """Seconds from the first batch to the last of every `fit`, summed over the `fit` calls.

    This times the training loop only: not `fit`'s start-up, not the validation pass after
    the last epoch, not its idle time before returning (tf.data autotuning threads).

    Example:

    >>> timer = TrainTimer()
    >>> model.fit(x, y, callbacks=[timer], verbose=0)  # doctest: +SKIP
    >>> timer.seconds > 0  # doctest: +SKIP
    True
    """

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self._start = None
        self._last = None

    def on_train_begin(self, logs=None):
        self._start = self._last = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_train_end(self, logs=None):
        if self._start is not None and self._last is not None:
            self.seconds += self._last - self._start


class _Backup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that restores *before* `fit`, so the data can start at that epoch.

    Keras restores in `on_train_begin`, when `fit` already holds its dataset; kprune's training
    stream must begin with the restored epoch, so `restore()` runs the same restore first and
    returns the epoch to resume at. Backups are written after every epoch (weights file, then
    epoch file), keeping the previous pair too (`double_checkpoint`): a process killed while
    writing the weights resumes from the previous pair (Keras falls back when the weights do not
    load); one killed between the two writes is caught by its step counter, which is then ahead
    of the recorded epoch. A run killed mid-epoch loses that epoch's progress and redoes it.
    """

    def __init__(self, backup_dir):
        super().__init__(
            backup_dir, save_freq="epoch", double_checkpoint=True, delete_checkpoint=False
        )
        self._restored = False

    def _saved_epoch(self):
        if not os.path.exists(self._training_metadata_path):
            return 0
        with open(self._training_metadata_path) as f:
            return int(json.load(f)["epoch"])

    def restore(self, model, steps_per_epoch):
        """Loads the latest backup (if any) into `model`; returns the epoch to start at."""
        self.set_model(model)
        super().on_train_begin()  # loads weights and optimizer state, falls back to the previous
        self._restored = True
        epoch = self._saved_epoch()
        steps = int(model.optimizer.iterations.numpy())
        if steps <= epoch * steps_per_epoch:  # consistent (fewer: loss-scaling skipped steps)
            return epoch
        # The weights were written after the epoch file: the weights belong to a later epoch.
        if steps % steps_per_epoch == 0:  # no skipped step: that epoch is known
            epoch = steps // steps_per_epoch
            with open(self._training_metadata_path, "w") as f:  # repair the backup
                json.dump({"epoch": epoch, "batch": 0}, f)
            model._initial_epoch = epoch  # where Keras' restore left the (stale) epoch for fit
            return epoch
        if not os.path.exists(self._prev_weights_path):
            raise RuntimeError(
                f"The backup in {self.backup_dir} is inconsistent (optimizer step {steps}, "
                f"epoch {epoch} of {steps_per_epoch} steps) and has no previous backup to fall "
                "back to. Delete the directory to start the run again."
            )
        for previous, current in (
            (self._prev_weights_path, self._weights_path),
            (self._prev_training_metadata_path, self._training_metadata_path),
        ):
            shutil.copyfile(previous, current)
        super().on_train_begin()
        return self._saved_epoch()

    def on_train_begin(self, logs=None):
        if not self._restored:
            super().on_train_begin(logs)


class _EpochHistory(keras.callbacks.Callback):
    """The per-epoch logs of the whole run, across restarts, kept in a JSON file.

    Rows of epochs at or after `first_epoch` (the epoch a resumed run starts with) are dropped:
    they are trained again. Placed before the backup callback, so a row is on disk before the
    backup that makes its epoch final.
    """

    def __init__(self, path, first_epoch):
        super().__init__()
        self.path = path
        rows = json.loads(path.read_text()) if path.exists() else []
        self.rows = [row for row in rows if row["epoch"] < first_epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": int(epoch)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.rows.append(row)
        write_text_atomic(self.path, json.dumps(self.rows, indent=1) + "\n")

    def as_lists(self):
        """`{metric: [value per epoch]}` like `History.history`, for all epochs of the run."""
        keys = []
        for row in self.rows:
            keys += [k for k in row if k != "epoch" and k not in keys]
        return {k: [row.get(k) for row in self.rows] for k in keys}


def fit_and_evaluate(model, data, config, *, run_dir=None, callbacks=(), verbose=1):
    """Compiles `model`, trains it on `data.train`, evaluates it on `data.test`.

    Pruned models (with `PruningWrapper`s) get a `kprune.PruningCallback`. With `run_dir`,
    TensorBoard logs go to `run_dir/logs` (loss, accuracy, learning rate; sparsity under
    `logs/pruning`), a resumable backup (weights, masks, optimizer state including the step, and
    epoch) to `run_dir/checkpoints` after every epoch, and the per-epoch metrics to
    `run_dir/history.json`: running again with the same `run_dir` continues where training
    stopped, with the epoch that was interrupted.

    Datasets from `kprune.data.load_dataset` are trained through their replayable stream
    (`data.train_epochs`): the batches of every epoch depend on the seed and the epoch only, so
    a resumed run trains on exactly the batches of an uninterrupted one and ends with the same
    masks. Under a `tf.distribute` strategy (the one `model` was built under; see
    `kprune.distribute`) compiling and training happen in its scope, the batches are global
    batches split across replicas, and, for pruned models on more than one replica, the masks
    of all replicas are compared at the end (`kprune.distribute.ReplicaMaskCheck`).

    Args:
        model: a built Keras model that outputs logits (pruned or not).
        data: a `kprune.data.Dataset` (uses `train` or `train_epochs`, `test`,
            `steps_per_epoch`).
        config: a `TrainConfig`.
        run_dir: optional output directory.
        callbacks: extra Keras callbacks.
        verbose: Keras `fit` verbosity (1 progress bar, 2 one line per epoch, 0 silent).

    Returns:
        A dict with `test_accuracy`, `test_loss` (cross-entropy plus the weight-decay
        penalty, as Keras reports it), `best_test_accuracy` (None without per-epoch
        evaluation), `total_steps` (optimizer steps taken), `epochs_run` (in this call),
        `resumed_at_epoch` (0 for a fresh start), `fit_time_s` (first to last batch of this
        call), `history` (per-epoch metrics of the whole run), `replicas`,
        `masks_identical_across_replicas` (None when not checked: one replica or no masks)
        and `diverged` (the loss became NaN or infinite; training stops at that batch).

    Example:

    >>> results = fit_and_evaluate(model, data, TrainConfig(epochs=1))  # doctest: +SKIP
    """
    strategy = model.distribute_strategy
    with strategy_scope(strategy):
        optimizer = make_optimizer(config, data.steps_per_epoch)
        apply_weight_decay(model, config.weight_decay)
        model.compile(
            optimizer=optimizer,
            loss=make_loss(config),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        timer = TrainTimer()
        all_callbacks = []
        first_epoch, epoch_history = 0, None
        if run_dir is not None:
            run_dir = os.fspath(run_dir)
            backup = _Backup(os.path.join(run_dir, "checkpoints"))
            first_epoch = backup.restore(model, data.steps_per_epoch)
            epoch_history = _EpochHistory(Path(run_dir) / "history.json", first_epoch)
            all_callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False)
            )
        replica_check = None
        if pruning_wrappers(model):
            log_dir = None if run_dir is None else os.path.join(run_dir, "logs")
            all_callbacks.append(PruningCallback(log_dir=log_dir))
            if strategy.num_replicas_in_sync > 1:
                replica_check = ReplicaMaskCheck()
                all_callbacks.append(replica_check)
        if run_dir is not None:
            all_callbacks += [epoch_history, backup]  # the history row first, then the backup
        # A loss of NaN or inf ends training: the run is reported as diverged instead of
        # running on and writing meaningless weights.
        all_callbacks += [timer, keras.callbacks.TerminateOnNaN(), *callbacks]
        if getattr(data, "replayable", False):
            train, steps = data.train_epochs(first_epoch), data.steps_per_epoch
        else:  # a hand-made dataset: its own (reshuffling) pipeline, one pass per epoch
            train, steps = data.train, None
        history = model.fit(
            train,
            epochs=config.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            validation_data=data.test if config.eval_every_epoch else None,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles; Keras would only warn that it cannot
        )
        evaluation = model.evaluate(data.test, return_dict=True, verbose=0)
    if epoch_history is not None:
        per_epoch = epoch_history.as_lists()
    else:
        per_epoch = {k: [float(v) for v in values] for k, values in (history.history or {}).items()}
    val_accuracy = [v for v in per_epoch.get("val_accuracy", []) if v is not None]
    losses = [v for v in per_epoch.get("loss", []) if v is not None] + [evaluation["loss"]]
    return {
        "diverged": not all(np.isfinite(losses)),
        "test_accuracy": float(evaluation["accuracy"]),
        "test_loss": float(evaluation["loss"]),
        "best_test_accuracy": float(np.max(val_accuracy)) if val_accuracy else None,
        "total_steps": int(model.optimizer.iterations.numpy()),
        "epochs_run": len(history.epoch),
        "resumed_at_epoch": first_epoch,
        "fit_time_s": round(timer.seconds, 3),
        "history": per_epoch,
        "replicas": int(strategy.num_replicas_in_sync),
        "masks_identical_across_replicas": None
        if replica_check is None
        else replica_check.identical,
    }
