"""One experiment from a `RunConfig`: every check first, then training and the run's outputs.

`run(config, echo)` checks the method, the export formats, the run directory, the dataset,
the model and the method's plan before anything is written; only then does it create the run
directory, train with the method of `kprune.experiment.methods`, and write model.keras,
results.json and (with --export) export/. The text meant for the user (the plan, the summary)
goes to `echo`; `kprune.train` passes `print`.

Example:

>>> results = run(config_from_flags(FLAGS), echo=print)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time

import keras
import tensorflow as tf

from kprune import data as data_lib
from kprune import distribute
from kprune._internal.walk import weight_key
from kprune.api import sparsity_report
from kprune.experiment import report
from kprune.experiment import run_dir as run_dir_lib
from kprune.experiment.config import UsageError
from kprune.experiment.methods import METHODS, RunContext
from kprune.export import FORMATS, QUANTIZE_MODES, ParityError, export, format_export_report
from kprune.granularity import nm_problem, parse_granularity
from kprune.masks import walk_model
from kprune.models import build_model
from kprune.targets import is_prunable, prunable_weights
from kprune.versions import versions

__all__ = ["run"]

_log = logging.getLogger(__name__)


def _distribution(config):
    """`(config, strategy)`: creates the strategy (first: multi_worker and tpu insist on it).

    A non-chief worker of a multi-worker run gets its own run directory,
    `<model_dir>.<task>_<index>`; the chief writes --model_dir. A dry run creates no
    multi_worker or tpu strategy (strategy None): it would join the cluster or connect the TPU.
    """
    try:
        if config.strategy == "multi_worker":
            task = distribute.cluster_task()
            if not task.is_chief:
                config = dataclasses.replace(config, model_dir=f"{config.run_dir}.{task.name}")
        if config.dry_run and config.strategy in ("multi_worker", "tpu"):
            return config, None
        return config, distribute.make_strategy(config.strategy, tpu=config.tpu)
    except ValueError as err:
        raise UsageError(f"--strategy={config.strategy}: {err}") from err


def _check_method(config):
    if config.method not in METHODS:
        raise UsageError(
            f"Unknown --method={config.method}. Available methods: {', '.join(METHODS)}."
        )


def _check_export(config):
    """Validates --export/--export_quantize (whether they are asked for at all)."""
    if not config.export:
        if config.export_quantize is not None:
            raise UsageError("--export_quantize needs --export (e.g. --export=tflite).")
        return
    unknown = sorted(set(config.export) - set(FORMATS))
    if unknown:
        raise UsageError(f"--export: unknown formats {unknown}; valid: {', '.join(FORMATS)}")
    if config.export_quantize is not None and config.export_quantize not in QUANTIZE_MODES:
        raise UsageError(
            f"--export_quantize={config.export_quantize} is not one of {', '.join(QUANTIZE_MODES)}"
        )


def _prunable_rows(config, model):
    rows = sparsity_report(model)["layers"]
    unknown = sorted(set(config.exclude) - {layer.name for layer in model.layers})
    if unknown:
        raise UsageError(
            f"--exclude names layers that are not in model {config.model}: {unknown}. "
            f"Prunable layers: {sorted({row['layer'] for row in rows})}"
        )
    whole_groups = _nm_weights(config, model)
    for row in rows:
        layer_name = row["layer"].split("/")[-1]
        row["pruned"] = config.method != "dense" and layer_name not in config.exclude
        if whole_groups is not None:
            row["pruned"] = row["pruned"] and row["weight"] in whole_groups
    return rows


def _nm_weights(config, model):
    """Keys of the weights that can hold --granularity=N:M (None at other granularities)."""
    granularity = parse_granularity(config.granularity)
    if not granularity.is_nm:
        return None
    return {
        weight_key(prefix, layer, w)
        for layer, prefix in walk_model(model)
        if is_prunable(layer)
        for w in prunable_weights(layer)
        if nm_problem(layer, w, granularity.m) is None
    }


def _prepare(config, strategy):
    """Every check, before anything is written: returns `(ctx, plan_lines, decision)`."""
    _check_method(config)
    _check_export(config)
    decision = "dry" if config.dry_run else run_dir_lib.decide(config)
    info = data_lib.dataset_info(config.dataset, config.data_dir)
    steps_per_epoch = -(-info.train_size // config.batch_size)
    if config.training.epochs * steps_per_epoch < 2:
        raise UsageError(
            f"Training has only {config.training.epochs * steps_per_epoch} step; use more "
            "epochs or a smaller batch size."
        )
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision != "off":
        keras.mixed_precision.set_dtype_policy(f"mixed_{config.mixed_precision}")
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build_model(config.model, info.input_shape, info.num_classes)
    ctx = RunContext(config, info, model, steps_per_epoch, strategy=strategy)
    if strategy is not None:
        ctx.distribution = {"name": config.strategy, **distribute.describe_strategy(strategy)}
        ctx.distribution["global_batch_size"] = config.batch_size
    plan_lines = report.plan_lines(ctx, _prunable_rows(config, model))
    if not config.dry_run:
        ctx.data = data_lib.load_dataset(
            config.dataset,
            config.batch_size,
            data_dir=config.data_dir,
            seed=config.seed,
            download=config.download,
        )
        if ctx.data.steps_per_epoch != steps_per_epoch:
            raise UsageError(
                f"Dataset {config.dataset} has {ctx.data.train_size} training examples, not the "
                f"{info.train_size} expected; steps would not match the schedule."
            )
    return ctx, plan_lines, decision


def _export(ctx, stripped, model_path, echo):
    """Runs kprune.export on the final model: `(export results, ParityError or None)`.

    A channel-pruned model (`--granularity=channel`) is exported shrunk (`shrink=True`).

    The size and parity table goes to `echo` (the CLI prints it), whether parity passed or not.
    """
    config = ctx.config
    if ctx.distribution["replicas"] > 1:  # export plain variables, not mirrored ones
        stripped = keras.models.load_model(model_path)
    # Calibration (int8) from the training pipeline, parity samples from the test split.
    options = {
        "formats": list(config.export),
        "representative_data": ctx.data.train,
        "eval_data": ctx.data.test,
        "overwrite": True,
        "verbose": False,
    }
    if config.export_quantize is not None:
        options["quantize"] = config.export_quantize
    # The workflow hands over the stripped model, whose removed channels are all-zero weights
    # but no longer masks: ask export to find them and write the shrunk model.
    if config.granularity == "channel":
        options["shrink"] = True
    try:
        report = export(stripped, ctx.run_dir / "export", **options)
    except ParityError as err:  # the files are written; say so in results.json too
        echo(format_export_report(err.report))
        return {"parity_error": str(err)}, err
    echo(format_export_report(report))
    return report, None


def _execute(ctx, plan_lines, decision, echo):
    """Trains (input is valid) holding the run directory's lock; writes every output."""
    with run_dir_lib.lock(ctx.config.run_dir):
        # Decided again under the lock: another run may have started or finished meanwhile.
        if run_dir_lib.decide(ctx.config, locked=True) != decision:
            raise UsageError(
                f"--model_dir={ctx.config.run_dir} changed while this run was starting (another "
                "run used it); run again to see what it holds now."
            )
        return _train_and_write(ctx, plan_lines, decision, echo)


def _train_and_write(ctx, plan_lines, decision, echo):
    config = ctx.config
    if decision == "resume":
        echo(f"Resuming the unfinished run in {config.run_dir}.")
    run_dir = ctx.run_dir = run_dir_lib.start(config, decision)
    ctx.echo = echo
    echo("\n".join(plan_lines))
    start = time.perf_counter()
    # Model, masks, optimizer and pruning state are all created in the strategy's scope.
    with distribute.strategy_scope(ctx.strategy):
        stripped, method_results = METHODS[config.method].run(ctx)
    wall_time = time.perf_counter() - start

    model_path = run_dir_lib.save_model(run_dir, stripped)
    parity_error = None
    if config.export:
        method_results["export"], parity_error = _export(ctx, stripped, model_path, echo)

    final = sparsity_report(stripped)
    pruned_report = method_results.pop("sparsity", None) or final
    results = {
        "method": config.method,
        "model": config.model,
        "dataset": config.dataset,
        "target_sparsity": config.target_sparsity,
        "global_sparsity": final["prunable"]["sparsity"],
        "test_accuracy": method_results.pop("test_accuracy"),
        "dense_params": final["all_params"]["total"],
        "nonzero_params": final["all_params"]["nonzero"],
        "prunable_params": final["prunable"]["total"],
        "nonzero_prunable_params": final["prunable"]["nonzero"],
        "all_params_sparsity": final["all_params"]["sparsity"],
        "pruned": pruned_report["pruned"],
        "layers": pruned_report["layers"],
        # Weights that look prunable but kprune cannot prune (custom layers, Lambda captures).
        "left_dense": pruned_report.get("left_dense", []),
        "total_steps": method_results.pop("total_steps"),
        "steps_per_epoch": ctx.steps_per_epoch,
        "epochs": config.training.epochs,
        "wall_time_s": round(wall_time, 3),
        "input_shape": list(ctx.info.input_shape),
        "num_classes": ctx.info.num_classes,
        "train_size": ctx.info.train_size,
        "test_size": ctx.info.test_size,
        "model_path": str(model_path),
        "distribution": ctx.distribution,
        **method_results,
        "versions": versions(),
        "flags": config.flags,
    }
    results["diverged"] = _diverged(results)
    run_dir_lib.write_results(run_dir, results)
    echo(report.summary_paragraph(config, results, run_dir))
    # A diverged model's export says nothing (NaN weights); the divergence is what to report.
    if parity_error is not None and not results["diverged"]:
        raise parity_error
    return results


def _diverged(results):
    """Whether training diverged: the workflow says so, or a test loss is NaN or infinite.

    Lottery rounds report no flag of their own; their test losses tell.
    """
    losses = [results.get("test_loss")]
    losses += [row.get("test_loss") for row in results.get("rounds") or ()]
    return bool(results.get("diverged")) or any(
        isinstance(loss, numbers.Real) and not math.isfinite(loss) for loss in losses
    )


def run(config, echo=_log.info):
    """Runs one experiment described by `config`; returns results (None for a dry run).

    Everything that can be wrong with the input is checked before the run directory is
    created: the method, names, the dataset (.npz contents, tfds availability), the model, the
    schedule, the run directory and the export formats.

    Args:
        config: a `kprune.experiment.RunConfig`.
        echo: called with each piece of text for the user (the plan, a note that an
            unfinished run resumes, the summary paragraph), as it becomes true; the command
            line passes `print`.

    Raises:
        UsageError: bad input (nothing was written).
        kprune.export.ParityError: the exported files disagree with the Keras model (every
            output, results.json included, is written); not raised for a diverged run, whose
            results say `"diverged": true` instead.

    Example:

    >>> results = run(config_from_flags(FLAGS), echo=print)  # doctest: +SKIP
    """
    previous_policy = keras.mixed_precision.dtype_policy()
    try:
        config, strategy = _distribution(config)
        try:
            ctx, plan_lines, decision = _prepare(config, strategy)
        except UsageError:
            raise
        except ValueError as err:  # kprune's own input checks (model, dataset, schedule)
            raise UsageError(str(err)) from err
        if config.dry_run:
            echo("\n".join(plan_lines))
            echo("dry run: no data loaded, nothing trained, no files written.")
            return None
        return _execute(ctx, plan_lines, decision, echo)
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
