"""The method registry behind --method: how to plan each method and how to run it.

A `Method`'s `plan` validates the method's options against the model and step counts and
describes what it will do; its `run` turns the `RunContext` into plain arguments for one
workflow function (`kprune.workflows.gradual`, `.at_init`, `.lottery`) and trains.

Example:

>>> list(METHODS)[:4]
['dense', 'linear', 'polynomial', 'cyclical']
>>> METHODS["lth"].summary
'lottery ticket: iterative magnitude pruning, rewinding'
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable

import keras

from kprune._internal.files import write_text_atomic
from kprune.api import sparsity_report, strip
from kprune.criteria import FGGP
from kprune.distribute import ReplicaMaskCheck
from kprune.experiment.config import UsageError, check_bounds
from kprune.experiment.plan import (
    budget_lines,
    late_pruning_warning,
    lr_lines,
    pruning_window_of,
    sensitivity_sparsities,
    training_of,
)
from kprune.experiment.run_config import RunConfig, lth_rounds
from kprune.granularity import parse_granularity
from kprune.layer_sensitivity import SensitivityCurves
from kprune.workflows.at_init import (
    class_balanced_sample,
    masks_at_init,
    saliency_batches,
    train_at_init,
)
from kprune.workflows.gradual import (
    make_schedule,
    train_gradual,
    update_steps,
    warmup_sensitivity,
)
from kprune.workflows.lottery import FINAL_MODEL, run_lottery
from kprune.workflows.training import (
    apply_weight_decay,
    make_loss,
    make_optimizer,
)

__all__ = ["METHODS", "Method", "RunContext"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunContext:
    """What a method gets: the config, the freshly built dense model and the step counts.

    `data` and `run_dir` are None in `plan` (dry runs load nothing and write nothing); `run`
    always gets both.

    Example:

    >>> ctx.total_steps == ctx.config.training.epochs * ctx.steps_per_epoch  # doctest: +SKIP
    True
    """

    config: RunConfig
    info: object  # kprune.data.DatasetInfo
    model: object  # keras.Model, dense, seeded
    steps_per_epoch: int
    data: object = None  # kprune.data.Dataset
    run_dir: pathlib.Path | None = None
    strategy: object = None  # tf.distribute.Strategy the model was built under (None: dry run)
    distribution: dict | None = None  # kprune.distribute.describe_strategy(strategy) and more
    echo: Callable | None = None  # text for the user while a method runs (the CLI: print)

    @property
    def total_steps(self):
        return self.config.training.epochs * self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Method:
    """One `--method`: how to plan it (validate, describe) and how to run it.

    Attributes:
        plan: `plan(ctx) -> list[str]`: validates the method's options against the model and
            step counts and returns lines describing what it will do (printed by --dry_run and
            before training). Raise ValueError for bad input: it becomes exit status 2 before
            anything is written. Must not load data or write files.
        run: `run(ctx) -> (stripped_model, results)`: trains and prunes. `results` must hold
            `test_accuracy` and `total_steps`; may hold `test_loss`, `best_test_accuracy`,
            `history`, `sparsity` (a `kprune.sparsity_report` of the *pruned* model, to record
            which tensors were pruned) and anything method-specific (kept in results.json).
        summary: one line for --helpfull and the README.

    Example:

    >>> METHODS["linear"].summary
    'linear progressive magnitude pruning during training'
    """

    plan: Callable
    run: Callable
    summary: str


def _gradual_schedule(ctx):
    config, f = ctx.config, ctx.config.flags
    if config.method == "dense":
        return None
    window = pruning_window_of(ctx)
    return make_schedule(
        config.method,
        config.target_sparsity,
        window,
        initial_sparsity=config.initial_sparsity,
        power=f["polynomial_power"],
        cycles=f["cycles"],
        cycle_ramp=f["cycle_ramp"],
        cycle_start_sparsity=f["cycle_start_sparsity"],
    )


def _check_scope(ctx, allowed):
    pruning = ctx.config.method != "dense"
    if pruning and ctx.config.scope == "sensitivity" and "sensitivity" not in allowed:
        raise UsageError(
            f"--budget=sensitivity applies to --method=linear, polynomial and cyclical, not "
            f"--method={ctx.config.method}; choose --budget=global, uniform or erk."
        )
    if pruning and ctx.config.scope not in allowed:
        raise UsageError(
            f"--scope={ctx.config.scope} does not apply to --method={ctx.config.method}; "
            f"choose one of {', '.join(allowed)}."
        )


def _granularity_lines(ctx):
    """The --granularity line of the plan (none for weight pruning, whose plan is unchanged)."""
    granularity = parse_granularity(ctx.config.granularity)
    if granularity.kind == "channel":
        return [
            "granularity channel: whole output channels (and every slice coupled to them) are "
            "removed; the schedule's target is the fraction of channels; kprune.shrink() builds "
            "the smaller model"
        ]
    if granularity.is_nm:
        return [
            f"granularity {granularity}: {granularity.n} of every {granularity.m} consecutive "
            "weights along each Dense/Conv kernel's input axis survive at the end (layers "
            f"without whole groups stay dense); target {granularity.sparsity:g}"
        ]
    return []


def _plan_gradual(ctx):
    _check_scope(ctx, ("global", "layer", "erk", "sensitivity"))
    schedule = _gradual_schedule(ctx)
    if schedule is None:
        return ["pruning   none (dense baseline)"]
    updates = update_steps(schedule, ctx.total_steps)
    shown = ", ".join(f"{s}:{t:.3f}" for s, t in updates[:4])
    if len(updates) > 5:
        shown += ", ..."
    if len(updates) > 4:
        shown += f", {updates[-1][0]}:{updates[-1][1]:.3f}"
    how = (
        f"{ctx.config.scope} scope" if ctx.config.budget is None else f"{ctx.config.budget} budget"
    )
    return [
        f"schedule  {schedule!r}",
        *_granularity_lines(ctx),
        f"pruning   {how}, steps {schedule.begin_step}..{schedule.end_step} "
        f"of {ctx.total_steps}: {len(updates)} mask updates (step:target {shown})",
        *budget_lines(ctx, schedule),
        *lr_lines(ctx),
        *late_pruning_warning(ctx, updates),
    ]


SENSITIVITY_FILE = "sensitivity.json"
SENSITIVITY_PLOT = "sensitivity.png"


def _measure_sensitivity(ctx, schedule):
    """--budget=sensitivity: the curves of a warmed-up dense copy, written to the run directory.

    A resumed run reads the curves it wrote before (the same flags measure the same curves).
    """
    f, path = ctx.config.flags, ctx.run_dir / SENSITIVITY_FILE
    if path.exists():
        curves = SensitivityCurves.from_json(path.read_text())
    else:
        curves = warmup_sensitivity(
            ctx.model,
            ctx.data,
            training_of(ctx),
            steps=f["sensitivity_steps"],
            held_out_batches=f["sensitivity_batches"],
            sparsities=sensitivity_sparsities(ctx.config.target_sparsity),
            exclude=ctx.config.exclude,
        )
        write_text_atomic(path, curves.to_json())
    plot = None
    try:
        curves.plot(ctx.run_dir / SENSITIVITY_PLOT)
        plot = SENSITIVITY_PLOT
    except ImportError:  # matplotlib is optional: the JSON holds everything
        pass
    lines = budget_lines(ctx, schedule, sensitivity=curves)
    (ctx.echo or _log.info)(
        "\n".join(lines) + f"\n          curves in {path}" + (f" and {plot}" if plot else "")
    )
    return curves, {
        "file": SENSITIVITY_FILE,
        "plot": plot,
        "warmup_steps": f["sensitivity_steps"],
        "held_out_batches": f["sensitivity_batches"],
        "held_out_examples": curves.examples,
        "baseline_accuracy": curves.baseline_accuracy,
    }


def _run_gradual(ctx):
    schedule = _gradual_schedule(ctx)
    curves = record = None
    if schedule is not None and ctx.config.budget == "sensitivity":
        curves, record = _measure_sensitivity(ctx, schedule)
    stripped, results = train_gradual(
        ctx.model,
        ctx.data,
        schedule,
        training_of(ctx),
        budget=ctx.config.budget,
        scope=ctx.config.scope,
        exclude=ctx.config.exclude if schedule is not None else (),
        run_dir=ctx.run_dir,
        verbose=ctx.config.verbose,
        granularity=ctx.config.granularity,
        sensitivity=curves,
    )
    if record is not None:
        results["sensitivity"] = record
    return stripped, results


# -- FGGP: gradient-first, magnitude-next, on the cubic (polynomial) schedule --------------------
def _fggp_parts(ctx):
    f = ctx.config.flags
    window = pruning_window_of(ctx)
    schedule = make_schedule(
        "polynomial",
        ctx.config.target_sparsity,
        window,
        initial_sparsity=ctx.config.initial_sparsity,
        power=f["polynomial_power"],
    )
    rate = check_bounds("fggp_candidate_rate", f["fggp_candidate_rate"])
    criterion = FGGP(candidate_rate=rate, gradient=f["fggp_gradient"])
    return schedule, criterion


def _plan_fggp(ctx):
    _check_scope(ctx, ("global", "layer", "erk"))
    schedule, criterion = _fggp_parts(ctx)
    updates = update_steps(schedule, ctx.total_steps)
    start = (
        f"random ERK mask at {ctx.config.initial_sparsity:g} sparsity"
        if ctx.config.initial_sparsity
        else "dense"
    )
    return [
        f"schedule  {schedule!r}",
        f"pruning   FGGP, {ctx.config.scope} scope: candidates = the "
        f"{criterion.candidate_rate:g} of active weights with the smallest |gradient| "
        f"({criterion.gradient}), then the smallest |w| among them; {len(updates)} mask updates "
        f"in steps {schedule.begin_step}..{schedule.end_step}; start {start}",
        *late_pruning_warning(ctx, updates),
    ]


def _run_fggp(ctx):
    schedule, criterion = _fggp_parts(ctx)
    initial = None
    if ctx.config.initial_sparsity:
        initial = masks_at_init(
            ctx.model,
            method="random",
            sparsity=ctx.config.initial_sparsity,
            scope="erk",
            seed=ctx.config.seed,
            exclude=list(ctx.config.exclude),
        )
    return train_gradual(
        ctx.model,
        ctx.data,
        schedule,
        training_of(ctx),
        budget=ctx.config.budget,
        exclude=ctx.config.exclude,
        run_dir=ctx.run_dir,
        verbose=ctx.config.verbose,
        criterion=criterion,
        initial_masks=initial,
    )


# -- pruning at initialization: snip, grasp, synflow, random -------------------------------------
_AT_INIT_DESCRIPTIONS = {
    "snip": "connection sensitivity |g * w| on {batches} training batch(es)",
    "grasp": "gradient flow -w * Hg on a class-balanced sample ({per_class} per class, 2 "
    "halves), logits / {temperature:g}",
    "synflow": "iterative synaptic flow, {iterations} iterations, no data",
    "random": "uniformly random scores (seed {seed})",
}


def _at_init_options(ctx):
    f, method = ctx.config.flags, ctx.config.method
    if method == "grasp":
        return {"temperature": f["grasp_temperature"]}
    if method == "synflow":
        return {"iterations": f["synflow_iterations"]}
    if method == "random":
        return {"seed": ctx.config.seed}
    return {}


def _plan_at_init(ctx):
    _check_scope(ctx, ("global", "layer", "erk"))
    f = ctx.config.flags
    if ctx.config.method == "grasp":
        check_bounds("grasp_temperature", f["grasp_temperature"])
    description = _AT_INIT_DESCRIPTIONS[ctx.config.method].format(
        batches=f["saliency_batches"],
        per_class=f["grasp_samples_per_class"],
        temperature=f["grasp_temperature"],
        iterations=f["synflow_iterations"],
        seed=ctx.config.seed,
    )
    return [
        *_granularity_lines(ctx),
        f"pruning   at initialization, {ctx.config.scope} scope: {description}; masks fixed "
        f"for all {ctx.total_steps} training steps",
    ]


def _run_at_init(ctx):
    method, f = ctx.config.method, ctx.config.flags
    saliency, batches = None, 1
    if method == "snip":
        batches = f["saliency_batches"]
        saliency = saliency_batches(ctx.data.train, batches)
    elif method == "grasp":
        batches = 2
        saliency = class_balanced_sample(
            ctx.data.train, f["grasp_samples_per_class"], ctx.info.num_classes
        )
    return train_at_init(
        ctx.model,
        ctx.data,
        ctx.config.training,
        method=method,
        sparsity=ctx.config.target_sparsity,
        scope=ctx.config.scope,
        exclude=ctx.config.exclude,
        saliency_data=saliency,
        batches=batches,
        run_dir=ctx.run_dir,
        verbose=ctx.config.verbose,
        granularity=ctx.config.granularity,
        **_at_init_options(ctx),
    )


# -- lottery tickets ----------------------------------------------------------------------------
def _lth_settings(ctx):
    f = ctx.config.flags
    rounds = lth_rounds(ctx.config.target_sparsity, f["lth_rate"], f["lth_rounds"])
    check_bounds("lth_rate", f["lth_rate"])
    if f["rewind_step"] >= ctx.total_steps:
        raise UsageError(
            f"--rewind_step must be below the steps of one round ({ctx.total_steps}). "
            f"Received: --rewind_step={f['rewind_step']}"
        )
    return rounds, f["lth_rate"], f["rewind_step"]


def _plan_lth(ctx):
    _check_scope(ctx, ("global",))
    rounds, rate, rewind = _lth_settings(ctx)
    sparsities = ", ".join(f"{1 - (1 - rate) ** r:.3f}" for r in range(rounds + 1))
    steps = ctx.total_steps + rounds * (ctx.total_steps - rewind)
    return [
        f"pruning   lottery ticket: {rounds} rounds after a dense round 0, removing {rate:g} of "
        f"the remaining weights per round (global magnitude), rewinding to step {rewind}",
        f"rounds    sparsity per round: {sparsities}",
        f"compute   {steps} optimizer steps in all ({rounds + 1} trainings)",
    ]


def _run_lth(ctx):
    rounds, rate, rewind = _lth_settings(ctx)
    training = ctx.config.training
    lottery_dir = ctx.run_dir / "lottery"

    checks = []

    def per_round(r):
        round_callbacks = [
            keras.callbacks.TensorBoard(str(ctx.run_dir / "logs" / f"round_{r:02d}"))
        ]
        if ctx.strategy.num_replicas_in_sync > 1:
            checks.append(ReplicaMaskCheck())
            round_callbacks.append(checks[-1])
        return round_callbacks

    results = run_lottery(
        ctx.model,
        # Every round (and a resumed round) replays round 0's batches step for step.
        ctx.data.train_epochs(0),
        make_optimizer=lambda: make_optimizer(training, ctx.steps_per_epoch),
        loss=make_loss(training),
        rounds=rounds,
        epochs=training.epochs,
        run_dir=lottery_dir,
        rate=rate,
        rewind_step=rewind,
        test_data=ctx.data.test,
        steps_per_epoch=ctx.steps_per_epoch,
        exclude=list(ctx.config.exclude),
        callbacks=per_round,
        verbose=ctx.config.verbose,
        prepare=lambda model: apply_weight_decay(model, training.weight_decay),
    )
    pruned = keras.models.load_model(lottery_dir / FINAL_MODEL)
    last = results["rounds"][-1]
    results.update(
        replicas=int(ctx.strategy.num_replicas_in_sync),
        masks_identical_across_replicas=all(c.identical for c in checks) if checks else None,
        test_accuracy=results["final_test_accuracy"],
        test_loss=last.get("test_loss"),
        sparsity=sparsity_report(pruned),
        lottery_dir=str(lottery_dir),
    )
    return strip(pruned), results


# The registry behind --method: `plan`/`run` turn the RunContext into plain arguments for a
# workflow function (kprune.workflows.gradual, kprune.workflows.at_init, kprune.workflows.lottery).
METHODS = {
    "dense": Method(_plan_gradual, _run_gradual, "train without pruning (baseline)"),
    "linear": Method(
        _plan_gradual, _run_gradual, "linear progressive magnitude pruning during training"
    ),
    "polynomial": Method(
        _plan_gradual, _run_gradual, "polynomial-decay (cubic) gradual magnitude pruning"
    ),
    "cyclical": Method(
        _plan_gradual, _run_gradual, "cyclical magnitude pruning with regrowth between cycles"
    ),
    "fggp": Method(
        _plan_fggp, _run_fggp, "gradient-first, magnitude-next gradual pruning (cubic schedule)"
    ),
    "snip": Method(_plan_at_init, _run_at_init, "SNIP: connection sensitivity at initialization"),
    "grasp": Method(_plan_at_init, _run_at_init, "GraSP: gradient signal preservation at init"),
    "synflow": Method(_plan_at_init, _run_at_init, "SynFlow: data-free iterative pruning at init"),
    "random": Method(_plan_at_init, _run_at_init, "random pruning at initialization (baseline)"),
    "lth": Method(_plan_lth, _run_lth, "lottery ticket: iterative magnitude pruning, rewinding"),
}
