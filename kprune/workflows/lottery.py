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

Every round trains on the shared loop (`kprune.workflows.training.train_loop`), with the one
checkpoint format inside its working directory, and is written to `run_dir/round_XX/` in one
atomic directory rename (`kprune.workflows.rounds`), so a run that is interrupted and called
again never redoes a finished round and resumes the unfinished one from its last epoch.

Example:

>>> results = run_lottery(model, train_ds, make_optimizer=lambda: keras.optimizers.SGD(0.1),
...                       loss="sparse_categorical_crossentropy", rounds=3, epochs=2,
...                       run_dir="saved_models/lth", test_data=test_ds)  # doctest: +SKIP
>>> [round(r["global_sparsity"], 3) for r in results["rounds"]]  # doctest: +SKIP
[0.0, 0.2, 0.36, 0.488]
"""

from __future__ import annotations

import json
import logging
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import tensorflow as tf

from kprune._internal.validate import check_choice, check_integer, check_number
from kprune._internal.walk import check_model
from kprune.api import prune, pruned_variables
from kprune.distribute import strategy_scope
from kprune.versions import versions
from kprune.workflows.rounds import (
    FINAL_MODEL,
    INIT_WEIGHTS,
    RESULTS_FILE,
    ROUND_METRICS,
    ROUND_WEIGHTS,
    SETTINGS_FILE,
    load_weights,
    magnitude_masks,
    round_dir_name,
    run_round,
    save_weights,
    write_json,
)

# The file names (FINAL_MODEL, ...) and round_dir_name live with the round's code, in
# kprune.workflows.rounds; they stay importable from here.
__all__ = ["FINAL_MODEL", "ROUNDINGS", "kept_counts", "magnitude_masks", "round_dir_name"]
__all__ += ["run_lottery"]

logger = logging.getLogger(__name__)

ROUNDINGS = ("nearest", "ceil")


def _check_rate(rate):
    meaning = "the fraction of the remaining weights pruned per round"
    return float(check_number("rate", rate, 0, 1, low_open=True, high_open=True, meaning=meaning))


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
    check_choice("rounding", rounding, ROUNDINGS)
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
        verbose: passed to `fit` / `evaluate`. A line per round is logged (INFO).
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
    check_model(model, "run_lottery")
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
    check_choice("rounding", rounding, ROUNDINGS)
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
            load_weights(pruned, init_path)
        else:
            save_weights(pruned, init_path)

        training = {
            "make_optimizer": make_optimizer,
            "loss": loss,
            "metrics": list(metrics) if metrics else None,
            "compile_kwargs": compile_kwargs,
            "verbose": verbose,
        }
        rows = []
        ran_last = False
        for r in range(rounds + 1):
            round_dir = run_dir / round_dir_name(r)
            if (round_dir / ROUND_METRICS).exists():  # finished: never redone
                rows.append(json.loads((round_dir / ROUND_METRICS).read_text()))
                continue
            round_callbacks = callbacks(r) if callable(callbacks) else callbacks
            row = run_round(
                pruned,
                r,
                run_dir,
                keep=kept[r],
                settings=settings,
                train_data=train_data,
                test_data=test_data,
                training={**training, "callbacks": list(round_callbacks or [])},
            )
            rows.append(row)
            ran_last = r == rounds
            acc = row["test_accuracy"]
            logger.info(
                "round %d: sparsity %.4f, test accuracy %s, %d steps, %.1f s",
                r,
                row["global_sparsity"],
                "n/a" if acc is None else f"{acc:.4f}",
                row["steps"],
                row["wall_time_s"],
            )
            write_json(run_dir / RESULTS_FILE, _results(settings, rows, rounds, num_prunable))

        if not ran_last:  # everything was already on disk: put the last round into the model
            load_weights(pruned, run_dir / round_dir_name(rounds) / ROUND_WEIGHTS)
        tmp = run_dir / f".final-tmp.{FINAL_MODEL}"
        pruned.save(tmp)
        os.replace(tmp, run_dir / FINAL_MODEL)
        results = _results(settings, rows, rounds, num_prunable)
        write_json(run_dir / RESULTS_FILE, results)
        return results


def _check_settings(run_dir, settings):
    path = run_dir / SETTINGS_FILE
    if not path.exists():
        write_json(path, settings)
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
