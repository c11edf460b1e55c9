"""Plan lines and training set-up shared by the methods that prune during training.

`kprune.experiment.methods` uses these for --dry_run and before training: the pruning window
from the --prune_* flags, the learning rate coupled to it (hold_cosine), the per-tensor ERK
targets (or how the sensitivity curves are measured), and a warning when mask updates fall
where the learning rate is low.

Example:

>>> callable(pruning_window_of)
True
"""

from __future__ import annotations

import dataclasses

import keras

from kprune.allocation import layer_budgets
from kprune.experiment.config import UsageError
from kprune.layer_sensitivity import DEFAULT_SPARSITIES
from kprune.masks import walk_model
from kprune.targets import is_prunable
from kprune.workflows.gradual import pruning_window
from kprune.workflows.training import make_learning_rate

__all__ = [
    "budget_lines",
    "late_pruning_warning",
    "lr_lines",
    "pruning_window_of",
    "sensitivity_sparsities",
    "training_of",
]


def pruning_window_of(ctx):
    """The schedule window from the --prune_* flags (fractions of training, or steps)."""
    f = ctx.config.flags
    return pruning_window(
        ctx.total_steps,
        begin=f["prune_begin"],
        end=f["prune_end"],
        frequency=f["prune_frequency"],
        begin_step=f["prune_begin_step"],
        end_step=f["prune_end_step"],
        frequency_steps=f["prune_frequency_steps"],
    )


def training_of(ctx):
    """The TrainConfig of a method that prunes during training: hold_cosine holds the rate
    until the pruning window's end (also for dense, so the baseline trains on the same rate)."""
    training = ctx.config.training
    if training.lr_schedule != "hold_cosine":
        return training
    return dataclasses.replace(training, lr_hold_end_step=pruning_window_of(ctx).end_step)


def late_pruning_warning(ctx, updates):
    """A warning line if mask updates fall where the learning rate is under 10% of its base.

    Weights pruned that late have little learning rate left to recover with; on the bundled
    digits, LeNet-300-100 pruned to 98% until after two 10x cuts lost 10-20 points of accuracy.
    """
    schedule = make_learning_rate(training_of(ctx), ctx.steps_per_epoch)
    base = ctx.config.training.learning_rate
    late = [step for step, _ in updates if float(schedule(step)) < 0.1 * base]
    if not late:
        return []
    return [
        f"warning   {len(late)} of {len(updates)} mask updates come after the learning rate has "
        f"fallen below 10% of its base value (from step {late[0]}); networks pruned that late "
        "often fail to recover. End pruning earlier (--prune_end) unless that is intended."
    ]


def _budget_layers(ctx):
    exclude = set(ctx.config.exclude)
    return [
        (layer, prefix)
        for layer, prefix in walk_model(ctx.model)
        if is_prunable(layer) and not isinstance(layer, keras.Model) and layer.name not in exclude
    ]


def sensitivity_sparsities(target):
    """The sparsities the CLI measures: `DEFAULT_SPARSITIES`, the target and one above it.

    Example:

    >>> sensitivity_sparsities(0.999)[-3:]
    (0.995, 0.999, 0.9995)
    """
    return tuple(sorted({*DEFAULT_SPARSITIES, float(target), round((1 + target) / 2, 6)} - {0.0}))


def budget_lines(ctx, schedule, sensitivity=None):
    """The per-tensor ERK or sensitivity targets (checks too that every pruned layer has one
    tensor). Before the curves are measured (`sensitivity` None: a dry run, or the plan printed
    before training) the sensitivity line says how they will be measured."""
    budget = ctx.config.budget
    if budget not in ("erk", "sensitivity"):
        return []
    walked = _budget_layers(ctx)
    layers, prefixes = [layer for layer, _ in walked], [prefix for _, prefix in walked]
    if budget == "sensitivity" and sensitivity is None:
        f = ctx.config.flags
        if f["sensitivity_batches"] >= ctx.steps_per_epoch:
            raise UsageError(
                f"--sensitivity_batches={f['sensitivity_batches']} holds out every batch of an "
                f"epoch ({ctx.steps_per_epoch}); hold out fewer."
            )
        try:  # the one-tensor-per-layer check, on ERK's targets (the same rule)
            layer_budgets(layers, schedule, "erk")
        except ValueError as err:
            raise UsageError(f"--budget=sensitivity: {err}") from err
        points = sensitivity_sparsities(ctx.config.target_sparsity)
        return [
            f"budget    sensitivity: a dense copy trains {f['sensitivity_steps']} steps on "
            f"epoch 0 less its first {f['sensitivity_batches']} batches, which are held out to "
            f"measure each tensor magnitude-pruned alone at {', '.join(f'{p:g}' for p in points)};"
            " per-tensor targets greedy on those curves (printed before training)"
        ]
    try:
        budgets = layer_budgets(
            layers, schedule, budget, sensitivity=sensitivity, prefixes=prefixes
        )
    except ValueError as err:
        raise UsageError(f"--budget={budget}: {err}") from err
    shown = [f"{layer.name} {s.final_sparsity:.2%}" for layer, (s, _) in zip(layers, budgets)]
    if len(shown) > 8:
        shown = shown[:4] + ["..."] + shown[-3:]
    return [f"budget    {budget} targets per tensor: {', '.join(shown)}"]


def lr_lines(ctx):
    training = training_of(ctx)
    if training.lr_hold_end_step is None:
        return []
    return [
        f"lr        {training.learning_rate:g} held until step {training.lr_hold_end_step} "
        f"(the pruning window's end), then cosine to 0 at step {ctx.total_steps - 1}"
    ]
