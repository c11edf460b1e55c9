"""Train and prune one model: python -m kprune.train [--flagfile=configs/NAME.flags] [--flag=value]

With no flags it runs the offline default job (configs/digits.flags): LeNet-300-100 on the
bundled handwritten digits, pruned on the linear schedule until 90% of its weights are zero.

Flags, by group (--helpfull lists them all with their defaults and bounds):
  model & data   --model --dataset --data_dir --download --exclude
  method         --method --target_sparsity --initial_sparsity --scope
  schedule       --prune_begin --prune_end --prune_frequency (fractions of training) or
                 --prune_begin_step --prune_end_step --prune_frequency_steps (steps; they win);
                 --polynomial_power; --cycles --cycle_ramp --cycle_start_sparsity
  training       --epochs --batch_size --optimizer --momentum --nesterov --lr --lr_schedule
                 --lr_decay_epochs --lr_decay_factor --lr_warmup_epochs --weight_decay
                 --label_smoothing --seed --mixed_precision --eval_every_epoch
  distribution   --strategy --tpu
  output         --model_dir --overwrite --export --export_quantize --dry_run --progress

Flags given on the command line override those of a --flagfile (absl reads them in order).
--dry_run builds the model and the pruning plan and prints them without loading data or
writing files. Bad input (unknown names, values out of range, a missing flagfile, an unusable
dataset) exits with status 2 before anything is written.

Outputs go to --model_dir (default saved_models/<model>-<dataset>-<method>-<sparsity>):
run.flags, logs/ (TensorBoard), checkpoints/ (resume: run again with the same flags),
model.keras (pruned and stripped), results.json, export/ (with --export).
With --strategy=multi_worker the chief writes --model_dir and every other worker the same files
to <model_dir>.<task>_<index> (e.g. run.worker_1), from which it resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable

from absl import app, flags

# -- flags -------------------------------------------------------------------------------------
# Defaults are the offline default job (configs/digits.flags repeats them).
# Model and data.
flags.DEFINE_string(
    "model",
    "lenet300_100",
    "Network: lenet300_100, lenet5_caffe, vgg_like, vgg19, resnet18, resnet50, resnet20, "
    "resnet32, or any keras.applications model by name (e.g. MobileNetV2; weights=None).",
)
flags.DEFINE_string(
    "dataset",
    "digits",
    "digits (bundled, offline), mnist, fashion_mnist, cifar10, cifar100 (tensorflow-datasets), "
    "or npz:PATH (a .npz file with x_train, y_train, x_test, y_test).",
)
flags.DEFINE_string(
    "data_dir", None, "tensorflow-datasets data directory (default: tfds' own, or $TFDS_DATA_DIR)."
)
flags.DEFINE_bool(
    "download", False, "Let tensorflow-datasets download and prepare a missing dataset."
)
flags.DEFINE_list("exclude", [], "Comma-separated names of layers to keep dense.")

# Method.
METHOD_NAMES = (
    "dense",
    "linear",
    "polynomial",
    "cyclical",
    "fggp",
    "snip",
    "grasp",
    "synflow",
    "random",
    "lth",
)
flags.DEFINE_enum(
    "method",
    "linear",
    METHOD_NAMES,
    "How to prune. dense: no pruning; linear: sparsity rises linearly during training "
    "(magnitude); polynomial: cubic gradual pruning (Zhu & Gupta); cyclical: repeated ramps "
    "with regrowth; fggp: gradient-first, magnitude-next gradual pruning on the polynomial "
    "schedule; snip, grasp, synflow, random: masks fixed at initialization; lth: lottery "
    "ticket iterative magnitude pruning with rewinding.",
)
flags.DEFINE_float(
    "target_sparsity",
    0.9,
    "Final fraction of zeros among the pruned weights, in [0, 1).",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_float(
    "initial_sparsity",
    0.0,
    "Sparsity at the start of pruning, in [0, 1).",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_enum(
    "scope",
    "global",
    ["global", "layer", "erk"],
    "global: one threshold over all pruned weights; layer: every weight tensor is pruned to "
    "the target; erk: Erdos-Renyi-Kernel budgets per tensor (snip, grasp, synflow, random).",
)

# Schedule (fractions of the whole training, or steps).
flags.DEFINE_float(
    "prune_begin",
    0.0,
    "Start of pruning as a fraction of training steps, in [0, 1].",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_float(
    "prune_end",
    0.75,
    "End of pruning (target reached) as a fraction of training steps, in [0, 1]; 1.0 is the "
    "last step.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_float(
    "prune_frequency",
    0.01,
    "Steps between mask updates, as a fraction of training steps (at least one step).",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_integer(
    "prune_begin_step", None, "Start of pruning in steps (overrides --prune_begin).", lower_bound=0
)
flags.DEFINE_integer(
    "prune_end_step", None, "End of pruning in steps (overrides --prune_end).", lower_bound=0
)
flags.DEFINE_integer(
    "prune_frequency_steps",
    None,
    "Steps between mask updates (overrides --prune_frequency).",
    lower_bound=1,
)
flags.DEFINE_float(
    "polynomial_power", 3.0, "Exponent of the polynomial schedule, > 0.", lower_bound=0.0
)
flags.DEFINE_integer("cycles", 3, "Cycles of the cyclical schedule.", lower_bound=1)
flags.DEFINE_enum("cycle_ramp", "linear", ["linear", "cubic"], "Ramp within each cycle.")
flags.DEFINE_float(
    "cycle_start_sparsity",
    0.0,
    "Sparsity at the start of every cycle after the first, in [0, 1).",
    lower_bound=0.0,
    upper_bound=1.0,
)

# Method options.
flags.DEFINE_integer(
    "saliency_batches",
    1,
    "snip: training batches scored (their connection sensitivities are summed).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "grasp_samples_per_class",
    10,
    "grasp: class-balanced sample size per class, scored in 2 halves (10 as published).",
    lower_bound=1,
)
flags.DEFINE_float(
    "grasp_temperature", 200.0, "grasp: temperature dividing the logits, > 0.", lower_bound=0.0
)
flags.DEFINE_integer(
    "synflow_iterations", 100, "synflow: pruning iterations (100 as published).", lower_bound=1
)
flags.DEFINE_float(
    "fggp_candidate_rate",
    0.5,
    "fggp: fraction of active weights (smallest |gradient|) that become candidates, in (0, 1].",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_enum(
    "fggp_gradient",
    "batch",
    ["batch", "accumulated"],
    "fggp: rank candidates by the last mini-batch |gradient| (as published) or by its sum "
    "since the previous update. With --initial_sparsity > 0, fggp starts from a random ERK "
    "mask of that sparsity.",
)
flags.DEFINE_integer(
    "lth_rounds",
    None,
    "lth: pruning rounds after the dense round 0 (default: the fewest that reach "
    "--target_sparsity; the final sparsity is 1 - (1 - lth_rate)^rounds).",
    lower_bound=1,
)
flags.DEFINE_float(
    "lth_rate",
    0.2,
    "lth: fraction of the remaining weights pruned per round, in (0, 1).",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_integer(
    "rewind_step",
    0,
    "lth: rewind surviving weights to their values at this optimizer step of round 0 "
    "(0: the initialization).",
    lower_bound=0,
)

# Training.
flags.DEFINE_integer("epochs", 60, "Passes over the training split.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Examples per training batch.", lower_bound=1)
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum, in [0, 1).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_bool("nesterov", True, "Nesterov momentum (SGD).")
flags.DEFINE_float("lr", 0.05, "Base learning rate (after warm-up), > 0.", lower_bound=0.0)
flags.DEFINE_enum(
    "lr_schedule",
    "cosine",
    ["constant", "step", "cosine"],
    "constant; step: times --lr_decay_factor at each of --lr_decay_epochs; cosine: to 0 at "
    "the end.",
)
flags.DEFINE_list(
    "lr_decay_epochs", [], "Epochs (may be fractional) where step decay applies, e.g. 80,120."
)
flags.DEFINE_float(
    "lr_decay_factor", 0.1, "Multiplier per step decay, in (0, 1].", lower_bound=0.0,
    upper_bound=1.0,
)  # fmt: skip
flags.DEFINE_float(
    "lr_warmup_epochs", 0.0, "Linear learning-rate warm-up, in epochs.", lower_bound=0.0
)
flags.DEFINE_float(
    "weight_decay",
    1e-4,
    "Coupled L2 weight decay on all trainable variables (PyTorch's SGD convention).",
    lower_bound=0.0,
)
flags.DEFINE_float(
    "label_smoothing", 0.0, "Label smoothing, in [0, 1).", lower_bound=0.0, upper_bound=1.0
)
flags.DEFINE_integer(
    "seed", 0, "Seed of initialization, shuffling and augmentation.", lower_bound=0
)
flags.DEFINE_enum(
    "mixed_precision",
    "off",
    ["off", "float16", "bfloat16"],
    "Mixed-precision compute (variables stay float32): float16 for GPUs, bfloat16 for TPUs "
    "and recent CPUs.",
)
flags.DEFINE_bool("eval_every_epoch", True, "Evaluate on the test split after every epoch.")

# Distribution (kprune.distribute).
STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker", "tpu")
flags.DEFINE_enum(
    "strategy",
    "auto",
    STRATEGY_NAMES,
    "tf.distribute strategy. auto: MirroredStrategy over all GPUs when there are two or more, "
    "else default (one device); mirrored: all GPUs, or all logical CPU devices without GPUs; "
    "multi_worker: MultiWorkerMirroredStrategy, cluster from the TF_CONFIG environment "
    "variable; tpu: TPUStrategy (see --tpu). --batch_size is the global batch, split across "
    "replicas.",
)
flags.DEFINE_string(
    "tpu",
    None,
    "--strategy=tpu: TPU name, grpc:// address, or 'local' on a TPU VM (default: $TPU_NAME).",
)

# Output.
flags.DEFINE_string(
    "model_dir",
    None,
    "Run directory (default saved_models/<model>-<dataset>-<method>-<sparsity>[-seedN]).",
)
flags.DEFINE_bool(
    "overwrite", False, "Replace a finished run in --model_dir (only a kprune run directory)."
)
flags.DEFINE_list(
    "export",
    [],
    "Deployment formats to write to <model_dir>/export after training (kprune.export).",
)
flags.DEFINE_string(
    "export_quantize",
    None,
    "Quantization for --export, one of kprune.export.QUANTIZE_MODES (default: its default).",
)
flags.DEFINE_bool(
    "dry_run",
    False,
    "Build the model and the pruning plan, print them, and stop: no data, no files.",
)
flags.DEFINE_enum(
    "progress",
    "bar",
    ["bar", "epoch", "none"],
    "Training output: Keras progress bars, one line per epoch, or nothing.",
)


def _sparsity_below_one(value):
    return value < 1.0


for _name in ("target_sparsity", "initial_sparsity", "cycle_start_sparsity", "label_smoothing"):
    flags.register_validator(
        _name, _sparsity_below_one, message=f"--{_name} must be in [0, 1), 1 excluded."
    )
flags.register_validator(
    "lr_decay_factor", lambda v: v > 0, message="--lr_decay_factor must be in (0, 1]."
)
flags.register_validator("lr", lambda v: v > 0, message="--lr must be > 0.")
flags.register_validator(
    "polynomial_power", lambda v: v > 0, message="--polynomial_power must be > 0."
)
flags.register_validator(
    "prune_frequency", lambda v: v > 0, message="--prune_frequency must be in (0, 1]."
)


def _floats(values):
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


flags.register_validator(
    "lr_decay_epochs",
    lambda v: _floats(v) is not None,
    message="--lr_decay_epochs must be a comma-separated list of numbers, e.g. 80,120.",
)

FLAGS = flags.FLAGS
# Flags that do not change what a run computes: left out of run.flags (so that it can be reused
# as a --flagfile) and free to differ when an unfinished run is resumed.
# The strategy is among them: where a run computes, not what (a run preempted on one machine may
# resume on another).
_VOLATILE_FLAGS = (
    "model_dir",
    "dry_run",
    "progress",
    "overwrite",
    "export",
    "export_quantize",
    "strategy",
    "tpu",
)


def _our_flag_names():
    return [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])]


# -- configuration -----------------------------------------------------------------------------
class UsageError(ValueError):
    """Bad input found before anything was written; the command line exits with status 2.

    Example:

    >>> issubclass(UsageError, ValueError)
    True
    """


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, taken from the flags once; library code never reads flags.

    `training` is the `kprune.workflows.training.TrainConfig`; `flags` holds every flag of this
    module
    by name (method adapters read their own options from it; results.json records it).

    Example:

    >>> config = config_from_flags(FLAGS)  # doctest: +SKIP
    """

    model: str
    dataset: str
    data_dir: str | None
    download: bool
    exclude: tuple
    method: str
    target_sparsity: float
    initial_sparsity: float
    scope: str
    batch_size: int
    seed: int
    mixed_precision: str
    training: object
    strategy: str
    tpu: str | None
    model_dir: str | None
    overwrite: bool
    export: tuple
    export_quantize: str | None
    dry_run: bool
    verbose: int
    flags: dict

    @property
    def run_name(self):
        """Default run directory name, e.g. "lenet300_100-digits-linear-90"."""
        dataset = self.dataset
        if dataset.startswith("npz:"):
            dataset = "npz_" + pathlib.Path(dataset[4:]).stem
        parts = [self.model, dataset, self.method]
        if self.method != "dense":
            parts.append(f"{self.target_sparsity * 100:.6g}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        return "-".join(parts)

    @property
    def run_dir(self):
        """The run directory as a `pathlib.Path`."""
        return pathlib.Path(self.model_dir or os.path.join("saved_models", self.run_name))


def lth_rounds(target_sparsity, rate, rounds=None):
    """Rounds of lottery-ticket pruning: `rounds` if given, else the fewest reaching the target.

    Example:

    >>> lth_rounds(0.9, 0.2)  # 1 - 0.8**11 = 0.914
    11
    """
    if rounds is not None:
        return int(rounds)
    if not 0.0 < rate < 1.0:
        raise UsageError(f"--lth_rate must be in (0, 1). Received: --lth_rate={rate}")
    r = 1
    while 1.0 - (1.0 - rate) ** r < target_sparsity - 1e-12:
        r += 1
    return r


def _target_sparsity(values):
    if values.method == "dense":
        return 0.0
    if values.method == "lth":
        rounds = lth_rounds(values.target_sparsity, values.lth_rate, values.lth_rounds)
        return 1.0 - (1.0 - values.lth_rate) ** rounds
    return values.target_sparsity


def config_from_flags(values=FLAGS):
    """Turns parsed flags into a `RunConfig`, checking what absl's bounds cannot.

    Raises:
        UsageError: inconsistent or out-of-range values (e.g. a learning-rate decay epoch
            beyond training).

    Example:

    >>> config_from_flags(FLAGS).method  # doctest: +SKIP
    'linear'
    """
    from kprune.workflows.training import TrainConfig

    try:
        training = TrainConfig(
            epochs=values.epochs,
            optimizer=values.optimizer,
            learning_rate=values.lr,
            momentum=values.momentum,
            nesterov=values.nesterov,
            lr_schedule=values.lr_schedule,
            lr_decay_epochs=tuple(_floats(values.lr_decay_epochs)),
            lr_decay_factor=values.lr_decay_factor,
            lr_warmup_epochs=values.lr_warmup_epochs,
            weight_decay=values.weight_decay,
            label_smoothing=values.label_smoothing,
            eval_every_epoch=values.eval_every_epoch,
        )
    except ValueError as err:
        raise UsageError(f"training flags: {err}") from err
    return RunConfig(
        model=values.model,
        dataset=values.dataset,
        data_dir=values.data_dir,
        download=values.download,
        exclude=tuple(values.exclude),
        method=values.method,
        target_sparsity=_target_sparsity(values),
        initial_sparsity=values.initial_sparsity,
        scope=values.scope,
        batch_size=values.batch_size,
        seed=values.seed,
        mixed_precision=values.mixed_precision,
        training=training,
        strategy=values.strategy,
        tpu=values.tpu,
        model_dir=values.model_dir,
        overwrite=values.overwrite,
        export=tuple(values.export),
        export_quantize=values.export_quantize,
        dry_run=values.dry_run,
        verbose={"bar": 1, "epoch": 2, "none": 0}[values.progress],
        flags={name: values[name].value for name in _our_flag_names()},
    )


# -- methods -----------------------------------------------------------------------------------
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


def _pruning_window(ctx):
    """The schedule window from the --prune_* flags (fractions of training, or steps)."""
    from kprune.workflows.gradual import pruning_window

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


def _gradual_schedule(ctx):
    from kprune.workflows.gradual import make_schedule

    config, f = ctx.config, ctx.config.flags
    if config.method == "dense":
        return None
    window = _pruning_window(ctx)
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
    if ctx.config.method != "dense" and ctx.config.scope not in allowed:
        raise UsageError(
            f"--scope={ctx.config.scope} does not apply to --method={ctx.config.method}; "
            f"choose one of {', '.join(allowed)}."
        )


def _late_pruning_warning(ctx, updates):
    """A warning line if mask updates fall where the learning rate is under 10% of its base.

    Weights pruned that late have little learning rate left to recover with; on the bundled
    digits, LeNet-300-100 pruned to 98% until after two 10x cuts lost 10-20 points of accuracy.
    """
    from kprune.workflows.training import make_learning_rate

    schedule = make_learning_rate(ctx.config.training, ctx.steps_per_epoch)
    base = ctx.config.training.learning_rate
    late = [step for step, _ in updates if float(schedule(step)) < 0.1 * base]
    if not late:
        return []
    return [
        f"warning   {len(late)} of {len(updates)} mask updates come after the learning rate has "
        f"fallen below 10% of its base value (from step {late[0]}); networks pruned that late "
        "often fail to recover. End pruning earlier (--prune_end) unless that is intended."
    ]


def _plan_gradual(ctx):
    from kprune.workflows.gradual import update_steps

    _check_scope(ctx, ("global", "layer"))
    schedule = _gradual_schedule(ctx)
    if schedule is None:
        return ["pruning   none (dense baseline)"]
    updates = update_steps(schedule, ctx.total_steps)
    shown = ", ".join(f"{s}:{t:.3f}" for s, t in updates[:4])
    if len(updates) > 5:
        shown += ", ..."
    if len(updates) > 4:
        shown += f", {updates[-1][0]}:{updates[-1][1]:.3f}"
    return [
        f"schedule  {schedule!r}",
        f"pruning   {ctx.config.scope} scope, steps {schedule.begin_step}..{schedule.end_step} "
        f"of {ctx.total_steps}: {len(updates)} mask updates (step:target {shown})",
        *_late_pruning_warning(ctx, updates),
    ]


def _run_gradual(ctx):
    from kprune.workflows.gradual import train_gradual

    schedule = _gradual_schedule(ctx)
    return train_gradual(
        ctx.model,
        ctx.data,
        schedule,
        ctx.config.training,
        scope=ctx.config.scope,
        exclude=ctx.config.exclude if schedule is not None else (),
        run_dir=ctx.run_dir,
        verbose=ctx.config.verbose,
    )


# -- FGGP: gradient-first, magnitude-next, on the cubic (polynomial) schedule --------------------
def _fggp_parts(ctx):
    from kprune.criteria import FGGP
    from kprune.workflows.gradual import make_schedule

    f = ctx.config.flags
    window = _pruning_window(ctx)
    schedule = make_schedule(
        "polynomial",
        ctx.config.target_sparsity,
        window,
        initial_sparsity=ctx.config.initial_sparsity,
        power=f["polynomial_power"],
    )
    if not 0.0 < f["fggp_candidate_rate"] <= 1.0:
        raise UsageError(
            "--fggp_candidate_rate must be in (0, 1]. Received: "
            f"--fggp_candidate_rate={f['fggp_candidate_rate']}"
        )
    criterion = FGGP(candidate_rate=f["fggp_candidate_rate"], gradient=f["fggp_gradient"])
    return schedule, criterion


def _plan_fggp(ctx):
    from kprune.workflows.gradual import update_steps

    _check_scope(ctx, ("global", "layer"))
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
        *_late_pruning_warning(ctx, updates),
    ]


def _run_fggp(ctx):
    from kprune.workflows.at_init import masks_at_init
    from kprune.workflows.gradual import train_gradual

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
        ctx.config.training,
        scope=ctx.config.scope,
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
    if ctx.config.method == "grasp" and f["grasp_temperature"] <= 0:
        raise UsageError(
            f"--grasp_temperature must be > 0. Received: --grasp_temperature="
            f"{f['grasp_temperature']}"
        )
    description = _AT_INIT_DESCRIPTIONS[ctx.config.method].format(
        batches=f["saliency_batches"],
        per_class=f["grasp_samples_per_class"],
        temperature=f["grasp_temperature"],
        iterations=f["synflow_iterations"],
        seed=ctx.config.seed,
    )
    return [
        f"pruning   at initialization, {ctx.config.scope} scope: {description}; masks fixed "
        f"for all {ctx.total_steps} training steps"
    ]


def _run_at_init(ctx):
    from kprune.workflows.at_init import class_balanced_sample, saliency_batches, train_at_init

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
        **_at_init_options(ctx),
    )


# -- lottery tickets ----------------------------------------------------------------------------
def _lth_settings(ctx):
    f = ctx.config.flags
    rounds = lth_rounds(ctx.config.target_sparsity, f["lth_rate"], f["lth_rounds"])
    if not 0.0 < f["lth_rate"] < 1.0:
        raise UsageError(f"--lth_rate must be in (0, 1). Received: --lth_rate={f['lth_rate']}")
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
    import keras

    from kprune.api import sparsity_report, strip
    from kprune.distribute import ReplicaMaskCheck
    from kprune.workflows.lottery import FINAL_MODEL, run_lottery
    from kprune.workflows.training import apply_weight_decay, make_loss, make_optimizer

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


# -- the run -----------------------------------------------------------------------------------
def _check_method(config):
    if config.method not in METHODS:
        raise UsageError(
            f"Unknown --method={config.method}. Available methods: {', '.join(METHODS)}."
        )


def _check_export(config):
    """Validates --export/--export_quantize; returns kprune.export.export or None."""
    if not config.export:
        if config.export_quantize is not None:
            raise UsageError("--export_quantize needs --export (e.g. --export=tflite).")
        return None
    from kprune.export import FORMATS, QUANTIZE_MODES, export

    unknown = sorted(set(config.export) - set(FORMATS))
    if unknown:
        raise UsageError(f"--export: unknown formats {unknown}; valid: {', '.join(FORMATS)}")
    if config.export_quantize is not None and config.export_quantize not in QUANTIZE_MODES:
        raise UsageError(
            f"--export_quantize={config.export_quantize} is not one of {', '.join(QUANTIZE_MODES)}"
        )
    return export


def _check_run_dir(config):
    run_dir = config.run_dir
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise UsageError(f"--model_dir={run_dir} exists and is not a directory.")
    if not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / "run.flags").is_file():
        raise UsageError(
            f"--model_dir={run_dir} is a non-empty directory that is not a kprune run "
            "(no run.flags). Choose another --model_dir."
        )
    if (run_dir / "results.json").is_file():
        if config.overwrite:
            return "overwrite"
        raise UsageError(
            f"{run_dir} already holds a finished run (results.json). Pass --overwrite to "
            "replace it, or choose another --model_dir."
        )
    stored = _read_flagfile(run_dir / "run.flags")
    current = _flag_lines(config.flags)
    changed = sorted(
        name for name in set(stored) | set(current) if stored.get(name) != current.get(name)
    )
    if changed:
        if config.overwrite:
            return "overwrite"
        raise UsageError(
            f"{run_dir} holds an unfinished run with different flags ({', '.join(changed)}); "
            "rerun with the same flags to resume it, pass --overwrite to start over, or choose "
            "another --model_dir."
        )
    return "resume"


def _flag_lines(names):
    """`{name: "--name=value"}` of the current values, volatile flags left out."""
    lines = {}
    for name in names:
        if name in _VOLATILE_FLAGS:
            continue
        serialized = FLAGS[name].serialize()
        if serialized:
            lines[name] = serialized
    return lines


def _read_flagfile(path):
    lines = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("--"):
            name = line[2:].split("=", 1)[0]
            if name.startswith("no") and name[2:] in FLAGS:
                name = name[2:]
            lines[name] = line
    return lines


def _count(report, key):
    totals = report[key]
    return None if totals is None else dict(totals)


def _describe(ctx, prunable_rows):
    import numpy as np

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
        *_distribution_lines(ctx),
        f"method    {config.method}: {METHODS[config.method].summary}"
        + (f", target sparsity {config.target_sparsity:g}" if config.method != "dense" else ""),
    ]
    lines += METHODS[config.method].plan(ctx)
    total = sum(row["total"] for row in prunable_rows)
    pruned_total = sum(row["total"] for row in prunable_rows if row["pruned"])
    to_remove = round(config.target_sparsity * pruned_total) if config.method != "dense" else 0
    lines.append(
        f"prunable weights: {len(prunable_rows)} tensors, {total} weights; "
        f"{pruned_total} pruned by this method, {to_remove} of them zero at the end "
        f"({pruned_total - to_remove} kept)"
    )
    for row in prunable_rows:
        shape = "x".join(str(d) for d in row["shape"])
        note = "" if row["pruned"] else "  (kept dense)"
        lines.append(f"  {row['weight']:<44} {shape:<16} {row['total']:>10}{note}")
    return lines


def _distribution_lines(ctx):
    config = ctx.config
    if ctx.strategy is None:  # a dry run does not join a cluster or connect to a TPU
        if config.strategy == "multi_worker":
            from kprune.distribute import cluster_task

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


def _prunable_rows(config, model):
    from kprune.api import sparsity_report

    rows = sparsity_report(model)["layers"]
    unknown = sorted(set(config.exclude) - {layer.name for layer in model.layers})
    if unknown:
        raise UsageError(
            f"--exclude names layers that are not in model {config.model}: {unknown}. "
            f"Prunable layers: {sorted({row['layer'] for row in rows})}"
        )
    for row in rows:
        layer_name = row["layer"].split("/")[-1]
        row["pruned"] = config.method != "dense" and layer_name not in config.exclude
    return rows


def _replicas_note(results):
    info = results.get("distribution") or {}
    if info.get("replicas", 1) < 2:
        return ""
    return f" on {info['replicas']} replicas, {info['strategy']}"


def _summary_paragraph(config, results, run_dir):
    steps = results["total_steps"]
    what = (
        "without pruning"
        if config.method == "dense"
        else f"with {config.method} pruning to {config.target_sparsity:.2%} sparsity "
        f"({config.scope} scope)"
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
            " WARNING: training diverged (the loss became NaN or infinite) and was stopped; "
            "lower --lr or check the data."
            if results.get("diverged")
            else ""
        )
    )


def _distribution(config):
    """`(config, strategy)`: creates the strategy (first: multi_worker and tpu insist on it).

    A non-chief worker of a multi-worker run gets its own run directory,
    `<model_dir>.<task>_<index>`; the chief writes --model_dir. A dry run creates no
    multi_worker or tpu strategy (strategy None): it would join the cluster or connect the TPU.
    """
    from kprune import distribute

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


def _prepare(config, strategy):
    """Every check, before anything is written: returns what `_execute` needs."""
    import keras
    import tensorflow as tf

    from kprune import data as data_lib
    from kprune.distribute import describe_strategy
    from kprune.models import build_model

    _check_method(config)
    export_fn = _check_export(config)
    state = "dry" if config.dry_run else _check_run_dir(config)
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
        ctx.distribution = {"name": config.strategy, **describe_strategy(strategy)}
        ctx.distribution["global_batch_size"] = config.batch_size
    plan_lines = _describe(ctx, _prunable_rows(config, model))
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
    return ctx, plan_lines, state, export_fn


def _execute(ctx, plan_lines, state, export_fn):
    """Trains (input is valid): creates the run directory and writes every output."""
    from kprune._internal.files import write_text_atomic
    from kprune.api import sparsity_report
    from kprune.distribute import strategy_scope
    from kprune.versions import versions

    config = ctx.config
    run_dir = config.run_dir
    if state == "overwrite":
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if state == "resume":
        print(f"Resuming the unfinished run in {run_dir}.")
    write_text_atomic(run_dir / "run.flags", "\n".join(_flag_lines(config.flags).values()) + "\n")
    print("\n".join(plan_lines))
    ctx.run_dir = run_dir
    start = time.perf_counter()
    # Model, masks, optimizer and pruning state are all created in the strategy's scope.
    with strategy_scope(ctx.strategy):
        stripped, method_results = METHODS[config.method].run(ctx)
    wall_time = time.perf_counter() - start

    model_path = run_dir / "model.keras"
    tmp_path = run_dir / "tmp-model.keras"  # Keras insists on the .keras suffix
    stripped.save(tmp_path)
    os.replace(tmp_path, model_path)
    parity_error = None
    if export_fn is not None:
        import keras

        from kprune.export import ParityError

        if ctx.distribution["replicas"] > 1:  # export plain variables, not mirrored ones
            stripped = keras.models.load_model(model_path)

        # Calibration (int8) from the training pipeline, parity samples from the test split.
        options = {
            "formats": list(config.export),
            "representative_data": ctx.data.train,
            "eval_data": ctx.data.test,
            "overwrite": True,
        }
        if config.export_quantize is not None:
            options["quantize"] = config.export_quantize
        try:
            method_results["export"] = export_fn(stripped, run_dir / "export", **options)
        except ParityError as err:  # the files are written; say so in results.json too
            parity_error = err
            method_results["export"] = {"parity_error": str(err)}

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
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    print(_summary_paragraph(config, results, run_dir))
    if parity_error is not None:
        raise parity_error
    return results


def run(config):
    """Runs one experiment described by `config`; returns results (None for a dry run).

    Everything that can be wrong with the input is checked before the run directory is
    created: the method, names, the dataset (.npz contents, tfds availability), the model, the
    schedule, the run directory and the export formats.

    Raises:
        UsageError: bad input (nothing was written).

    Example:

    >>> results = run(config_from_flags(FLAGS))  # doctest: +SKIP
    """
    import keras

    previous_policy = keras.mixed_precision.dtype_policy()
    try:
        config, strategy = _distribution(config)
        try:
            prepared = _prepare(config, strategy)
        except UsageError:
            raise
        except ValueError as err:  # kprune's own input checks (model, dataset, schedule)
            raise UsageError(str(err)) from err
        if config.dry_run:
            print("\n".join(prepared[1]))
            print("dry run: no data loaded, nothing trained, no files written.")
            return None
        return _execute(*prepared)
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)


# -- command line ------------------------------------------------------------------------------
def _report_usage_error(err):
    sys.stderr.write(f"error: {err}\n")
    return 2


def main(argv):
    """absl entry point (flags are parsed): runs the experiment, returns the exit status."""
    if len(argv) > 1:
        return _report_usage_error(
            f"unexpected arguments {argv[1:]}; flags are written --name=value."
        )
    from kprune.export import ParityError

    try:
        run(config_from_flags(FLAGS))
    except UsageError as err:
        return _report_usage_error(err)
    except ParityError as err:
        sys.stderr.write(f"error: exported files disagree with the Keras model: {err}\n")
        return 3
    return 0


def _parse_flags(argv):
    """absl flags parser that exits with status 2 (not 1) on bad flags or a missing flagfile."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        sys.stderr.write(f"error: {err}\nSee --helpfull for every flag.\n")
        sys.exit(2)


def cli(argv):
    """Runs the command line in-process (for tests): parses `argv`, returns the exit status.

    Flags are reset to their defaults first, so calls do not leak into each other.

    Example:

    >>> cli(["kprune.train", "--dry_run"])  # doctest: +SKIP
    0
    """
    FLAGS.unparse_flags()
    try:
        remaining = _parse_flags(list(argv))
        return main(remaining)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        FLAGS.unparse_flags()


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
