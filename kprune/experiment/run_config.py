"""A run's description, taken from the parsed flags once: library code never reads flags.

Example:

>>> lth_rounds(0.99, 0.2)  # the fewest rounds r with 1 - 0.8**r >= 0.99
21
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from absl import flags

from kprune.allocation import BUDGET_SCOPES
from kprune.experiment.config import (
    FLAG_NAMES,
    MODEL_LEARNING_RATES,
    UsageError,
    check_bounds,
    flag_spec,
    float_list,
)
from kprune.granularity import NM_TOLERANCE, Granularity, parse_granularity
from kprune.workflows.training import TrainConfig

__all__ = [
    "ERK_BY_DEFAULT",
    "GRANULARITY_METHODS",
    "RunConfig",
    "config_from_flags",
    "lth_rounds",
    "resolve_budget_flags",
    "resolve_granularity_flag",
]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, taken from the flags once; library code never reads flags.

    `training` is the `kprune.workflows.training.TrainConfig`; `flags` holds every flag by name
    (method adapters read their own options from it; results.json records it); `flag_lines`
    holds the `--name=value` line of every non-volatile flag (run.flags).

    Example:

    >>> from kprune.experiment.config import define_flags
    >>> values = flags.FlagValues()
    >>> define_flags(values)
    >>> _ = values(["kprune.train", "--method=polynomial", "--seed=2"])
    >>> config = config_from_flags(values)
    >>> config.run_dir.as_posix(), config.training.epochs, config.flag_lines["seed"]
    ('saved_models/lenet300_100-digits-polynomial-90-seed2', 60, '--seed=2')
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
    training: TrainConfig
    strategy: str
    tpu: str | None
    model_dir: str | None
    overwrite: bool
    export: tuple
    export_quantize: str | None
    dry_run: bool
    verbose: int
    flags: dict
    flag_lines: dict
    budget: str | None = "global"  # None at channel granularity (no per-tensor budget)
    granularity: str = "weight"  # "weight", "channel" or "N:M" (kprune.granularity)

    @property
    def run_name(self):
        """Default run directory name, e.g. "lenet300_100-digits-linear-90"."""
        dataset = self.dataset
        if dataset.startswith("npz:"):
            dataset = "npz_" + pathlib.Path(dataset[4:]).stem
        parts = [self.model, dataset, self.method]
        if self.granularity != "weight":
            parts.append(self.granularity.replace(":", "of"))  # "2of4": no ":" in a path
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
    check_bounds("lth_rate", rate)
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


# Methods whose default budget is ERK: measured on mnist_dev at 98% (docs/ramp_study.md), the
# global threshold starves LeNet-300-100's first layer. FGGP pools globally as published.
ERK_BY_DEFAULT = ("dense", "linear", "polynomial", "cyclical")


# The methods each --granularity other than weight applies to (weight: every method).
GRANULARITY_METHODS = {
    "channel": ("linear", "polynomial"),
    "nm": ("linear", "polynomial", "cyclical", "snip", "grasp", "synflow", "random"),
}


def resolve_granularity_flag(values):
    """The `kprune.granularity.Granularity` of --granularity, checked against --method.

    Example:

    >>> from kprune.experiment.config import define_flags
    >>> values = flags.FlagValues()
    >>> define_flags(values)
    >>> _ = values(["kprune.train", "--granularity=2:4"])
    >>> resolve_granularity_flag(values)
    Granularity(kind='nm', n=2, m=4)
    """
    try:
        granularity = parse_granularity(values.granularity)
    except ValueError as err:
        raise UsageError(f"--granularity: {err}") from err
    allowed = GRANULARITY_METHODS.get(granularity.kind)
    if allowed is not None and values.method not in allowed:
        form = "N:M " if granularity.is_nm else ""
        raise UsageError(
            f"--granularity={granularity} does not apply to --method={values.method}; {form}"
            f"granularity applies to --method={'|'.join(allowed)}. Leave --granularity at "
            "weight for this method."
        )
    return granularity


def resolve_budget_flags(values, granularity=None):
    """`(budget, scope)` from --budget and --scope: one choice under two names.

    --budget wins, --scope given alone maps to its budget, neither gives the method's default
    (erk for `ERK_BY_DEFAULT`, else global). Both given and different: UsageError. At
    `granularity` channel there is no budget (`(None, scope)`, scope layer unless --scope
    says global); at N:M the default is uniform and erk is refused.

    Example:

    >>> from kprune.experiment.config import define_flags
    >>> values = flags.FlagValues()
    >>> define_flags(values)
    >>> _ = values(["kprune.train", "--scope=layer"])
    >>> resolve_budget_flags(values)
    ('uniform', 'layer')
    """
    kind = "weight" if granularity is None else granularity.kind
    if kind == "channel":
        if values.budget is not None:
            raise UsageError(
                f"--budget={values.budget} sets per-tensor budgets of weight pruning; "
                "--granularity=channel has none: every channel group loses the target fraction "
                "(--scope=layer, the default) or one ranking spans all groups (--scope=global). "
                "Drop --budget."
            )
        scope = values.scope if values["scope"].present else "layer"
        if scope == "erk":
            raise UsageError(
                "--scope=erk sets per-tensor budgets of weight pruning; at "
                "--granularity=channel use --scope=layer (the default) or --scope=global."
            )
        return None, scope
    scopes = {scope: budget for budget, scope in BUDGET_SCOPES.items() if budget != "sensitivity"}
    budget = values.budget
    if budget is not None and values["scope"].present and BUDGET_SCOPES[budget] != values.scope:
        scope = BUDGET_SCOPES[budget]
        same = f"is --scope={scope}" if scope in scopes else "has no --scope name"
        raise UsageError(
            f"--budget={budget} contradicts --scope={values.scope} (--budget={budget} {same}); "
            "give one of them."
        )
    if budget is None:
        if values["scope"].present:
            budget = scopes[values.scope]
        elif kind == "nm":
            budget = "uniform"
        else:
            budget = "erk" if values.method in ERK_BY_DEFAULT else "global"
    if kind == "nm" and budget == "erk":
        raise UsageError(
            f"--budget=erk (--scope=erk) gives every tensor its own target; "
            f"--granularity={granularity} has one, {granularity.sparsity:g} in every tensor. "
            "Use --budget=uniform (the default at N:M) or --budget=global."
        )
    return budget, BUDGET_SCOPES[budget]


def _nm_target(values, granularity):
    """--target_sparsity at N:M granularity: 1 - N/M, its default, and the only value."""
    given = values.target_sparsity
    if values["target_sparsity"].present and abs(given - granularity.sparsity) > NM_TOLERANCE:
        raise UsageError(
            f"--granularity={granularity} keeps {granularity.n} of every {granularity.m} "
            f"weights, so --target_sparsity must be {granularity.sparsity:g} (its default at "
            f"this granularity). Received: --target_sparsity={given}"
        )
    return granularity.sparsity


def config_from_flags(values=flags.FLAGS):
    """Turns parsed flags into a `RunConfig`, checking what absl's bounds cannot.

    Raises:
        UsageError: inconsistent or out-of-range values (e.g. a learning-rate decay epoch
            beyond training).

    Example:

    >>> from kprune.experiment.config import define_flags
    >>> values = flags.FlagValues()
    >>> define_flags(values)
    >>> _ = values(["kprune.train", "--method=lth", "--lth_rounds=3"])
    >>> round(config_from_flags(values).target_sparsity, 3)  # 1 - 0.8**3
    0.488
    """
    # --lr not given: the model's own default rate, if it has one.
    lr = values.lr if values["lr"].present else MODEL_LEARNING_RATES.get(values.model, values.lr)
    try:
        training = TrainConfig(
            epochs=values.epochs,
            optimizer=values.optimizer,
            learning_rate=lr,
            momentum=values.momentum,
            nesterov=values.nesterov,
            lr_schedule=values.lr_schedule,
            lr_decay_epochs=tuple(float_list(values.lr_decay_epochs)),
            lr_decay_factor=values.lr_decay_factor,
            lr_warmup_epochs=values.lr_warmup_epochs,
            weight_decay=values.weight_decay,
            label_smoothing=values.label_smoothing,
            eval_every_epoch=values.eval_every_epoch,
        )
    except ValueError as err:
        raise UsageError(f"training flags: {err}") from err
    granularity = resolve_granularity_flag(values)
    budget, scope = resolve_budget_flags(values, granularity)
    target_sparsity = _target_sparsity(values)
    resolved = {name: values[name].value for name in FLAG_NAMES}
    resolved.update(budget=budget, scope=scope, lr=lr, granularity=str(granularity))
    if granularity.is_nm:
        target_sparsity = _nm_target(values, granularity)
        resolved["target_sparsity"] = target_sparsity
    lines = {}
    for name in FLAG_NAMES:
        line = "" if flag_spec(name).metadata["volatile"] else values[name].serialize()
        if name in ("budget", "scope", "lr"):
            # The resolved pair, so run.flags reused as a --flagfile means the same run.
            line = f"--{name}={resolved[name]}" if resolved[name] is not None else ""
        if name == "target_sparsity" and granularity.is_nm:
            line = f"--target_sparsity={target_sparsity!r}"
        if name == "granularity" and granularity == Granularity("weight"):
            line = ""  # run.flags of weight pruning stay as they were (resume compares them)
        if name in ("sensitivity_steps", "sensitivity_batches") and budget != "sensitivity":
            line = ""  # only --budget=sensitivity reads them; other run.flags stay unchanged
        if line:
            lines[name] = line
    return RunConfig(
        model=values.model,
        dataset=values.dataset,
        data_dir=values.data_dir,
        download=values.download,
        exclude=tuple(values.exclude),
        method=values.method,
        target_sparsity=target_sparsity,
        initial_sparsity=values.initial_sparsity,
        scope=scope,
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
        flags=resolved,
        flag_lines=lines,
        budget=budget,
        granularity=str(granularity),
    )
