"""The flags of `python -m kprune.train`, written once: name, type, default, bounds and help.

`RunFlags` has one field per flag (as open_lth's hparams); `define_flags` turns the fields into
absl flags, and bounds that absl cannot check (open ends) are checked from the same fields.
`kprune.experiment.run_config.config_from_flags` turns the parsed flags into a `RunConfig`.

Example:

>>> spec = flag_spec("target_sparsity")
>>> spec.default, spec.metadata["lower"], spec.metadata["upper_open"]
(0.9, 0.0, True)
>>> bounds_message("lth_rate", 1.0)
'--lth_rate must be in (0, 1). Received: --lth_rate=1.0'
"""

from __future__ import annotations

import dataclasses

from absl import flags

from kprune._internal.validate import in_interval, interval_text
from kprune.allocation import BUDGETS as BUDGET_NAMES

__all__ = [
    "BUDGET_NAMES",
    "FLAG_NAMES",
    "METHOD_NAMES",
    "MODEL_LEARNING_RATES",
    "STRATEGY_NAMES",
    "RunFlags",
    "UsageError",
    "bounds_message",
    "check_bounds",
    "define_flags",
    "flag_spec",
    "float_list",
]

METHOD_NAMES = (
    "dense", "linear", "polynomial", "cyclical", "fggp", "snip", "grasp", "synflow", "random",
    "lth",
)  # fmt: skip
STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker", "tpu")
# Base learning rates of models that do not train at the --lr default (SGD, momentum 0.9).
# LeNet-5-Caffe has no activation after its two convolutions, so the dense network is close to
# a product of linear maps and its gradient norm grows geometrically at lr 0.05 or 0.1 (every
# initialization, input scaling, batch size tried; docs/ramp_study.md section 5, 3 of 3 seeds);
# on mnist_dev, batch 100, 10 epochs: 0.03 diverges in 1 of 3 seeds, 0.02 trains 6 of 6 (batch
# 32 and 100), 0.01 trains 3 of 3 (docs/ramp_study.md, "Defaults that train"). 0.01 keeps a
# margin: standardized inputs (tfds MNIST) lower the stability limit further.
MODEL_LEARNING_RATES = {"lenet5_caffe": 0.01}


class UsageError(ValueError):
    """Bad input found before anything was written; the command line exits with status 2.

    Example:

    >>> issubclass(UsageError, ValueError)
    True
    """


def _flag(kind, default, help, *, choices=None, lower=None, upper=None, **options):
    """A `RunFlags` field: the absl flag `kind` with its default, bounds and help text.

    `lower`/`upper` are closed bounds, which absl checks while parsing; `lower_open` or
    `upper_open` exclude the end as well (a validator this module registers). Options of one
    method (`method="fggp"`) get their open ends checked only when that method runs, so that a
    flagfile shared by several methods may carry any value for the others. `volatile` flags do
    not change what a run computes: they are left out of run.flags (so it can be reused as a
    --flagfile) and may differ when an unfinished run is resumed. `numbers` makes a list flag
    hold numbers.
    """
    metadata = {"kind": kind, "help": help, "choices": choices, "lower": lower, "upper": upper}
    metadata.update(lower_open=False, upper_open=False, method=None, volatile=False, numbers=False)
    unknown = set(options) - set(metadata)
    if unknown:  # a typo in the table below must not pass silently
        raise TypeError(f"Unknown flag options {sorted(unknown)}")
    metadata.update(options)
    return dataclasses.field(default=default, metadata=metadata)


_SPARSITY = {"lower": 0.0, "upper": 1.0, "upper_open": True}
_FRACTION = {"lower": 0.0, "upper": 1.0}


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """Every flag of `python -m kprune.train`, in --helpfull's groups; defaults are the offline
    default job (configs/digits.flags repeats them).

    Example:

    >>> RunFlags().model, RunFlags(epochs=3).epochs
    ('lenet300_100', 3)
    """

    # Model and data.
    model: str = _flag(
        "string", "lenet300_100",
        "Network: lenet300_100, lenet5_caffe, vgg_like, vgg19, resnet18, resnet50, resnet20, "
        "resnet32, or any keras.applications model by name (e.g. MobileNetV2; weights=None).",
    )  # fmt: skip
    dataset: str = _flag(
        "string", "digits",
        "digits (bundled, offline), mnist, fashion_mnist, cifar10, cifar100 "
        "(tensorflow-datasets), or npz:PATH (a .npz file with x_train, y_train, x_test, y_test).",
    )  # fmt: skip
    data_dir: str | None = _flag(
        "string", None,
        "tensorflow-datasets data directory (default: tfds' own, or $TFDS_DATA_DIR).",
    )  # fmt: skip
    download: bool = _flag(
        "bool", False, "Let tensorflow-datasets download and prepare a missing dataset."
    )
    exclude: tuple = _flag("list", (), "Comma-separated names of layers to keep dense.")
    # Method.
    method: str = _flag(
        "enum", "linear",
        "How to prune. dense: no pruning; linear: sparsity rises linearly during training "
        "(magnitude); polynomial: cubic gradual pruning (Zhu & Gupta); cyclical: repeated ramps "
        "with regrowth; fggp: gradient-first, magnitude-next gradual pruning on the polynomial "
        "schedule; snip, grasp, synflow, random: masks fixed at initialization; lth: lottery "
        "ticket iterative magnitude pruning with rewinding.",
        choices=METHOD_NAMES,
    )  # fmt: skip
    target_sparsity: float = _flag(
        "float", 0.9, "Final fraction of zeros among the pruned weights, in [0, 1).", **_SPARSITY
    )
    initial_sparsity: float = _flag(
        "float", 0.0, "Sparsity at the start of pruning, in [0, 1).", **_SPARSITY
    )
    scope: str = _flag(
        "enum", "global",
        "global: one threshold over all pruned weights; layer: every weight tensor is pruned to "
        "the target; erk: Erdos-Renyi-Kernel budgets per tensor. The same choice as --budget "
        "(global, uniform = layer, erk); give either, or both when they agree.",
        choices=("global", "layer", "erk"),
    )  # fmt: skip
    budget: str | None = _flag(
        "enum", None,
        "Per-tensor budget: global (one magnitude threshold, --scope=global), uniform (the "
        "target in every tensor, --scope=layer), erk (Erdos-Renyi-Kernel targets per tensor; "
        "gradual methods ramp every tensor on the schedule scaled to its own target) or "
        "sensitivity (linear, polynomial, cyclical: targets chosen greedily on sensitivity "
        "curves measured on a dense copy after --sensitivity_steps of training, on "
        "--sensitivity_batches held-out training batches). Default: --scope if given, else erk "
        "for linear, polynomial and cyclical, global for the others.",
        choices=BUDGET_NAMES,
    )  # fmt: skip
    granularity: str = _flag(
        "string", "weight",
        "What one pruning decision removes: weight (single weights); channel (whole output "
        "channels traced through the graph; linear and polynomial; the schedule is the "
        "fraction of channels, --scope=layer by default, no --budget); N:M such as 2:4 (N of "
        "every M consecutive weights along a Dense/Conv kernel's input axis survive; linear, "
        "polynomial, cyclical, snip, grasp, synflow and random; --target_sparsity defaults to "
        "1 - N/M and must equal it; --budget uniform by default, or global).",
    )  # fmt: skip
    sensitivity_steps: int = _flag(
        "integer", 200,
        "--budget=sensitivity: training steps of the dense copy whose sensitivity is measured.",
        lower=0,
    )  # fmt: skip
    sensitivity_batches: int = _flag(
        "integer", 4,
        "--budget=sensitivity: first training batches of epoch 0 held out of that warm-up to "
        "measure the curves on (never the test split).",
        lower=1,
    )  # fmt: skip
    # Schedule (fractions of the whole training, or steps).
    prune_begin: float = _flag(
        "float", 0.0, "Start of pruning as a fraction of training steps, in [0, 1].", **_FRACTION
    )
    prune_end: float = _flag(
        "float", 0.75,
        "End of pruning (target reached) as a fraction of training steps, in [0, 1]; 1.0 is the "
        "last step.",
        **_FRACTION,
    )  # fmt: skip
    prune_frequency: float = _flag(
        "float", 0.01,
        "Steps between mask updates, as a fraction of training steps (at least one step).",
        lower=0.0, upper=1.0, lower_open=True,
    )  # fmt: skip
    prune_begin_step: int | None = _flag(
        "integer", None, "Start of pruning in steps (overrides --prune_begin).", lower=0
    )
    prune_end_step: int | None = _flag(
        "integer", None, "End of pruning in steps (overrides --prune_end).", lower=0
    )
    prune_frequency_steps: int | None = _flag(
        "integer", None, "Steps between mask updates (overrides --prune_frequency).", lower=1
    )
    polynomial_power: float = _flag(
        "float", 3.0, "Exponent of the polynomial schedule, > 0.", lower=0.0, lower_open=True
    )
    cycles: int = _flag("integer", 3, "Cycles of the cyclical schedule.", lower=1)
    cycle_ramp: str = _flag(
        "enum", "linear", "Ramp within each cycle.", choices=("linear", "cubic")
    )
    cycle_start_sparsity: float = _flag(
        "float", 0.0, "Sparsity at the start of every cycle after the first, in [0, 1).",
        **_SPARSITY,
    )  # fmt: skip
    # Method options.
    saliency_batches: int = _flag(
        "integer", 1,
        "snip: training batches scored (their connection sensitivities are summed).",
        lower=1, method="snip",
    )  # fmt: skip
    grasp_samples_per_class: int = _flag(
        "integer", 10,
        "grasp: class-balanced sample size per class, scored in 2 halves (10 as published).",
        lower=1, method="grasp",
    )  # fmt: skip
    grasp_temperature: float = _flag(
        "float", 200.0, "grasp: temperature dividing the logits, > 0.",
        lower=0.0, lower_open=True, method="grasp",
    )  # fmt: skip
    synflow_iterations: int = _flag(
        "integer", 100, "synflow: pruning iterations (100 as published).",
        lower=1, method="synflow",
    )  # fmt: skip
    fggp_candidate_rate: float = _flag(
        "float", 0.5,
        "fggp: fraction of active weights (smallest |gradient|) that become candidates, in "
        "(0, 1].",
        lower=0.0, upper=1.0, lower_open=True, method="fggp",
    )  # fmt: skip
    fggp_gradient: str = _flag(
        "enum", "batch",
        "fggp: rank candidates by the last mini-batch |gradient| (as published) or by its sum "
        "since the previous update. With --initial_sparsity > 0, fggp starts from a random ERK "
        "mask of that sparsity.",
        choices=("batch", "accumulated"),
    )  # fmt: skip
    lth_rounds: int | None = _flag(
        "integer", None,
        "lth: pruning rounds after the dense round 0 (default: the fewest that reach "
        "--target_sparsity; the final sparsity is 1 - (1 - lth_rate)^rounds).",
        lower=1, method="lth",
    )  # fmt: skip
    lth_rate: float = _flag(
        "float", 0.2, "lth: fraction of the remaining weights pruned per round, in (0, 1).",
        lower=0.0, upper=1.0, lower_open=True, upper_open=True, method="lth",
    )  # fmt: skip
    rewind_step: int = _flag(
        "integer", 0,
        "lth: rewind surviving weights to their values at this optimizer step of round 0 "
        "(0: the initialization).",
        lower=0, method="lth",
    )  # fmt: skip
    # Training.
    epochs: int = _flag("integer", 60, "Passes over the training split.", lower=1)
    batch_size: int = _flag("integer", 32, "Examples per training batch.", lower=1)
    optimizer: str = _flag("enum", "sgd", "Optimizer.", choices=("sgd", "adam"))
    momentum: float = _flag("float", 0.9, "SGD momentum, in [0, 1).", **_FRACTION)
    nesterov: bool = _flag("bool", True, "Nesterov momentum (SGD).")
    lr: float = _flag(
        "float", 0.05,
        "Base learning rate (after warm-up), > 0. Not given: 0.05, or the model's own default "
        "(MODEL_LEARNING_RATES: 0.01 for lenet5_caffe, which diverges dense at 0.05).",
        lower=0.0, lower_open=True,
    )  # fmt: skip
    lr_schedule: str = _flag(
        "enum", "hold_cosine",
        "constant; step: times --lr_decay_factor at each of --lr_decay_epochs; cosine: to 0 at "
        "the end; hold_cosine: the base rate until the pruning window ends (--prune_end), then "
        "cosine to 0 (plain cosine for methods that do not prune during training).",
        choices=("constant", "step", "cosine", "hold_cosine"),
    )  # fmt: skip
    lr_decay_epochs: tuple = _flag(
        "list", (), "Epochs (may be fractional) where step decay applies, e.g. 80,120.",
        numbers=True,
    )  # fmt: skip
    lr_decay_factor: float = _flag(
        "float", 0.1, "Multiplier per step decay, in (0, 1].",
        lower=0.0, upper=1.0, lower_open=True,
    )  # fmt: skip
    lr_warmup_epochs: float = _flag(
        "float", 0.0, "Linear learning-rate warm-up, in epochs.", lower=0.0
    )
    weight_decay: float = _flag(
        "float", 1e-4,
        "Coupled L2 weight decay on all trainable variables (PyTorch's SGD convention).",
        lower=0.0,
    )  # fmt: skip
    label_smoothing: float = _flag("float", 0.0, "Label smoothing, in [0, 1).", **_SPARSITY)
    seed: int = _flag("integer", 0, "Seed of initialization, shuffling and augmentation.", lower=0)
    mixed_precision: str = _flag(
        "enum", "off",
        "Mixed-precision compute (variables stay float32): float16 for GPUs, bfloat16 for TPUs "
        "and recent CPUs.",
        choices=("off", "float16", "bfloat16"),
    )  # fmt: skip
    eval_every_epoch: bool = _flag("bool", True, "Evaluate on the test split after every epoch.")
    # Distribution (kprune.distribute). The strategy is volatile: it says where a run computes,
    # not what (a run preempted on one machine may resume on another).
    strategy: str = _flag(
        "enum", "auto",
        "tf.distribute strategy. auto: MirroredStrategy over all GPUs when there are two or "
        "more, else default (one device); mirrored: all GPUs, or all logical CPU devices without "
        "GPUs; multi_worker: MultiWorkerMirroredStrategy, cluster from the TF_CONFIG environment "
        "variable; tpu: TPUStrategy (see --tpu). --batch_size is the global batch, split across "
        "replicas.",
        choices=STRATEGY_NAMES, volatile=True,
    )  # fmt: skip
    tpu: str | None = _flag(
        "string", None,
        "--strategy=tpu: TPU name, grpc:// address, or 'local' on a TPU VM (default: "
        "$TPU_NAME).",
        volatile=True,
    )  # fmt: skip
    # Output.
    model_dir: str | None = _flag(
        "string", None,
        "Run directory (default saved_models/<model>-<dataset>-<method>-<sparsity>[-seedN]).",
        volatile=True,
    )  # fmt: skip
    overwrite: bool = _flag(
        "bool", False,
        "Replace a finished run in --model_dir (only a kprune run directory).",
        volatile=True,
    )  # fmt: skip
    export: tuple = _flag(
        "list", (),
        "Deployment formats to write to <model_dir>/export after training (kprune.export).",
        volatile=True,
    )  # fmt: skip
    export_quantize: str | None = _flag(
        "string", None,
        "Quantization for --export, one of kprune.export.QUANTIZE_MODES (default: its default).",
        volatile=True,
    )  # fmt: skip
    dry_run: bool = _flag(
        "bool", False,
        "Build the model and the pruning plan, print them, and stop: no data, no files.",
        volatile=True,
    )  # fmt: skip
    progress: str = _flag(
        "enum", "bar", "Training output: Keras progress bars, one line per epoch, or nothing.",
        choices=("bar", "epoch", "none"), volatile=True,
    )  # fmt: skip


FLAG_NAMES = tuple(field.name for field in dataclasses.fields(RunFlags))


def flag_spec(name):
    """The `dataclasses.Field` of flag `name`: its default and, in `metadata`, the rest."""
    return RunFlags.__dataclass_fields__[name]


def _interval(spec):
    meta = spec.metadata
    return {
        "low": meta["lower"],
        "high": meta["upper"],
        "low_open": meta["lower_open"],
        "high_open": meta["upper_open"],
    }


def bounds_message(name, value=None):
    """What is wrong with `--name=value` when it lies outside the flag's bounds.

    Example:

    >>> bounds_message("target_sparsity")
    '--target_sparsity must be in [0, 1), 1 excluded.'
    """
    interval = _interval(flag_spec(name))
    text = f"--{name} must be {interval_text(**interval)}"
    if interval["high_open"] and not interval["low_open"]:  # [0, 1) reads too easily as [0, 1]
        text += f", {interval['high']:g} excluded"
    return text + ("." if value is None else f". Received: --{name}={value}")


def check_bounds(name, value):
    """`value` if flag `name` may take it; UsageError otherwise (method options, not parsing).

    Example:

    >>> check_bounds("fggp_candidate_rate", 0.0)
    Traceback (most recent call last):
    kprune.experiment.config.UsageError: --fggp_candidate_rate must be in (0, 1]. Received: \
--fggp_candidate_rate=0.0
    """
    if not in_interval(value, **_interval(flag_spec(name))):
        raise UsageError(bounds_message(name, value))
    return value


def float_list(values):
    """`values` (strings) as floats, or None if one is not a number.

    Example:

    >>> float_list(["80", "120.5"]), float_list(["ten"])
    ([80.0, 120.5], None)
    """
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def define_flags(flag_values=flags.FLAGS):
    """Defines every `RunFlags` field as an absl flag in `flag_values` (once; again: no-op).

    Closed bounds go to absl (they show in --helpfull); an open end, or a list of numbers, gets
    a validator, so that bad values stop parsing with exit status 2.
    """
    if all(name in flag_values for name in FLAG_NAMES):
        return
    for field in dataclasses.fields(RunFlags):
        meta, name = field.metadata, field.name
        kind, common = meta["kind"], {"flag_values": flag_values}
        if kind == "enum":
            flags.DEFINE_enum(name, field.default, meta["choices"], meta["help"], **common)
        elif kind in ("integer", "float"):
            define = flags.DEFINE_integer if kind == "integer" else flags.DEFINE_float
            bounds = {"lower_bound": meta["lower"], "upper_bound": meta["upper"]}
            define(name, field.default, meta["help"], **bounds, **common)
        elif kind == "list":
            flags.DEFINE_list(name, list(field.default), meta["help"], **common)
        else:
            define = {"string": flags.DEFINE_string, "bool": flags.DEFINE_bool}[kind]
            define(name, field.default, meta["help"], **common)
        if (meta["lower_open"] or meta["upper_open"]) and meta["method"] is None:
            interval = _interval(field)
            flags.register_validator(
                name,
                lambda v, interval=interval: in_interval(v, **interval),
                message=bounds_message(name),
                flag_values=flag_values,
            )
        if meta["numbers"]:
            flags.register_validator(
                name,
                lambda v: float_list(v) is not None,
                message=f"--{name} must be a comma-separated list of numbers, e.g. 80,120.",
                flag_values=flag_values,
            )
