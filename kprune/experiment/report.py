"""What the command line says about a run: the plan (--dry_run) and the summary paragraph.

Example:

>>> _replicas_note({"distribution": {"replicas": 2, "strategy": "MirroredStrategy"}})
' on 2 replicas, MirroredStrategy'
"""

from __future__ import annotations

import numpy as np

from kprune.distribute import cluster_task
from kprune.experiment.methods import METHODS

# Methods that prune during training: their per-tensor choice is the budget (--budget).
_BUDGETED = ("linear", "polynomial", "cyclical", "fggp")

__all__ = ["distribution_lines", "plan_lines", "summary_paragraph"]


def plan_lines(ctx, prunable_rows):
    """The plan of a run (--dry_run prints it, a run prints it before training).

    Lines on the model, data, steps, optimizer, distribution and method (the method's own
    `plan` lines), then the prunable tensors (`prunable_rows`: `sparsity_report` rows, each
    with `pruned` set).
    """
    config, info, model = ctx.config, ctx.info, ctx.model
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    training = config.training
    lines = [
        f"model     {config.model}: input {info.input_shape}, {info.num_classes} classes",
        f"params: {model.count_params()} ({model.count_params() / 1e6:.2f}M; trainable "
        f"{trainable})",
        f"dataset   {config.dataset}: {info.train_size} train / {info.test_size} test examples",
        f"steps     {training.epochs} epochs x {ctx.steps_per_epoch} steps (batch "
        f"{config.batch_size}) = {ctx.total_steps} steps",
        f"optimizer {training.optimizer} lr {training.learning_rate:g} ({training.lr_schedule}"
        + (
            f", x{training.lr_decay_factor:g} at epochs "
            f"{', '.join(f'{e:g}' for e in training.lr_decay_epochs)}"
            if training.lr_schedule == "step"
            else ""
        )
        + (f", warm-up {training.lr_warmup_epochs:g} epochs" if training.lr_warmup_epochs else "")
        + f"), weight decay {training.weight_decay:g}, label smoothing "
        f"{training.label_smoothing:g}, mixed precision {config.mixed_precision}",
        *distribution_lines(ctx),
        f"method    {config.method}: {METHODS[config.method].summary}"
        + (f", target sparsity {config.target_sparsity:g}" if config.method != "dense" else ""),
    ]
    lines += METHODS[config.method].plan(ctx)
    total = sum(row["total"] for row in prunable_rows)
    pruned_total = sum(row["total"] for row in prunable_rows if row["pruned"])
    to_remove = round(config.target_sparsity * pruned_total) if config.method != "dense" else 0
    end = f"{to_remove} of them zero at the end ({pruned_total - to_remove} kept)"
    if getattr(config, "granularity", "weight") == "channel":
        end = (
            f"{config.target_sparsity:g} of the channels of every traced channel group "
            "removed at the end (the tensors' zeros follow from the groups)"
        )
    lines.append(
        f"prunable weights: {len(prunable_rows)} tensors, {total} weights; "
        f"{pruned_total} pruned by this method, {end}"
    )
    for row in prunable_rows:
        shape = "x".join(str(d) for d in row["shape"])
        note = "" if row["pruned"] else "  (kept dense)"
        lines.append(f"  {row['weight']:<44} {shape:<16} {row['total']:>10}{note}")
    return lines


def distribution_lines(ctx):
    """One line on the strategy: replicas, devices and how the global batch is split."""
    config = ctx.config
    if ctx.strategy is None:  # a dry run does not join a cluster or connect to a TPU
        if config.strategy == "multi_worker":
            task = cluster_task()
            return [
                f"distribute multi_worker: MultiWorkerMirroredStrategy over {task.workers} "
                f"workers from TF_CONFIG, this process {task.name}"
                + (" (chief)" if task.is_chief else f", writing to {config.run_dir}")
                + f"; global batch {config.batch_size}; not connected in a dry run"
            ]
        return [
            f"distribute tpu: TPUStrategy on {config.tpu or '$TPU_NAME'}; global batch "
            f"{config.batch_size}; not connected in a dry run"
        ]
    info = ctx.distribution
    replicas = info["replicas"]
    share, extra = divmod(config.batch_size, replicas)
    split = f"{share} per replica" if not extra else f"{share}-{share + 1} per replica, uneven"
    devices = ", ".join(d.split("device:")[-1] for d in info["devices"])
    return [
        f"distribute {config.strategy}: {info['strategy']}, {replicas} replica"
        + ("s" if replicas > 1 else "")
        + (f" on {info['workers']} workers" if info["workers"] > 1 else "")
        + f" ({devices}); global batch {config.batch_size} = {split}"
        + (
            "; only one device is visible, so there is no data parallelism"
            if config.strategy == "mirrored" and replicas == 1
            else ""
        )
    ]


def _replicas_note(results):
    info = results.get("distribution") or {}
    if info.get("replicas", 1) < 2:
        return ""
    return f" on {info['replicas']} replicas, {info['strategy']}"


def _how(config):
    """ "erk budget", "layer scope", or with the granularity: "2:4, uniform budget"."""
    budgeted = config.method in _BUDGETED and config.budget is not None
    how = f"{config.budget} budget" if budgeted else f"{config.scope} scope"
    granularity = getattr(config, "granularity", "weight")
    return how if granularity == "weight" else f"{granularity} granularity, {how}"


def summary_paragraph(config, results, run_dir):
    """The paragraph printed after a run: what was trained, accuracy, sparsity, outputs."""
    steps = results["total_steps"]
    what = (
        "without pruning"
        if config.method == "dense"
        else f"with {config.method} pruning to {config.target_sparsity:.2%} sparsity "
        f"({_how(config)})"
    )
    return (
        f"Trained {config.model} on {config.dataset} {what} for {config.training.epochs} epochs "
        f"({steps} steps{_replicas_note(results)}) in {results['wall_time_s']:.0f} s. "
        "Test accuracy "
        f"{results['test_accuracy']:.4f}"
        + (
            f" (best epoch {results['best_test_accuracy']:.4f})"
            if results.get("best_test_accuracy") is not None
            else ""
        )
        + f"; sparsity {results['global_sparsity']:.2%} of the prunable weights, "
        f"{results['nonzero_params']} of {results['dense_params']} parameters non-zero. "
        f"Outputs are in {run_dir}/: model.keras (stripped), results.json, run.flags, "
        f"checkpoints/, and TensorBoard logs (tensorboard --logdir {run_dir}/logs)."
        + (
            f" {len(results['left_dense'])} prunable-looking weight(s) were left dense "
            f"(kprune cannot prune them; listed under left_dense in results.json): "
            f"{', '.join(results['left_dense'][:5])}"
            + (", ..." if len(results["left_dense"]) > 5 else "")
            + "."
            if results.get("left_dense")
            else ""
        )
        + (
            " WARNING: training diverged (the loss became NaN or infinite) and was stopped; "
            "lower --lr or check the data."
            if results.get("diverged")
            else ""
        )
    )
