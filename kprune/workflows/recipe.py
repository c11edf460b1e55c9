"""How to train: the config, optimizer, learning-rate schedule, loss and weight decay.

Everything here is plain configuration turned into Keras objects; `kprune.workflows.training`
runs the loop with them (and re-exports these names).

Conventions taken from the reference implementations (PyTorch):

* Weight decay is coupled L2, as PyTorch's `SGD(weight_decay=wd)`: the gradient of every
  trainable variable gets `+ wd * w` (an L2 penalty `wd / 2 * ||w||^2` on each variable, biases
  and BatchNorm included), so it goes through momentum like the published recipes.
* Step decay multiplies the learning rate by `lr_decay_factor` from the *start* of each listed
  epoch (PyTorch's MultiStepLR); warm-up rises linearly over `lr_warmup_epochs`; cosine decays
  to 0 at the last step.
* `hold_cosine` couples the rate to the pruning window: the base rate (after any warm-up) is
  held until the window's end step (`TrainConfig.lr_hold_end_step`, which
  `kprune.workflows.gradual.train_gradual` fills in from its schedule), then decays on a cosine
  to 0 at the last step. A linear ramp removes most of the surviving weights in its last
  updates; on mnist_dev at 98% (docs/ramp_study.md) a cosine that is already at 15% of its
  base there leaves too little rate to recover. Without a window end it is the plain cosine.

Example:

>>> config = TrainConfig(epochs=2, learning_rate=0.05, lr_schedule="cosine")
>>> type(make_optimizer(config, steps_per_epoch=10)).__name__
'SGD'
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from kprune._internal.validate import check_choice, check_integer, check_number

__all__ = [
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "TrainConfig",
    "WarmupDecay",
    "SparseCrossentropy",
    "make_learning_rate",
    "make_optimizer",
    "make_loss",
    "apply_weight_decay",
]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "step", "cosine", "hold_cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs, optimizer, learning rate, regularization. Plain values only.

    Attributes:
        epochs: passes over the training split, >= 1.
        optimizer: "sgd" (with `momentum`, optionally Nesterov) or "adam".
        learning_rate: the base (peak) learning rate, > 0.
        momentum: SGD momentum in [0, 1).
        nesterov: Nesterov momentum for SGD.
        lr_schedule: "constant", "step" (times `lr_decay_factor` at each of `lr_decay_epochs`),
            "cosine" (to 0 at the end) or "hold_cosine" (the base rate until
            `lr_hold_end_step`, then cosine to 0 at the end).
        lr_decay_epochs: epochs (may be fractional) where step decay applies, increasing.
        lr_decay_factor: multiplier of each step decay, in (0, 1].
        lr_warmup_epochs: linear warm-up length in epochs, >= 0.
        weight_decay: coupled L2 coefficient (PyTorch convention), >= 0.
        label_smoothing: in [0, 1).
        eval_every_epoch: evaluate on the test split after every epoch (TensorBoard curves and
            `best_test_accuracy`); the final evaluation always runs.
        lr_hold_end_step: "hold_cosine" only: the optimizer step until which the base rate is
            held (the pruning window's end step); None holds nothing (plain cosine).
            `train_gradual` sets it from its schedule when it is None.

    Example:

    >>> TrainConfig(epochs=160, lr_schedule="step", lr_decay_epochs=(80, 120)).lr_decay_factor
    0.1
    """

    epochs: int = 30
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "constant"
    lr_decay_epochs: tuple = ()
    lr_decay_factor: float = 0.1
    lr_warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    eval_every_epoch: bool = True
    lr_hold_end_step: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "epochs", check_integer("epochs", self.epochs, 1))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_number("learning_rate", self.learning_rate, 0.0, low_open=True)
        check_number("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_number("lr_decay_factor", self.lr_decay_factor, 0.0, 1.0, low_open=True)
        check_number("lr_warmup_epochs", self.lr_warmup_epochs, 0.0, self.epochs, high_open=True)
        check_number("weight_decay", self.weight_decay, 0.0)
        check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        decay = tuple(float(check_number("lr_decay_epochs", e, 0.0)) for e in self.lr_decay_epochs)
        if list(decay) != sorted(set(decay)):
            raise ValueError(
                f"`lr_decay_epochs` must be strictly increasing. Received: {self.lr_decay_epochs}"
            )
        if decay and decay[-1] >= self.epochs:
            raise ValueError(
                f"`lr_decay_epochs` must lie within training (< epochs={self.epochs}). "
                f"Received: {self.lr_decay_epochs}"
            )
        if self.lr_schedule == "step" and not decay:
            raise ValueError("lr_schedule='step' needs `lr_decay_epochs`, e.g. (80, 120).")
        object.__setattr__(self, "lr_decay_epochs", decay)
        if self.lr_hold_end_step is not None:
            hold = check_integer("lr_hold_end_step", self.lr_hold_end_step, 0)
            object.__setattr__(self, "lr_hold_end_step", hold)


@keras.saving.register_keras_serializable(package="kprune")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate by step: optional linear warm-up, then constant, step or cosine decay.

    Args:
        base_lr: the learning rate after warm-up, > 0.
        total_steps: length of training in steps (the cosine reaches 0 at the last step).
        kind: "constant", "step", "cosine" or "hold_cosine" (`base_lr` until `hold_steps`,
            then cosine from there to 0 at the last step).
        boundaries: steps from which the rate is multiplied by `factor` once more ("step").
        factor: multiplier per boundary.
        warmup_steps: the rate rises linearly from `base_lr / warmup_steps` to `base_lr` over
            the first `warmup_steps` steps.
        hold_steps: "hold_cosine": the step where the cosine starts (the pruning window's
            end); the rate is `base_lr` (after warm-up) until then. At most `total_steps - 1`.

    Example:

    >>> lr = WarmupDecay(0.1, 100, kind="step", boundaries=(50, 75))
    >>> [round(float(lr(s)), 4) for s in (0, 49, 50, 75)]
    [0.1, 0.1, 0.01, 0.001]
    >>> lr = WarmupDecay(0.1, 101, kind="hold_cosine", hold_steps=50)
    >>> [round(float(lr(s)), 4) for s in (0, 50, 75, 100)]
    [0.1, 0.1, 0.05, 0.0]
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        kind="constant",
        boundaries=(),
        factor=0.1,
        warmup_steps=0,
        hold_steps=0,
    ):
        self.kind = check_choice("kind", kind, LR_SCHEDULES)
        self.base_lr = float(check_number("base_lr", base_lr, 0.0, low_open=True))
        self.total_steps = int(check_number("total_steps", total_steps, 1))
        self.boundaries = tuple(int(b) for b in boundaries)
        self.factor = float(factor)
        self.warmup_steps = int(check_number("warmup_steps", warmup_steps, 0))
        self.hold_steps = int(check_number("hold_steps", hold_steps, 0, self.total_steps - 1))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.kind == "step":
            for boundary in self.boundaries:
                lr = ops.where(step >= boundary, lr * self.factor, lr)
        elif self.kind in ("cosine", "hold_cosine"):
            # The cosine starts after the warm-up, or (hold_cosine) at the hold end if later.
            start = self.warmup_steps
            if self.kind == "hold_cosine":
                start = max(start, self.hold_steps)
            span = max(self.total_steps - 1 - start, 1)
            progress = ops.clip((step - start) / span, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps:
            ramp = ops.minimum((step + 1.0) / self.warmup_steps, 1.0)
            lr = lr * ramp
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "kind": self.kind,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "warmup_steps": self.warmup_steps,
            "hold_steps": self.hold_steps,
        }


@keras.saving.register_keras_serializable(package="kprune")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits for integer labels, with optional label smoothing.

    `keras.losses.SparseCategoricalCrossentropy` has no label smoothing; this loss one-hot
    encodes the labels and smooths them as `(1 - ls) * one_hot + ls / num_classes`.

    Args:
        label_smoothing: in [0, 1).
        name: loss name.

    Example:

    >>> import numpy as np
    >>> loss = SparseCrossentropy(label_smoothing=0.1)
    >>> round(float(loss(np.array([0]), np.array([[0.0, 0.0]]))), 4)
    0.6931
    """

    def __init__(self, label_smoothing=0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(
            check_number("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        )

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_loss(config):
    """The loss for `config`: sparse cross-entropy from logits (label smoothing if asked).

    Example:

    >>> type(make_loss(TrainConfig(label_smoothing=0.1))).__name__
    'SparseCrossentropy'
    """
    return SparseCrossentropy(label_smoothing=config.label_smoothing)


def make_learning_rate(config, steps_per_epoch):
    """The `WarmupDecay` learning-rate schedule of `config`, in optimizer steps.

    Example:

    >>> lr = make_learning_rate(TrainConfig(lr_schedule="constant", learning_rate=0.1), 10)
    >>> round(float(lr(5)), 6)
    0.1
    >>> config = TrainConfig(epochs=2, lr_schedule="hold_cosine", lr_hold_end_step=15)
    >>> make_learning_rate(config, 10).hold_steps
    15
    """
    steps_per_epoch = int(check_number("steps_per_epoch", steps_per_epoch, 1))
    total = config.epochs * steps_per_epoch
    hold = 0
    if config.lr_schedule == "hold_cosine" and config.lr_hold_end_step is not None:
        if config.lr_hold_end_step > total - 1:
            raise ValueError(
                f"`lr_hold_end_step`={config.lr_hold_end_step} lies beyond training: the last "
                f"step is {total - 1} ({config.epochs} epochs of {steps_per_epoch} steps)."
            )
        hold = config.lr_hold_end_step
    return WarmupDecay(
        config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        kind=config.lr_schedule,
        boundaries=[round(e * steps_per_epoch) for e in config.lr_decay_epochs],
        factor=config.lr_decay_factor,
        warmup_steps=round(config.lr_warmup_epochs * steps_per_epoch),
        hold_steps=hold,
    )


def make_optimizer(config, steps_per_epoch):
    """The optimizer for `config`, with a `WarmupDecay` learning rate in steps.

    Args:
        config: a `TrainConfig`.
        steps_per_epoch: training batches per epoch (converts epochs to steps).

    Example:

    >>> opt = make_optimizer(TrainConfig(optimizer="sgd", nesterov=True), steps_per_epoch=10)
    >>> type(opt).__name__, opt.nesterov
    ('SGD', True)
    """
    learning_rate = make_learning_rate(config, steps_per_epoch)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=config.momentum, nesterov=config.nesterov
        )
    return keras.optimizers.Adam(learning_rate)


def apply_weight_decay(model, weight_decay):
    """Puts a coupled L2 penalty `weight_decay / 2 * ||w||^2` on every trainable variable.

    The regularizer sits on the variables themselves, so it also reaches the kernels inside
    `PruningWrapper`s (whose pruned entries are zero and add nothing). Call it on the model you
    train (after `kprune.prune`, which creates new variables).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> apply_weight_decay(model, 5e-4)
    >>> len(model.losses)
    2
    """
    check_number("weight_decay", weight_decay, 0.0)
    regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None
    for variable in model.trainable_variables:
        variable.regularizer = regularizer
