"""Gradual pruning within one training run: `dense`, `linear`, `polynomial`, `cyclical`.

The workflow is: wrap the prunable layers with a sparsity schedule (`kprune.prune`), train once
with `kprune.workflows.training.fit_and_evaluate` (the masks follow the schedule inside the
compiled train
step), strip the wrappers. `dense` trains the unpruned model with the same loop, as the
reference point.

| method       | schedule                                  | METHODS.md                        |
|--------------|-------------------------------------------|-----------------------------------|
| `dense`      | none                                      | baseline                          |
| `linear`     | `LinearSparsity`, monotone                | linear progressive magnitude      |
| `polynomial` | `PolynomialDecay` (power 3), monotone     | Zhu & Gupta gradual pruning       |
| `cyclical`   | `CyclicalSparsity`, pruned weights regrow | cyclical pruning                  |

The pruning window is given in steps; `pruning_window` turns fractions of training into steps.
`warmup_sensitivity` measures the curves of `budget="sensitivity"` on a briefly trained dense
copy (what `--budget=sensitivity` does before training).

Example:

>>> window = pruning_window(total_steps=1000, begin=0.0, end=0.75, frequency=0.01)
>>> window
PruningWindow(begin_step=0, end_step=750, frequency=10)
>>> make_schedule("linear", 0.9, window)
LinearSparsity(initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=750, frequency=10)
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from kprune._internal.validate import check_choice, check_integer, check_number
from kprune.allocation import BUDGET_SCOPES, resolve_budget
from kprune.api import prune, pruning_wrappers, set_masks, sparsity_report, strip
from kprune.criteria import get_criterion
from kprune.granularity import parse_granularity
from kprune.layer_sensitivity import DEFAULT_SPARSITIES, sensitivity
from kprune.schedules import CyclicalSparsity, LinearSparsity, PolynomialDecay
from kprune.workflows.training import (
    apply_weight_decay,
    fit_and_evaluate,
    make_loss,
    make_optimizer,
)

__all__ = [
    "GRADUAL_METHODS",
    "PruningWindow",
    "pruning_window",
    "make_schedule",
    "update_steps",
    "train_gradual",
    "warmup_sensitivity",
]

GRADUAL_METHODS = ("dense", "linear", "polynomial", "cyclical")


@dataclasses.dataclass(frozen=True)
class PruningWindow:
    """Where pruning happens, in optimizer steps: `[begin_step, end_step]`, every `frequency`.

    Example:

    >>> PruningWindow(0, 100, 10).end_step
    100
    """

    begin_step: int
    end_step: int
    frequency: int


def _fraction(name, value):
    return float(check_number(name, value, 0, 1, meaning="a fraction of training"))


def pruning_window(
    total_steps,
    *,
    begin=0.0,
    end=0.75,
    frequency=0.01,
    begin_step=None,
    end_step=None,
    frequency_steps=None,
):
    """Turns fractions of training (or explicit steps) into a `PruningWindow`.

    Steps are optimizer updates `0 .. total_steps - 1`; the mask update of step `t` happens in
    the forward pass of that step. A fraction `f` means step `round(f * total_steps)`; an end
    of 1.0 means the last step (`total_steps - 1`), so the final sparsity is always reached
    during training. The frequency fraction is of the whole training, at least one step.
    An explicit `*_step(s)` argument overrides its fraction.

    Args:
        total_steps: optimizer steps of the whole training (epochs x steps per epoch).
        begin, end, frequency: fractions of training in [0, 1].
        begin_step, end_step, frequency_steps: explicit steps, or None.

    Returns:
        A `PruningWindow`.

    Raises:
        ValueError: out-of-range values, `begin >= end`, or an end beyond training.

    Example:

    >>> pruning_window(200, end=1.0, frequency_steps=7)
    PruningWindow(begin_step=0, end_step=199, frequency=7)
    """
    total = check_integer("total_steps", total_steps, 2)
    last = total - 1
    if begin_step is None:
        begin_step = round(_fraction("begin", begin) * total)
    begin_step = check_integer("begin_step", begin_step, 0)
    if end_step is None:
        end_step = min(round(_fraction("end", end) * total), last)
    end_step = check_integer("end_step", end_step, 0)
    if end_step > last:
        raise ValueError(
            f"The pruning schedule ends at step {end_step}, beyond training: the last step is "
            f"{last} (total_steps={total}). Lower the end step or train longer."
        )
    if begin_step >= end_step:
        raise ValueError(
            f"The pruning schedule must begin before it ends. Received: begin_step={begin_step}, "
            f"end_step={end_step} (total_steps={total})"
        )
    if frequency_steps is None:
        frequency_steps = max(1, round(_fraction("frequency", frequency) * total))
    frequency_steps = check_integer("frequency_steps", frequency_steps, 1)
    return PruningWindow(begin_step, end_step, frequency_steps)


def make_schedule(
    method,
    target_sparsity,
    window,
    *,
    initial_sparsity=0.0,
    power=3.0,
    cycles=3,
    cycle_ramp="linear",
    cycle_start_sparsity=0.0,
):
    """The sparsity schedule of a gradual method (None for `dense`).

    Args:
        method: one of `GRADUAL_METHODS`.
        target_sparsity: final sparsity in [0, 1).
        window: a `PruningWindow`.
        initial_sparsity: sparsity at the start of pruning (first cycle, for cyclical).
        power: exponent of `polynomial`.
        cycles, cycle_ramp, cycle_start_sparsity: shape of `cyclical` (see
            `kprune.CyclicalSparsity`).

    Returns:
        A `kprune.PruningSchedule` or None.

    Example:

    >>> make_schedule("polynomial", 0.8, PruningWindow(0, 100, 10)).power
    3.0
    """
    check_choice("method", method, GRADUAL_METHODS)
    if method == "dense":
        return None
    if method == "linear":
        return LinearSparsity(
            initial_sparsity,
            target_sparsity,
            window.begin_step,
            window.end_step,
            frequency=window.frequency,
        )
    if method == "polynomial":
        return PolynomialDecay(
            initial_sparsity,
            target_sparsity,
            window.begin_step,
            window.end_step,
            power=power,
            frequency=window.frequency,
        )
    return CyclicalSparsity(
        target_sparsity,
        window.begin_step,
        window.end_step,
        cycles=cycles,
        ramp=cycle_ramp,
        initial_sparsity=initial_sparsity,
        cycle_start_sparsity=cycle_start_sparsity,
        frequency=window.frequency,
    )


def update_steps(schedule, total_steps):
    """The steps in `0 .. total_steps - 1` at which `schedule` updates the masks, with targets.

    Evaluates the schedule itself on every step of its window, so it is exactly what training
    does.

    Returns:
        A list of `(step, target_sparsity)` pairs.

    Example:

    >>> [s for s, _ in update_steps(LinearSparsity(0.0, 0.5, 0, 25, frequency=10), 100)]
    [0, 10, 20, 25]
    """
    first = getattr(schedule, "begin_step", 0)
    last = min(schedule.last_update_step, total_steps - 1)
    if last < first:
        return []

    # pfor vectorizes the schedule's own ops (falling back to a loop for ops it cannot), so
    # this is exactly what the train step computes, for ~10^5 steps in well under a second.
    should, target = tf.vectorized_map(schedule, tf.range(first, last + 1, dtype=tf.int64))
    steps = tf.boolean_mask(tf.range(first, last + 1), should).numpy().tolist()
    targets = tf.boolean_mask(target, should).numpy().tolist()
    return list(zip(steps, targets))


def train_gradual(
    model,
    data,
    schedule,
    training,
    *,
    scope="global",
    exclude=(),
    run_dir=None,
    callbacks=(),
    verbose=1,
    criterion="magnitude",
    initial_masks=None,
    budget=None,
    granularity="weight",
    sensitivity=None,
):
    """Prunes `model` along `schedule` while training it once; returns it stripped.

    Args:
        model: a built Sequential or functional Keras model that outputs logits.
        data: a `kprune.data.Dataset`.
        schedule: a `kprune.PruningSchedule` (e.g. from `make_schedule`), or None to train
            dense.
        training: a `kprune.workflows.training.TrainConfig`. With `lr_schedule="hold_cosine"`
            and no `lr_hold_end_step`, the rate is held until the schedule's last update.
        scope: "global" (one magnitude threshold over all pruned tensors) or "layer".
        budget: "global", "uniform", "erk" or "sensitivity" (`kprune.allocation.BUDGETS`),
            instead of `scope` (see `kprune.prune`); None: from `scope`.
        sensitivity: the `SensitivityCurves` of `kprune.sensitivity` for
            `budget="sensitivity"`.
        exclude: names of layers to keep dense.
        run_dir: optional directory for logs and checkpoints (see `fit_and_evaluate`).
        callbacks: extra Keras callbacks.
        verbose: Keras `fit` verbosity.
        criterion: which weights each update removes: `"magnitude"` (the smallest |w| among
            the active weights) or `"fggp"` / a `kprune.FGGP(...)` (gradient first, magnitude
            next).
        initial_masks: optional `{path: 0/1 array}` set before training (e.g. a random ERK
            mask from `kprune.masks_at_init(..., method="random", scope="erk")` for a sparse
            start); the schedule then continues from that sparsity.
        granularity: `"weight"`, `"channel"` (then `budget` None, `scope` "layer" or
            "global", channels ranked by L1 norm unless `criterion` names a channel
            criterion) or `"N:M"` such as `"2:4"`, as in `kprune.prune`.

    Returns:
        `(stripped_model, results)`: a plain Keras model with the zeros baked in, and a dict
        with the entries of `fit_and_evaluate` plus `schedule` (its config, or None),
        `scope`, `budget` (None for dense), `lr_hold_end_step`, `exclude`, `sparsity`
        (`kprune.sparsity_report` of the pruned model: per tensor rows with `wrapped`, and
        totals).

    Example:

    >>> from kprune import data as data_lib, models
    >>> from kprune.workflows import training
    >>> data = data_lib.load_dataset("digits", batch_size=64)
    >>> model = models.lenet300_100(data.input_shape, data.num_classes)
    >>> window = pruning_window(5 * data.steps_per_epoch)
    >>> stripped, results = train_gradual(
    ...     model, data, make_schedule("linear", 0.9, window),
    ...     training.TrainConfig(epochs=5), verbose=0)  # doctest: +SKIP
    """
    exclude = tuple(exclude or ())
    channel = parse_granularity(granularity).kind == "channel"
    if channel:
        if budget is not None:
            raise ValueError(
                f"budget={budget!r} applies to weight pruning; at granularity='channel' use "
                "scope='layer' or scope='global'."
            )
    else:
        budget = resolve_budget(budget, scope)
        scope = BUDGET_SCOPES[budget]
    if (
        schedule is not None
        and training.lr_schedule == "hold_cosine"
        and training.lr_hold_end_step is None
    ):
        # The rate couples to the window: held while the masks change, cosine afterwards.
        hold = min(schedule.last_update_step, training.epochs * data.steps_per_epoch - 1)
        training = dataclasses.replace(training, lr_hold_end_step=hold)
    if schedule is None:
        if exclude:
            raise ValueError(f"`exclude` only applies to pruning methods. Received: {exclude}")
        trained = model
    else:
        # The pruned copy (wrappers, masks) lives under the strategy the model was built under.
        with model.distribute_strategy.scope():
            prune_args = (
                {"scope": scope} if channel else {"budget": budget, "sensitivity": sensitivity}
            )
            if (
                channel and isinstance(criterion, str) and criterion == "magnitude"
            ):  # the default: channels rank by L1 norm
                criterion = None
            trained = prune(
                model,
                schedule,
                exclude=list(exclude),
                criterion=criterion,
                granularity=granularity,
                **prune_args,
            )
            if initial_masks:
                set_masks(trained, initial_masks)
    results = fit_and_evaluate(
        trained, data, training, run_dir=run_dir, callbacks=callbacks, verbose=verbose
    )
    results["schedule"] = (
        None if schedule is None else {"class": type(schedule).__name__, **schedule.get_config()}
    )
    results["scope"] = None if schedule is None else scope
    results["budget"] = None if schedule is None else budget
    results["lr_hold_end_step"] = training.lr_hold_end_step
    if str(granularity) != "weight":  # results of weight pruning stay as they were
        results["granularity"] = str(granularity)
    if schedule is not None and channel:
        chosen = pruning_wrappers(trained)[0].criterion
        results["criterion"] = {"class": type(chosen).__name__, **chosen.get_config()}
    elif schedule is not None:
        chosen = get_criterion(criterion)
        results["criterion"] = {"class": type(chosen).__name__, **chosen.get_config()}
    else:
        results["criterion"] = None
    results["exclude"] = list(exclude)
    results["sparsity"] = sparsity_report(trained)
    stripped = trained if schedule is None else strip(trained)
    return stripped, results


def warmup_sensitivity(
    model,
    data,
    training,
    *,
    steps,
    held_out_batches=4,
    sparsities=DEFAULT_SPARSITIES,
    exclude=(),
):
    """Sensitivity curves of `model` after a short dense warm-up, on held-out training data.

    The first `held_out_batches` batches of epoch 0 of `data.train_epochs` are held out; a
    copy of `model` (`model` itself is not changed) trains `steps` steps with the optimizer,
    loss and weight decay of `training` on the other batches of that epoch (repeated in the
    same order if `steps` is longer than they are), so it never sees the held-out examples;
    then `kprune.sensitivity` measures the copy on them. Deterministic for a given seed of
    `data`. The test split is not used.

    Args:
        model: a built Sequential or functional Keras model that outputs logits.
        data: a `kprune.data.Dataset` from `load_dataset` (with `train_epochs`).
        training: a `kprune.workflows.training.TrainConfig` (its learning-rate schedule is
            followed from step 0).
        steps: warm-up optimizer steps, >= 0.
        held_out_batches: batches held out for measuring, >= 1 and below `steps_per_epoch`.
        sparsities, exclude: as in `kprune.sensitivity`.

    Returns:
        A `kprune.SensitivityCurves`.

    Example:

    >>> from kprune import data as data_lib, models
    >>> from kprune.workflows.training import TrainConfig
    >>> data = data_lib.load_dataset("digits", batch_size=64)
    >>> model = models.lenet300_100(data.input_shape, data.num_classes)
    >>> curves = warmup_sensitivity(model, data, TrainConfig(), steps=20)  # doctest: +SKIP
    """
    steps = check_integer("steps", steps, 0)
    held = check_integer("held_out_batches", held_out_batches, 1)
    if not getattr(data, "replayable", False):
        raise ValueError(
            "warmup_sensitivity needs a dataset from kprune.data.load_dataset (its replayable "
            "train_epochs stream decides which batches are held out)."
        )
    if held >= data.steps_per_epoch:
        raise ValueError(
            f"held_out_batches={held} leaves no training batch in an epoch of "
            f"{data.steps_per_epoch}; hold out fewer batches."
        )
    epoch = data.train_epochs(0).take(data.steps_per_epoch)
    warm = keras.models.clone_model(model)
    warm.set_weights(model.get_weights())
    if steps:
        apply_weight_decay(warm, training.weight_decay)
        warm.compile(
            optimizer=make_optimizer(training, data.steps_per_epoch), loss=make_loss(training)
        )
        warm.fit(
            epoch.skip(held).repeat(), epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False
        )
    return sensitivity(warm, epoch.take(held), sparsities=sparsities, exclude=list(exclude))
