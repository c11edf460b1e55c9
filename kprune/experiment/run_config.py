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
from kprune.workflows.training import TrainConfig

__all__ = ["ERK_BY_DEFAULT", "RunConfig", "config_from_flags", "lth_rounds", "resolve_budget_flags"]


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
    budget: str = "global"

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


def resolve_budget_flags(values):
    """`(budget, scope)` from --budget and --scope: one choice under two names.

    --budget wins, --scope given alone maps to its budget, neither gives the method's default
    (erk for `ERK_BY_DEFAULT`, else global). Both given and different: UsageError.

    Example:

    >>> from kprune.experiment.config import define_flags
    >>> values = flags.FlagValues()
    >>> define_flags(values)
    >>> _ = values(["kprune.train", "--scope=layer"])
    >>> resolve_budget_flags(values)
    ('uniform', 'layer')
    """
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
        else:
            budget = "erk" if values.method in ERK_BY_DEFAULT else "global"
    return budget, BUDGET_SCOPES[budget]


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
    budget, scope = resolve_budget_flags(values)
    resolved = {name: values[name].value for name in FLAG_NAMES}
    resolved.update(budget=budget, scope=scope, lr=lr)
    lines = {}
    for name in FLAG_NAMES:
        line = "" if flag_spec(name).metadata["volatile"] else values[name].serialize()
        if name in ("budget", "scope", "lr"):
            # The resolved pair, so run.flags reused as a --flagfile means the same run.
            line = f"--{name}={resolved[name]}"
        if line:
            lines[name] = line
    return RunConfig(
        model=values.model,
        dataset=values.dataset,
        data_dir=values.data_dir,
        download=values.download,
        exclude=tuple(values.exclude),
        method=values.method,
        target_sparsity=_target_sparsity(values),
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
    )
