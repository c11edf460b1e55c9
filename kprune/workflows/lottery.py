"""Lottery-ticket iterative magnitude pruning with rewinding (`run_lottery`).

The workflow of Frankle & Carbin (2019), with the "late resetting" (rewinding) of Frankle et
al. (2020):

```
round 0:    train the dense model for T steps from its initialisation; the weights at step k
            (`rewind_step`) are saved on the way (k = 0: the initialisation itself)
round r>0:  from the weights trained in round r-1, prune globally the smallest |w| among the
            weights that are still unpruned, down to keep_r weights; reset the survivors to
            their values at step k (everything else too: biases, BatchNorm parameters and
            moving statistics); train steps k+1 .. T with a new optimizer whose step counter,
            and so its learning-rate schedule, starts at k
```

Masks are carried forward: a weight pruned in one round stays pruned in every later round.
With the default `rounding="nearest"`, round r keeps exactly `round(N * (1 - rate) ** r)` of
the `N` prunable weights (computed in exact rational arithmetic from the decimal value of
`rate`), so the sparsity after round r is `1 - (1 - rate) ** r` to the nearest weight.
`rounding="ceil"` follows open_lth instead: every round removes `ceil(rate * remaining)`.

Every finished round is written to `run_dir/round_XX/` in one atomic directory rename, so a
run that is interrupted and called again resumes at the first unfinished round and never
redoes a finished one.

Example:

>>> results = run_lottery(model, train_ds, make_optimizer=lambda: keras.optimizers.SGD(0.1),
...                       loss="sparse_categorical_crossentropy", rounds=3, epochs=2,
...                       run_dir="saved_models/lth", test_data=test_ds)  # doctest: +SKIP
>>> [round(r["global_sparsity"], 3) for r in results["rounds"]]  # doctest: +SKIP
[0.0, 0.2, 0.36, 0.488]
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import time
from fractions import Fraction
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.files import write_text_atomic
from kprune._internal.validate import check_integer
from kprune.api import (
    _check_model,
    _optimizer_slots,
    format_sparsity_report,
    get_masks,
    prune,
    pruned_variables,
    set_masks,
    sparsity_report,
)
from kprune.distribute import strategy_scope
from kprune.masking import prune_lowest
from kprune.versions import versions
from kprune.workflows.training import TrainTimer
from kprune.wrapper import exact_value

__all__ = ["ROUNDINGS", "kept_counts", "magnitude_masks", "round_dir_name", "run_lottery"]

ROUNDINGS = ("nearest", "ceil")

# Names inside run_dir. Kept as constants so the CLI and tests can find the files.
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

    >>> round_dir_name(3)
    'round_03'
    """
    return f"round_{round_index:02d}"


# -- argument checks ------------------------------------------------------------------------
def _check_rate(rate):
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ValueError(f"`rate` must be a number in (0, 1). Received: rate={rate!r}")
    if not 0.0 < float(rate) < 1.0:
        raise ValueError(
            "`rate` is the fraction of the remaining weights pruned per round and must be in "
            f"(0, 1). Received: rate={rate!r}"
        )
    return float(rate)


def kept_counts(total, rate, rounds, rounding="nearest"):
    """Number of weights kept after rounds 0, 1, ..., `rounds` (round 0 is dense).

    Args:
        total: number of prunable weights `N`, >= 1.
        rate: fraction of the remaining weights pruned per round, in (0, 1).
        rounds: number of pruning rounds, >= 0.
        rounding: `"nearest"`: round r keeps `round(N * (1 - rate) ** r)` (half to even),
            so the sparsity after every round is `1 - (1 - rate) ** r` to the nearest weight.
            `"ceil"` (open_lth): every round removes `ceil(rate * remaining)`, which drifts
            slightly above `1 - (1 - rate) ** r`.

    Returns:
        A list of `rounds + 1` non-increasing integers starting with `total`. Arithmetic is
        exact (rational) on the decimal value of `rate`, so 0.2 means exactly 1/5.

    Raises:
        ValueError: bad arguments, or a round that would keep no weight at all.

    Example:

    >>> kept_counts(1000, 0.2, 3)
    [1000, 800, 640, 512]
    >>> kept_counts(10, 0.2, 3, rounding="ceil")
    [10, 8, 6, 4]
    """
    total = check_integer("total", total, 1)
    rate = _check_rate(rate)
    rounds = check_integer("rounds", rounds, 0)
    if rounding not in ROUNDINGS:
        raise ValueError(f"`rounding` must be one of {ROUNDINGS}. Received: rounding={rounding!r}")
    # repr() gives the shortest decimal that reads back as this float: 0.2 -> 1/5 exactly.
    exact_rate = Fraction(repr(rate))
    kept = [total]
    for r in range(1, rounds + 1):
        if rounding == "nearest":
            kept.append(round(total * (1 - exact_rate) ** r))
        else:
            kept.append(kept[-1] - math.ceil(exact_rate * kept[-1]))
    if kept[-1] < 1:
        first_empty = next(r for r, k in enumerate(kept) if k < 1)
        raise ValueError(
            f"With {total} prunable weights, rate={rate} and rounding={rounding!r}, round "
            f"{first_empty} would keep no weight at all. Use fewer rounds (at most "
            f"{first_empty - 1}) or a lower rate. Received: rounds={rounds}"
        )
    return kept


# -- files ----------------------------------------------------------------------------------
def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {value!r}")


def _write_json(path, data):
    """Writes JSON atomically: a reader (or a resumed run) sees the old file or the new one."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _skip_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    return None if optimizer is None else [optimizer]


def _save_weights(model, path):
    """Model variables only (masks, BatchNorm statistics included; optimizer excluded)."""
    keras.saving.save_weights(model, str(path), objects_to_skip=_skip_optimizer(model))


def _load_weights(model, path):
    keras.saving.load_weights(model, str(path), objects_to_skip=_skip_optimizer(model))


def _save_optimizer_state(optimizer, path):
    store = {}
    optimizer.save_own_variables(store)
    np.savez(path, **store)


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

    >>> model = kprune.prune(keras.Sequential([keras.Input((2,)),
    ...                                        keras.layers.Dense(2, name="fc")]), None)
    >>> model.get_layer("fc").layer.kernel.assign([[1.0, -3.0], [0.5, 2.0]])
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
    """Saves the model (and optionally the optimizer state) right after optimizer step k."""

    def __init__(self, step, weights_path, optimizer_path=None):
        super().__init__()
        self.step = step
        self.weights_path = weights_path
        self.optimizer_path = optimizer_path
        self.done = False

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
        _save_weights(self.model, self.weights_path)
        if self.optimizer_path is not None:
            _save_optimizer_state(self.model.optimizer, self.optimizer_path)
        self.done = True


def _set_step(optimizer, step):
    """Starts a fresh optimizer at `step`, so a step-based learning-rate schedule resumes there."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    accumulation = getattr(inner, "gradient_accumulation_steps", None) or 1
    inner._iterations.assign(step * accumulation)


def _last_logs(history):
    return {k: float(v[-1]) for k, v in history.history.items() if len(v)}


def _accuracy(metrics):
    for key, value in metrics.items():
        if "accuracy" in key:
            return float(value)
    return None


# -- the workflow ---------------------------------------------------------------------------
def run_lottery(
    model,
    train_data,
    *,
    make_optimizer,
    loss,
    rounds,
    epochs,
    run_dir,
    rate=0.2,
    rewind_step=0,
    test_data=None,
    steps_per_epoch=None,
    metrics=("accuracy",),
    reset_optimizer=True,
    rounding="nearest",
    exclude=None,
    compile_kwargs=None,
    callbacks=None,
    verbose=0,
    prepare=None,
):
    """Finds a lottery ticket by iterative magnitude pruning with rewinding.

    Runs round 0 (dense training) and `rounds` pruning rounds, each pruning `rate` of the
    remaining prunable weights (one global magnitude threshold over all `PruningWrapper`s),
    rewinding the survivors to step `rewind_step` and retraining. See the module docstring
    for the algorithm. Calling it again with the same `run_dir` resumes: finished rounds are
    read back from disk, the first unfinished one is trained from the start. Passing a larger
    `rounds` to a finished run continues it.

    Files written under `run_dir`:

    * `lottery.json`: the settings; a resumed call must use the same ones (except `rounds`).
    * `init.weights.h5`: the initial weights (on resume they replace the weights of `model`).
    * `round_XX/`: `masks.npz` (keys as in `kprune.get_masks`), `weights.weights.h5` (the
      trained pruned model's variables, masks included), `metrics.json` (the round's row),
      `sparsity.json` / `sparsity.txt` (`kprune.sparsity_report`). `round_00/` also holds
      `rewind.weights.h5` (state at `rewind_step`, when > 0) and `rewind_optimizer.npz`
      (when `reset_optimizer=False`).
    * `results.json`: the returned dict, rewritten after every round.
    * `final.keras`: the pruned model of the last round (load with `import kprune` done).

    Args:
        model: a built, unpruned Sequential or functional `keras.Model`. It is not changed;
            `kprune.prune(model, None, scope="global", exclude=exclude)` makes the copy that
            is trained.
        train_data: a `tf.data.Dataset` of `(x, y)` (or `(x, y, sample_weight)`) batches.
            It is repeated, and later rounds skip its first `rewind_step` batches, so they
            see the same batches at the same steps as round 0 if the dataset is
            deterministic.
        make_optimizer: a callable that returns a new `keras.optimizers.Optimizer` on every
            call (one per round). Give it a step-based learning-rate schedule
            (`keras.optimizers.schedules`) to have the schedule resume at `rewind_step`.
        loss: the loss passed to `model.compile`.
        rounds: number of pruning rounds after round 0, >= 1. The sparsity after the last
            one is `1 - (1 - rate) ** rounds`.
        epochs: epochs per round, >= 1; every round ends at step `T = epochs *
            steps_per_epoch` (rounds after round 0 train steps `rewind_step + 1 .. T`).
        run_dir: output directory (created if needed).
        rate: fraction of the remaining weights pruned per round, in (0, 1); 0.2 as
            published.
        rewind_step: optimizer step whose weights the survivors are reset to, in
            `[0, T)`; 0 is the original lottery ticket (reset to initialisation), about
            500-2000 steps finds matching tickets for deeper networks.
        test_data: optional `tf.data.Dataset` evaluated after every round.
        steps_per_epoch: batches per epoch; defaults to the cardinality of `train_data`
            (required if that is infinite or unknown).
        metrics: metrics passed to `model.compile`; the first one whose name contains
            "accuracy" becomes `test_accuracy`.
        reset_optimizer: True (as published): every round gets a fresh optimizer (zero
            momentum / moments) with its step counter set to `rewind_step`. False: the
            optimizer state is rewound too, to its value at `rewind_step` in round 0 (the
            same thing when `rewind_step` is 0), with the slots of pruned weights zeroed.
        rounding: how the per-round count is rounded: `"nearest"` (default, the kept count
            after round r is `round(N * (1 - rate) ** r)`) or `"ceil"` (open_lth: remove
            `ceil(rate * remaining)` per round). See `kept_counts`.
        exclude: names of layers to leave dense, as in `kprune.prune`.
        compile_kwargs: extra keyword arguments of `model.compile` (e.g. `jit_compile`,
            `steps_per_execution`).
        callbacks: a list of Keras callbacks used in every round, or a callable
            `round_index -> list` (e.g. one TensorBoard directory per round).
        verbose: passed to `fit` / `evaluate`; with verbose > 0 a line per round is printed.
        prepare: optional `prepare(pruned_model)` called once on the pruned copy before any
            training, e.g. to put weight-decay regularizers on its variables
            (`kprune.workflows.training.apply_weight_decay`).

    Returns:
        A JSON-serializable dict: `method` ("lth"), `settings`, `num_prunable`,
        `pruned_variables`, `excluded`, `rounds` (one dict per round: `round`, `kept`,
        `total`, `global_sparsity`, `sparsity_all_params`, `test_accuracy`, `test_loss`,
        `test_metrics`, `train_metrics`, `start_step`, `end_step`, `steps`, `epochs`,
        `train_time_s`, `wall_time_s`), `total_steps`, `train_time_s`, `wall_time_s`,
        `final_global_sparsity`, `final_test_accuracy`, `final_model`, `versions`.

    Raises:
        ValueError / TypeError: bad arguments (with the value received and the allowed
            range), or a `run_dir` that holds a run with different settings.

    Example:

    >>> results = run_lottery(
    ...     model, train_ds, make_optimizer=lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     rounds=5, rate=0.2, rewind_step=100, epochs=10, run_dir="saved_models/lth",
    ...     test_data=test_ds)  # doctest: +SKIP
    """
    _check_model(model, "run_lottery")
    if not callable(make_optimizer):
        raise TypeError(
            "`make_optimizer` must be a callable returning a new keras optimizer, e.g. "
            f"`lambda: keras.optimizers.SGD(0.1)`. Received: make_optimizer={make_optimizer!r}"
        )
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if data is None and name == "test_data":
            continue
        if not isinstance(data, tf.data.Dataset):
            raise TypeError(
                f"`{name}` must be a batched tf.data.Dataset of (x, y). Received: "
                f"{name} of type {type(data).__name__}"
            )
    rounds = check_integer("rounds", rounds, 1)
    epochs = check_integer("epochs", epochs, 1)
    rate = _check_rate(rate)
    rewind_step = check_integer("rewind_step", rewind_step, 0)
    if rounding not in ROUNDINGS:
        raise ValueError(f"`rounding` must be one of {ROUNDINGS}. Received: rounding={rounding!r}")
    if steps_per_epoch is None:
        cardinality = int(train_data.cardinality())
        if cardinality < 1:
            raise ValueError(
                "`train_data` has no known finite length (cardinality "
                f"{cardinality}); pass `steps_per_epoch`. Received: steps_per_epoch=None"
            )
        steps_per_epoch = cardinality
    steps_per_epoch = check_integer("steps_per_epoch", steps_per_epoch, 1)
    total_steps = epochs * steps_per_epoch
    if rewind_step >= total_steps:
        raise ValueError(
            f"`rewind_step` must be in [0, {total_steps}): it is a step of round 0, which "
            f"trains epochs * steps_per_epoch = {epochs} * {steps_per_epoch} = {total_steps} "
            f"steps. Received: rewind_step={rewind_step}"
        )
    compile_kwargs = dict(compile_kwargs or {})
    for key in ("optimizer", "loss", "metrics"):
        if key in compile_kwargs:
            raise ValueError(
                f"Pass `{key}` as its own argument of run_lottery, not in `compile_kwargs`. "
                f"Received: compile_kwargs[{key!r}]={compile_kwargs[key]!r}"
            )
    execution = compile_kwargs.get("steps_per_execution", 1)
    if rewind_step % execution:
        raise ValueError(
            f"`rewind_step` must be a multiple of steps_per_execution={execution}, so that "
            f"training stops at it. Received: rewind_step={rewind_step}"
        )
    if callbacks is not None and not callable(callbacks):
        callbacks = list(callbacks)

    # Under a tf.distribute strategy, the pruned copy, every round's optimizer and all
    # loading and masking happen in the scope of the strategy the model was built under.
    with strategy_scope(model):
        pruned = prune(model, None, scope="global", exclude=exclude)
        if prepare is not None:
            prepare(pruned)
        entries = list(pruned_variables(pruned))
        num_prunable = int(sum(int(np.prod(w.shape)) for _, w, _ in entries))
        kept = kept_counts(num_prunable, rate, rounds, rounding)

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "rate": rate,
            "rewind_step": rewind_step,
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "reset_optimizer": bool(reset_optimizer),
            "rounding": rounding,
            "exclude": sorted(set([exclude] if isinstance(exclude, str) else (exclude or ()))),
            "pruned_variables": {path: [int(d) for d in w.shape] for path, w, _ in entries},
        }
        _check_settings(run_dir, settings)

        init_path = run_dir / INIT_WEIGHTS
        if init_path.exists():
            _load_weights(pruned, init_path)
        else:
            tmp = run_dir / f".init-tmp.{INIT_WEIGHTS}"
            _save_weights(pruned, tmp)
            os.replace(tmp, init_path)

        rows = []
        ran_last = False
        for r in range(rounds + 1):
            round_dir = run_dir / round_dir_name(r)
            if (round_dir / ROUND_METRICS).exists():
                rows.append(json.loads((round_dir / ROUND_METRICS).read_text()))
                continue
            round_callbacks = callbacks(r) if callable(callbacks) else callbacks
            row = _run_round(
                pruned,
                r,
                run_dir,
                train_data=train_data,
                test_data=test_data,
                make_optimizer=make_optimizer,
                loss=loss,
                metrics=list(metrics) if metrics else None,
                compile_kwargs=compile_kwargs,
                keep=kept[r],
                rewind_step=rewind_step,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                reset_optimizer=bool(reset_optimizer),
                callbacks=list(round_callbacks or []),
                verbose=verbose,
            )
            rows.append(row)
            ran_last = r == rounds
            if verbose:
                acc = row["test_accuracy"]
                print(
                    f"[kprune.workflows.lottery] round {r}: sparsity {row['global_sparsity']:.4f}, "
                    f"test accuracy {'n/a' if acc is None else f'{acc:.4f}'}, "
                    f"{row['steps']} steps, {row['wall_time_s']:.1f} s"
                )
            _write_json(run_dir / RESULTS_FILE, _results(settings, rows, rounds, num_prunable))

        if not ran_last:  # everything was already on disk: put the last round into the model
            _load_weights(pruned, run_dir / round_dir_name(rounds) / ROUND_WEIGHTS)
        tmp = run_dir / f".final-tmp.{FINAL_MODEL}"
        pruned.save(tmp)
        os.replace(tmp, run_dir / FINAL_MODEL)
        results = _results(settings, rows, rounds, num_prunable)
        _write_json(run_dir / RESULTS_FILE, results)
        return results


def _check_settings(run_dir, settings):
    path = run_dir / SETTINGS_FILE
    if not path.exists():
        _write_json(path, settings)
        return
    saved = json.loads(path.read_text())
    different = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if different:
        details = "; ".join(
            f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}" for k in different
        )
        raise ValueError(
            f"`run_dir`={str(run_dir)!r} holds a lottery run with other settings ({details}). "
            "Use a new run_dir, or the same settings to resume (only `rounds` may change)."
        )


def _results(settings, rows, rounds, num_prunable):
    last = rows[-1]
    return {
        "method": "lth",
        "settings": {**settings, "rounds": rounds},
        "num_prunable": num_prunable,
        "pruned_variables": list(settings["pruned_variables"]),
        "excluded": settings["exclude"],
        "rounds": rows,
        "total_steps": int(sum(r["steps"] for r in rows)),
        "train_time_s": float(sum(r["train_time_s"] for r in rows)),
        "wall_time_s": float(sum(r["wall_time_s"] for r in rows)),
        "final_global_sparsity": last["global_sparsity"],
        "final_test_accuracy": last["test_accuracy"],
        "final_model": FINAL_MODEL,
        "versions": versions(),
    }


def _run_round(
    model,
    r,
    run_dir,
    *,
    train_data,
    test_data,
    make_optimizer,
    loss,
    metrics,
    compile_kwargs,
    keep,
    rewind_step,
    epochs,
    steps_per_epoch,
    reset_optimizer,
    callbacks,
    verbose,
):
    """Trains round `r` and writes `run_dir/round_XX` atomically; returns its metrics row."""
    started = time.perf_counter()
    work = run_dir / f".{round_dir_name(r)}.tmp"
    if work.exists():  # left over from an interrupted run
        shutil.rmtree(work)
    work.mkdir()
    round0 = run_dir / round_dir_name(0)

    if r == 0:
        _load_weights(model, run_dir / INIT_WEIGHTS)
        start = 0
    else:
        # Score the weights trained in round r-1 (read from disk, so a resumed run does
        # exactly what an uninterrupted one does), then rewind the survivors.
        _load_weights(model, run_dir / round_dir_name(r - 1) / ROUND_WEIGHTS)
        new_masks = magnitude_masks(model, keep)
        rewind_from = round0 / REWIND_WEIGHTS if rewind_step else run_dir / INIT_WEIGHTS
        _load_weights(model, rewind_from)
        set_masks(model, new_masks)  # weights <- snapshot * mask
        start = rewind_step

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
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, **compile_kwargs)
    optimizer.build(model.trainable_variables)
    _set_step(optimizer, start)
    if r > 0 and rewind_step and not reset_optimizer:
        _load_optimizer_state(optimizer, round0 / REWIND_OPTIMIZER)
        masks = {id(w): m for _, w, m in pruned_variables(model)}
        for v in model.trainable_variables:
            if id(v) in masks:
                for slot in _optimizer_slots(optimizer, v):
                    slot.assign(slot.numpy() * masks[id(v)].numpy().astype(slot.dtype))

    clock = TrainTimer()
    extra = [clock]
    if r == 0 and rewind_step:
        optimizer_path = None if reset_optimizer else work / REWIND_OPTIMIZER
        snapshot = _RewindSnapshot(rewind_step, work / REWIND_WEIGHTS, optimizer_path)
        extra.append(snapshot)
    train_logs = _train(
        model,
        train_data,
        start=start,
        end=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks + extra,
        verbose=verbose,
    )
    if r == 0 and rewind_step and not snapshot.done:
        raise RuntimeError(f"Round 0 never reached rewind_step={rewind_step}.")
    end = int(optimizer.iterations.numpy())

    test_metrics = {}
    if test_data is not None:
        test_metrics = model.evaluate(test_data, return_dict=True, verbose=verbose)
        test_metrics = {k: float(v) for k, v in test_metrics.items()}
    kept_now, total = _mask_counts(model)
    if kept_now != keep:  # the selection is exact; anything else is a bug worth stopping for
        raise RuntimeError(f"Round {r} kept {kept_now} weights, expected {keep}.")

    report = sparsity_report(model)
    np.savez(work / ROUND_MASKS, **get_masks(model))
    _save_weights(model, work / ROUND_WEIGHTS)
    _write_json(work / ROUND_SPARSITY, report)
    (work / ROUND_SPARSITY_TEXT).write_text(format_sparsity_report(report) + "\n")
    row = {
        "round": r,
        "kept": kept_now,
        "total": total,
        "global_sparsity": 1.0 - kept_now / total,
        "sparsity_all_params": report["all_params"]["sparsity"],
        "test_accuracy": _accuracy(test_metrics),
        "test_loss": test_metrics.get("loss"),
        "test_metrics": test_metrics,
        "train_metrics": train_logs,
        "start_step": start,
        "end_step": end,
        "steps": end - start,
        "epochs": (end - start) / steps_per_epoch,
        "train_time_s": clock.seconds,
        "wall_time_s": time.perf_counter() - started,
    }
    _write_json(work / ROUND_METRICS, row)
    final_dir = run_dir / round_dir_name(r)
    if final_dir.exists():  # a directory without metrics.json: not a finished round
        shutil.rmtree(final_dir)
    os.replace(work, final_dir)  # the round is finished exactly when this rename happens
    return row


def _train(model, train_data, *, start, end, steps_per_epoch, callbacks, verbose):
    """Trains from optimizer step `start` to `end` with epochs aligned to round 0's.

    When `start` falls inside an epoch, the rest of that epoch is one short `fit`, so that
    epoch-based callbacks (e.g. `LearningRateScheduler`) see the same epoch at the same step
    as in round 0. Each `fit` skips the batches round 0 had used by its first step.
    """
    logs = {}
    step = start
    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        if offset:  # finish the epoch round 0 was in at step `start`
            stop_epoch, steps = epoch + 1, steps_per_epoch - offset
        else:
            stop_epoch, steps = end // steps_per_epoch, steps_per_epoch
        history = model.fit(
            train_data.repeat().skip(step),
            initial_epoch=epoch,
            epochs=stop_epoch,
            steps_per_epoch=steps,
            shuffle=False,
            callbacks=callbacks,
            verbose=verbose,
        )
        logs = _last_logs(history) or logs
        if model.stop_training:  # e.g. EarlyStopping: respect it, do not start another fit
            break
        step = stop_epoch * steps_per_epoch
    return logs
