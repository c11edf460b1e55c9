"""One round of the lottery (`kprune.workflows.lottery`): prune, rewind, train, write its files.

A round scores the weights trained in the previous round (read from disk, so a resumed run
does what an uninterrupted one does), keeps the largest among the unpruned ones, resets the
survivors and everything else to the rewind point, and trains on the shared loop
(`kprune.workflows.training.train_loop`) with the checkpoint of `kprune.workflows.checkpoint`
inside the round's working directory `.round_XX.tmp/`: an interrupted round resumes from its
last epoch. The finished round's files are written there and the directory is renamed to
`round_XX/` in one step, so a round directory exists exactly when the round is finished.

Example:

>>> round_dir_name(3)
'round_03'
"""

from __future__ import annotations

import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.files import write_text_atomic
from kprune._internal.validate import check_integer
from kprune.api import (
    format_sparsity_report,
    get_masks,
    pruned_variables,
    set_masks,
    sparsity_report,
)
from kprune.masking import prune_lowest
from kprune.masks import optimizer_slots
from kprune.workflows.checkpoint import CHECKPOINT_DIR
from kprune.workflows.training import train_loop
from kprune.wrapper import exact_value

__all__ = ["magnitude_masks", "round_dir_name", "run_round"]

# Names inside the lottery's run_dir. Kept as constants so the CLI and tests can find the files.
SETTINGS_FILE = "lottery.json"
RESULTS_FILE = "results.json"
INIT_WEIGHTS = "init.weights.h5"
FINAL_MODEL = "final.keras"
REWIND_WEIGHTS = "rewind.weights.h5"
REWIND_OPTIMIZER = "rewind_optimizer.npz"
ROUND_WEIGHTS = "weights.weights.h5"
ROUND_MASKS = "masks.npz"
ROUND_METRICS = "metrics.json"
ROUND_SPARSITY = "sparsity.json"
ROUND_SPARSITY_TEXT = "sparsity.txt"


def round_dir_name(round_index):
    """Directory of one round inside `run_dir`: `round_00`, `round_01`, ...

    Example:

    >>> round_dir_name(12)
    'round_12'
    """
    return f"round_{round_index:02d}"


# -- files ----------------------------------------------------------------------------------
def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {value!r}")


def write_json(path, data):
    """Writes JSON atomically: a reader (or a resumed run) sees the old file or the new one."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _skip_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    return None if optimizer is None else [optimizer]


def save_weights(model, path):
    """Model variables only (masks, BatchNorm statistics included), written atomically."""
    tmp = path.with_name(f".tmp.{path.name}")  # still ends with .weights.h5, as Keras wants
    keras.saving.save_weights(model, str(tmp), objects_to_skip=_skip_optimizer(model))
    os.replace(tmp, path)


def load_weights(model, path):
    keras.saving.load_weights(model, str(path), objects_to_skip=_skip_optimizer(model))


def _save_optimizer_state(optimizer, path):
    store = {}
    optimizer.save_own_variables(store)
    tmp = path.with_name(f".tmp.{path.name}")
    np.savez(tmp, **store)
    os.replace(tmp, path)


def _load_optimizer_state(optimizer, path):
    with np.load(path) as data:
        store = {key: data[key] for key in data.files}
    if len(store) != len(optimizer.variables):
        raise ValueError(
            f"The optimizer state saved in {path} has {len(store)} variables but the optimizer "
            f"made by `make_optimizer` has {len(optimizer.variables)}. Did `make_optimizer` "
            "change since round 0 was trained?"
        )
    optimizer.load_own_variables(store)


# -- masks ----------------------------------------------------------------------------------
def magnitude_masks(model, keep):
    """Global magnitude masks that keep exactly `keep` weights among the unpruned ones.

    Weights already pruned (mask 0) are ranked below every active weight, so they stay
    pruned; among active weights the smallest `|w|` go first, ties broken by position (the
    rule of `kprune.masking.prune_lowest`). The model is not changed.

    Args:
        model: a model pruned with `kprune.prune`.
        keep: number of weights to keep, between 0 and the number currently unpruned.

    Returns:
        `{path: float32 array of 0s and 1s}` as taken by `kprune.set_masks`.

    Example:

    >>> import kprune
    >>> model = kprune.prune(keras.Sequential([keras.Input((2,)),
    ...                                        keras.layers.Dense(2, name="fc")]), None)
    >>> _ = model.get_layer("fc").layer.kernel.assign([[1.0, -3.0], [0.5, 2.0]])
    >>> magnitude_masks(model, 2)["fc/kernel"].tolist()
    [[0.0, 1.0], [0.0, 1.0]]
    """
    entries = list(pruned_variables(model))
    masks = [np.asarray(exact_value(m)) != 0 for _, _, m in entries]
    active = int(sum(m.sum() for m in masks))
    keep = check_integer("keep", keep, 0)
    if keep > active:
        raise ValueError(
            f"`keep` cannot exceed the {active} weights that are still unpruned (pruned "
            f"weights never return). Received: keep={keep}"
        )
    total = sum(m.size for m in masks)
    scores = [
        tf.where(m, tf.abs(tf.cast(exact_value(w), tf.float32)), float("-inf"))
        for (_, w, _), m in zip(entries, masks)
    ]
    removed = prune_lowest(scores, total - keep)
    return {
        path: np.logical_not(r.numpy()).astype(np.float32)
        for (path, _, _), r in zip(entries, removed)
    }


def _mask_counts(model):
    masks = get_masks(model)
    total = int(sum(m.size for m in masks.values()))
    kept = int(sum(np.count_nonzero(m) for m in masks.values()))
    return kept, total


# -- training helpers -----------------------------------------------------------------------
class _RewindSnapshot(keras.callbacks.Callback):
    """Saves the model (and optionally the optimizer state) right after optimizer step k.

    The weights file is written last, atomically, and marks the snapshot as taken: a round 0
    resumed from its checkpoint does not take it again.
    """

    def __init__(self, step, weights_path, optimizer_path=None):
        super().__init__()
        self.step = step
        self.weights_path = weights_path
        self.optimizer_path = optimizer_path
        self.done = weights_path.exists()

    def on_train_begin(self, logs=None):
        now = int(self.model.optimizer.iterations.numpy())
        if not self.done and now > self.step:
            raise RuntimeError(
                f"Round 0 resumes at step {now}, after rewind_step={self.step}, but its rewind "
                f"snapshot {self.weights_path} is missing. Delete {self.weights_path.parent} "
                "to train round 0 again."
            )

    def on_train_batch_end(self, batch, logs=None):
        if self.done:
            return
        now = int(self.model.optimizer.iterations.numpy())
        if now < self.step:
            return
        if now > self.step:
            raise ValueError(
                f"The optimizer went from before step {self.step} to step {now} in one "
                "execution, so the rewind point was skipped. Make `rewind_step` a multiple of "
                "`steps_per_execution`."
            )
        if self.optimizer_path is not None:
            _save_optimizer_state(self.model.optimizer, self.optimizer_path)
        save_weights(self.model, self.weights_path)
        self.done = True


def _set_step(optimizer, step):
    """Starts a fresh optimizer at `step`, so a step-based learning-rate schedule resumes there."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    accumulation = getattr(inner, "gradient_accumulation_steps", None) or 1
    inner.iterations.assign(step * accumulation)


def _accuracy(metrics):
    for key, value in metrics.items():
        if "accuracy" in key:
            return float(value)
    return None


def _new_optimizer(model, make_optimizer):
    optimizer = make_optimizer()
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "`make_optimizer` must return a keras.optimizers.Optimizer. Received: "
            f"{optimizer!r} of type {type(optimizer).__name__}"
        )
    if getattr(model, "optimizer", None) is optimizer:
        raise ValueError(
            "`make_optimizer` returned the optimizer of the previous round; it must build a "
            "new one on every call, e.g. `lambda: keras.optimizers.SGD(0.1)`."
        )
    return optimizer


# -- one round ------------------------------------------------------------------------------
def run_round(model, r, run_dir, *, keep, settings, train_data, test_data, training):
    """Trains round `r` and writes `run_dir/round_XX` atomically; returns its metrics row.

    Args:
        model: the pruned copy that every round trains.
        r: the round, 0 for the dense round.
        run_dir: the lottery's directory (a `pathlib.Path`).
        keep: weights the round keeps.
        settings: the run's `rewind_step`, `epochs`, `steps_per_epoch`, `reset_optimizer`.
        train_data, test_data: `tf.data.Dataset`s (test_data may be None).
        training: `make_optimizer`, `loss`, `metrics`, `compile_kwargs`, `callbacks` (a list)
            and `verbose`, as given to `run_lottery`.
    """
    started = time.perf_counter()
    rewind_step, steps_per_epoch = settings["rewind_step"], settings["steps_per_epoch"]
    work = run_dir / f".{round_dir_name(r)}.tmp"
    work.mkdir(exist_ok=True)  # one left by an interrupted run holds its checkpoint
    round0 = run_dir / round_dir_name(0)

    if r == 0:
        load_weights(model, run_dir / INIT_WEIGHTS)
        start = 0
    else:
        # Score the weights trained in round r-1, then rewind the survivors.
        load_weights(model, run_dir / round_dir_name(r - 1) / ROUND_WEIGHTS)
        new_masks = magnitude_masks(model, keep)
        load_weights(model, round0 / REWIND_WEIGHTS if rewind_step else run_dir / INIT_WEIGHTS)
        set_masks(model, new_masks)  # weights <- snapshot * mask
        start = rewind_step

    optimizer = _new_optimizer(model, training["make_optimizer"])
    model.compile(
        optimizer=optimizer,
        loss=training["loss"],
        metrics=training["metrics"],
        **training["compile_kwargs"],
    )
    optimizer.build(model.trainable_variables)
    _set_step(optimizer, start)
    if r > 0 and rewind_step and not settings["reset_optimizer"]:
        _load_optimizer_state(optimizer, round0 / REWIND_OPTIMIZER)
        masks = {id(w): m for _, w, m in pruned_variables(model)}
        for v in model.trainable_variables:
            if id(v) in masks:
                for slot in optimizer_slots(optimizer, v):
                    slot.assign(slot.numpy() * masks[id(v)].numpy().astype(slot.dtype))

    snapshot = None
    if r == 0 and rewind_step:
        optimizer_path = None if settings["reset_optimizer"] else work / REWIND_OPTIMIZER
        snapshot = _RewindSnapshot(rewind_step, work / REWIND_WEIGHTS, optimizer_path)
    loop = train_loop(
        model,
        # Step s trains on the batch round 0 trained on at step s.
        lambda step: train_data.repeat().skip(step),
        epochs=settings["epochs"],
        steps_per_epoch=steps_per_epoch,
        start_step=start,
        run_dir=work,  # the round's checkpoint and history.json
        callbacks=training["callbacks"] + ([snapshot] if snapshot else []),
        verbose=training["verbose"],
    )
    if snapshot is not None and not snapshot.done:
        raise RuntimeError(f"Round 0 never reached rewind_step={rewind_step}.")
    end = int(optimizer.iterations.numpy())

    test_metrics = {}
    if test_data is not None:
        test_metrics = model.evaluate(test_data, return_dict=True, verbose=training["verbose"])
        test_metrics = {k: float(v) for k, v in test_metrics.items()}
    kept_now, total = _mask_counts(model)
    if kept_now != keep:  # the selection is exact; anything else is a bug worth stopping for
        raise RuntimeError(f"Round {r} kept {kept_now} weights, expected {keep}.")

    report = sparsity_report(model)
    np.savez(work / ROUND_MASKS, **get_masks(model))
    save_weights(model, work / ROUND_WEIGHTS)
    write_json(work / ROUND_SPARSITY, report)
    (work / ROUND_SPARSITY_TEXT).write_text(format_sparsity_report(report) + "\n")
    last = {k: v[-1] for k, v in loop["history"].items() if v and v[-1] is not None}
    row = {
        "round": r,
        "kept": kept_now,
        "total": total,
        "global_sparsity": 1.0 - kept_now / total,
        "sparsity_all_params": report["all_params"]["sparsity"],
        "test_accuracy": _accuracy(test_metrics),
        "test_loss": test_metrics.get("loss"),
        "test_metrics": test_metrics,
        "train_metrics": last,
        "start_step": start,
        "end_step": end,
        "steps": end - start,
        "epochs": (end - start) / steps_per_epoch,
        "train_time_s": loop["fit_time_s"],
        "wall_time_s": time.perf_counter() - started,
    }
    write_json(work / ROUND_METRICS, row)
    # The finished round keeps its weights, masks and history; its checkpoint (the same
    # weights plus the optimizer) is only needed while it trains.
    shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
    final_dir = run_dir / round_dir_name(r)
    if final_dir.exists():  # a directory without metrics.json: not a finished round
        shutil.rmtree(final_dir)
    os.replace(work, final_dir)  # the round is finished exactly when this rename happens
    return row
