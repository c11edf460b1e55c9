"""The training loop every workflow shares: `train_loop`, and `fit_and_evaluate` on top of it.

Workflows (`kprune.workflows.gradual`, `kprune.workflows.at_init`, `kprune.workflows.lottery`)
differ in how they prune; they all train through `train_loop`, which runs `model.fit` epoch by
epoch from a given optimizer step, with one resumable checkpoint format
(`kprune.workflows.checkpoint`) and the per-epoch history of the whole run. Gradual pruning and
pruning at initialization call `fit_and_evaluate(model, data, TrainConfig(...), run_dir=...)`,
which compiles the model with the optimizer, learning-rate schedule, weight decay and loss of
the config (`kprune.workflows.recipe`, whose names this module re-exports), adds TensorBoard
logging and (for pruned models) `kprune.PruningCallback`, trains, then evaluates on the test
split. The lottery compiles each round itself and calls `train_loop` directly.

Example:

>>> from kprune import data as data_lib, models
>>> config = TrainConfig(epochs=2, learning_rate=0.05, lr_schedule="cosine")
>>> data = data_lib.load_dataset("digits", batch_size=64)
>>> model = models.lenet300_100(data.input_shape, data.num_classes)
>>> results = fit_and_evaluate(model, data, config, verbose=0)  # doctest: +SKIP
>>> sorted(results)[:3]  # doctest: +SKIP
['best_test_accuracy', 'diverged', 'epochs_run']
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from kprune._internal.files import write_text_atomic
from kprune.api import pruning_wrappers
from kprune.callbacks import PruningCallback
from kprune.distribute import ReplicaMaskCheck, strategy_scope
from kprune.workflows.checkpoint import CHECKPOINT_DIR, CheckpointCallback, TrainingCheckpoint
from kprune.workflows.recipe import (
    LR_SCHEDULES,
    OPTIMIZERS,
    SparseCrossentropy,
    TrainConfig,
    WarmupDecay,
    apply_weight_decay,
    make_learning_rate,
    make_loss,
    make_optimizer,
)

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
    "train_loop",
    "fit_and_evaluate",
]

HISTORY_FILE = "history.json"


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


class _EpochHistory(keras.callbacks.Callback):
    """The per-epoch logs of the whole run, across restarts, kept in a JSON file.

    Rows of epochs at or after `first_epoch` (the epoch a resumed run starts with) are dropped:
    they are trained again. Placed before the checkpoint callback, so a row is on disk before
    the checkpoint that makes its epoch final.
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


def _per_epoch(fits):
    """`{metric: [value per epoch]}` of several `fit` histories, one after the other."""
    merged = {}
    for history in fits:
        for key, values in (history.history or {}).items():
            merged.setdefault(key, []).extend(float(v) for v in values)
    return merged


def train_loop(
    model,
    batches,
    *,
    epochs,
    steps_per_epoch,
    start_step=0,
    run_dir=None,
    log_callbacks=(),
    callbacks=(),
    validation_data=None,
    verbose=1,
):
    """Trains a compiled `model` from optimizer step `start_step` to `epochs * steps_per_epoch`.

    Epochs are those of a run that started at step 0: a start inside an epoch first finishes
    that epoch in a short `fit`, so epoch-based callbacks see the same epoch at the same step
    as an uninterrupted run. With `run_dir`, a `TrainingCheckpoint` in `run_dir/checkpoints`
    is written after every epoch and restored before training (a resumed call continues with
    the epoch that was interrupted; a finished one trains nothing), and the per-epoch logs of
    the whole run go to `run_dir/history.json`.

    Args:
        model: a built, compiled Keras model.
        batches: the training data: a callable `step -> tf.data.Dataset` giving the batches
            from optimizer step `step` on (a replayable stream, so a resumed run trains on the
            batches of an uninterrupted one), or a dataset that `fit` goes through once per
            epoch (then `start_step` must be 0).
        epochs: epochs of the whole run, >= 1.
        steps_per_epoch: optimizer steps per epoch, >= 1.
        start_step: optimizer step the model is at when no checkpoint is restored.
        run_dir: optional directory for the checkpoint and `history.json`.
        log_callbacks: callbacks run before the epoch's history row and checkpoint are
            written, so what they add to the logs is recorded (e.g. `PruningCallback`).
        callbacks: callbacks run after them.
        validation_data: evaluated by `fit` after every epoch, or None.
        verbose: Keras `fit` verbosity.

    Returns:
        A dict with `resumed_at_epoch` (the restored epoch; 0 without checkpoint), `epochs_run`
        (epochs finished in this call), `history` (`{metric: [value per epoch]}`, of the whole
        run with `run_dir`) and `fit_time_s` (first to last batch, summed over the `fit` calls).

    Example:

    >>> result = train_loop(model, data.train_epochs, epochs=3, steps_per_epoch=10,
    ...                     run_dir="run")  # doctest: +SKIP
    """
    stream = callable(batches)
    if not stream and start_step:
        raise ValueError(
            "A dataset gone through once per epoch cannot start inside training; pass a "
            f"callable `step -> dataset` instead. Received: start_step={start_step}"
        )
    step, restored, bookkeeping, epoch_history = start_step, 0, [], None
    if run_dir is not None:
        checkpoint = TrainingCheckpoint(Path(run_dir) / CHECKPOINT_DIR, model)
        restored = checkpoint.restore(
            epochs=epochs, steps_per_epoch=steps_per_epoch, start_step=start_step
        )
        step = max(step, restored * steps_per_epoch)
        epoch_history = _EpochHistory(Path(run_dir) / HISTORY_FILE, step // steps_per_epoch)
        bookkeeping = [epoch_history, CheckpointCallback(checkpoint)]  # the row first
    timer = TrainTimer()
    all_callbacks = [*log_callbacks, *bookkeeping, timer, *callbacks]
    end, fits = epochs * steps_per_epoch, []
    while True:  # at least one fit, so on_train_begin/end run also when nothing is left
        epoch, offset = divmod(step, steps_per_epoch)
        stop = epoch + 1 if offset else epochs
        fits.append(
            model.fit(
                batches(step) if stream else batches,
                initial_epoch=epoch,
                epochs=stop,
                steps_per_epoch=steps_per_epoch - offset if stream else None,
                validation_data=validation_data,
                callbacks=all_callbacks,
                verbose=verbose,
                shuffle=False,  # the pipeline shuffles; Keras would only warn that it cannot
            )
        )
        step = stop * steps_per_epoch
        if model.stop_training or step >= end:  # e.g. EarlyStopping, TerminateOnNaN
            break
    return {
        "resumed_at_epoch": restored,
        "epochs_run": sum(len(history.epoch) for history in fits),
        "history": _per_epoch(fits) if epoch_history is None else epoch_history.as_lists(),
        "fit_time_s": timer.seconds,
    }


def fit_and_evaluate(model, data, config, *, run_dir=None, callbacks=(), verbose=1):
    """Compiles `model`, trains it on `data.train`, evaluates it on `data.test`.

    Pruned models (with `PruningWrapper`s) get a `kprune.PruningCallback`. With `run_dir`,
    TensorBoard logs go to `run_dir/logs` (loss, accuracy, learning rate; sparsity under
    `logs/pruning`), a checkpoint (weights, masks, optimizer state including the step, and
    epoch; `kprune.workflows.checkpoint`) to `run_dir/checkpoints` after every epoch, and the
    per-epoch metrics to `run_dir/history.json` (see `train_loop`): running again with the same
    `run_dir` continues where training stopped, with the epoch that was interrupted.

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
        log_dir = None if run_dir is None else os.path.join(os.fspath(run_dir), "logs")
        log_callbacks, replica_check = [], None
        if log_dir is not None:
            log_callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
        if pruning_wrappers(model):
            log_callbacks.append(PruningCallback(log_dir=log_dir))
            if strategy.num_replicas_in_sync > 1:
                replica_check = ReplicaMaskCheck()
                log_callbacks.append(replica_check)
        if getattr(data, "replayable", False):

            def batches(step):
                return data.train_epochs(step // data.steps_per_epoch)

        else:  # a hand-made dataset: its own (reshuffling) pipeline, one pass per epoch
            batches = data.train
        loop = train_loop(
            model,
            batches,
            epochs=config.epochs,
            steps_per_epoch=data.steps_per_epoch,
            run_dir=run_dir,
            log_callbacks=log_callbacks,
            # A loss of NaN or inf ends training: the run is reported as diverged instead of
            # running on and writing meaningless weights.
            callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
            validation_data=data.test if config.eval_every_epoch else None,
            verbose=verbose,
        )
        evaluation = model.evaluate(data.test, return_dict=True, verbose=0)
    per_epoch = loop["history"]
    val_accuracy = [v for v in per_epoch.get("val_accuracy", []) if v is not None]
    losses = [v for v in per_epoch.get("loss", []) if v is not None] + [evaluation["loss"]]
    return {
        "diverged": not all(np.isfinite(losses)),
        "test_accuracy": float(evaluation["accuracy"]),
        "test_loss": float(evaluation["loss"]),
        "best_test_accuracy": float(np.max(val_accuracy)) if val_accuracy else None,
        "total_steps": int(model.optimizer.iterations.numpy()),
        "epochs_run": loop["epochs_run"],
        "resumed_at_epoch": loop["resumed_at_epoch"],
        "fit_time_s": round(loop["fit_time_s"], 3),
        "history": per_epoch,
        "replicas": int(strategy.num_replicas_in_sync),
        "masks_identical_across_replicas": None
        if replica_check is None
        else replica_check.identical,
    }
