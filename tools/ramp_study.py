"""Issue 14, part 1: why linear progressive pruning falls behind cubic pruning at 98%.

Trains LeNet-300-100 on a small MNIST-class .npz (by default the development set
`../shared/data/mnist_dev.npz`: 3,200 training and 800 validation digits) with the CLI's recipe
rebuilt from plain Keras and kprune's public API (SGD Nesterov 0.9, lr 0.05, cosine to 0,
coupled L2 1e-4 on every trainable variable, global magnitude pruning from step 0 to 75% of
training, a mask update every 1%), then varies what surrounds the linear ramp, and compares
with the cubic (polynomial) ramp under the same recipe. Every run records, at each mask update,
the validation accuracy just before and just after it, the learning rate, and the fraction
of the surviving weights it removed; at the end, the per-layer sparsity and the output units
(classes) left with no incoming weight.

A second part looks for the cause of LeNet-5-Caffe's NaN loss with the CLI defaults by
changing one thing at a time (initialization, input scaling, batch size, weight decay,
Nesterov, learning rate) and recording the first non-finite step.

TensorFlow runs single-threaded and the runs one after another (the machine is shared).

Usage (all the commands, and the tables they gave, are in docs/ramp_study.md):
    python tools/ramp_study.py --data=../shared/data/mnist_dev.npz \
        --parts=trace,variants --out=docs/bench/ramp_study.json
    python tools/ramp_study.py --data=../shared/data/mnist_dev.npz --parts=nan \
        --out=docs/bench/ramp_study_nan.json
    python tools/ramp_study.py --summarize=docs/bench/ramp_study.json   # markdown tables
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kprune  # noqa: E402
from kprune import data as data_lib  # noqa: E402
from kprune import models  # noqa: E402
from tools.benchlib import environment  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data", "../shared/data/mnist_dev.npz", ".npz with x_train/y_train/x_test/y_test."
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (initialization and shuffling).")
flags.DEFINE_list("sparsities", ["0.95", "0.98", "0.99"], "Target sparsities of the trace part.")
flags.DEFINE_list(
    "variant_sparsities", ["0.98"], "Target sparsities at which every recipe variant runs."
)
flags.DEFINE_list(
    "parts",
    ["trace", "variants"],
    "trace (CLI recipe at every --sparsities), variants (every recipe of --variants at "
    "--variant_sparsities), layer (layer scope, CLI recipe), nan (LeNet-5-Caffe divergence), "
    "cli_check (the CLI itself, to check the rebuilt recipe).",
)
flags.DEFINE_list("variants", None, "Recipe variants to run (default: all of RECIPES).")
flags.DEFINE_list("methods", ["linear", "polynomial"], "Ramps to compare.")
flags.DEFINE_integer("epochs", 20, "Epochs of the base recipe.")
flags.DEFINE_integer("batch_size", 100, "Batch size.")
flags.DEFINE_string("out", None, "JSON output path (default: print only).")
flags.DEFINE_bool("dense", True, "Train the dense baseline (trace and variants parts).")
flags.DEFINE_integer("nan_steps", 300, "nan part: training steps per configuration.")
flags.DEFINE_list("nan_configs", None, "nan part: configurations (default: all).")
flags.DEFINE_list(
    "summarize", None, "Only print the markdown tables of these JSON files (no training)."
)

# -- recipes -----------------------------------------------------------------------------------
# Base = the CLI defaults with --epochs=20 --batch_size=100. A variant overrides some keys.
BASE = {
    "epochs": None,  # from --epochs
    "end": 0.75,  # pruning window end, fraction of training steps
    "end_steps_of_base": False,  # True: keep the base window in steps while training longer
    "frequency": 0.01,  # mask update every 1% of training
    "lr": 0.05,
    "lr_kind": "cosine",  # cosine | hold (base until the window end, then cosine) | rewarm
    "slot_zeroing": True,
    "budget": "global",  # global (one threshold, the CLI's) | erk (per-layer ERK targets)
}
RECIPES = {
    "cli": {},
    "end50": {"end": 0.5},
    "end60": {"end": 0.6},
    "freq5": {"frequency": 0.05},
    "hold": {"lr_kind": "hold"},
    "hold_end60": {"lr_kind": "hold", "end": 0.6},
    "hold_end50": {"lr_kind": "hold", "end": 0.5},
    "rewarm": {"lr_kind": "rewarm"},
    "long30": {"epochs": 30, "end_steps_of_base": True},
    "no_slot_zeroing": {"slot_zeroing": False},
    # Per-layer budgets instead of one global threshold: every layer ramps (linearly for
    # `linear`) to its own ERK target; kprune's gradual methods have no budget option yet, so
    # this wraps the layers by hand with `kprune.PruningWrapper(..., scope="layer")`.
    "erk": {"budget": "erk"},
    "hold_erk": {"budget": "erk", "lr_kind": "hold"},
}


class RampLR(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate coupled (or not) to the pruning window that ends at `ramp_end`.

    * cosine: `base * (1 + cos(pi * t / (T - 1))) / 2`, the CLI's schedule.
    * hold: `base` until `ramp_end`, then cosine from `base` to 0 at `T - 1`.
    * rewarm: the CLI's cosine until `ramp_end`, then a warm restart at `base`, cosine to 0.
    """

    def __init__(self, base, total_steps, kind, ramp_end):
        self.base, self.total, self.kind, self.ramp_end = base, total_steps, kind, ramp_end

    def _cosine(self, step, start):
        span = max(self.total - 1 - start, 1)
        progress = tf.clip_by_value((step - start) / span, 0.0, 1.0)
        return self.base * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.kind == "cosine":
            return self._cosine(step, 0.0)
        after = self._cosine(step, float(self.ramp_end))
        if self.kind == "hold":
            return tf.where(step <= self.ramp_end, tf.constant(self.base, tf.float32), after)
        return tf.where(step <= self.ramp_end, self._cosine(step, 0.0), after)

    def get_config(self):
        return {"base": self.base, "total_steps": self.total, "kind": self.kind}


class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """`inner(t) * min((t + 1) / steps, 1)`: the CLI's linear warm-up (`--lr_warmup_epochs`)."""

    def __init__(self, inner, steps):
        self.inner, self.steps = inner, steps

    def __call__(self, step):
        ramp = tf.minimum((tf.cast(step, tf.float32) + 1.0) / self.steps, 1.0)
        return self.inner(step) * ramp

    def get_config(self):
        return {"steps": self.steps}


def make_schedule(method, sparsity, begin, end, frequency):
    if method == "linear":
        return kprune.LinearSparsity(0.0, sparsity, begin, end, frequency=frequency)
    return kprune.PolynomialDecay(0.0, sparsity, begin, end, power=3.0, frequency=frequency)


def erk_sparsities(shapes, sparsity):
    """Per-tensor sparsities of the ERK budget (RigL) for `sparsity` over all the tensors.

    Density is proportional to `sum(shape) / prod(shape)`, scaled so that the kept count is
    `(1 - sparsity) * N`; a tensor whose density would exceed 1 is kept dense and the scale is
    solved again.

    >>> [round(s, 4) for s in erk_sparsities([(784, 300), (300, 100), (100, 10)], 0.98)]
    [0.9846, 0.9555, 0.6326]
    """
    sizes = [int(np.prod(shape)) for shape in shapes]
    raw = [sum(shape) / size for shape, size in zip(shapes, sizes)]
    budget = (1 - sparsity) * sum(sizes)
    dense = set()
    while True:
        free = budget - sum(sizes[i] for i in dense)
        scale = free / sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
        over = {i for i in range(len(sizes)) if i not in dense and raw[i] * scale > 1}
        if not over:
            break
        dense |= over
    return [0.0 if i in dense else 1 - raw[i] * scale for i in range(len(sizes))]


def lenet300_100_budgeted(input_shape, num_classes, method, sparsity, end, freq):
    """LeNet-300-100 (as `kprune.models.lenet300_100`) with every layer on its own ERK ramp."""
    shapes = [(int(np.prod(input_shape)), 300), (300, 100), (100, num_classes)]
    targets = erk_sparsities(shapes, sparsity)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    layers = [
        keras.layers.Dense(300, activation="relu", kernel_initializer="he_normal", name="fc1"),
        keras.layers.Dense(100, activation="relu", kernel_initializer="he_normal", name="fc2"),
        keras.layers.Dense(num_classes, name="logits"),
    ]
    for layer, target in zip(layers, targets):
        schedule = make_schedule(method, target, 0, end, freq)
        x = kprune.PruningWrapper(layer, schedule, scope="layer")(x)
    return keras.Model(inputs, x, name="lenet300_100"), targets


def update_steps(schedule, total_steps):
    """`[(step, target)]` where `schedule` updates the masks, evaluated by the schedule itself."""
    steps = tf.range(total_steps, dtype=tf.int64)
    should, target = tf.vectorized_map(schedule, steps)
    keep = should.numpy()
    return list(zip(steps.numpy()[keep].tolist(), target.numpy()[keep].tolist()))


def kept_count(model):
    return int(sum(np.count_nonzero(m) for m in kprune.get_masks(model).values()))


class Bind(keras.callbacks.Callback):
    """`kprune.PruningCallback`'s binding, optionally without zeroing optimizer slots.

    kprune has no switch for slot zeroing; `bind_optimizer` returns the `PruningGroup`s whose
    documented `slots` lists name the optimizer variables zeroed at each update, so emptying
    them (before the train step is traced) turns zeroing off for this study only.
    """

    def __init__(self, slot_zeroing):
        super().__init__()
        self.slot_zeroing = slot_zeroing

    def on_train_begin(self, logs=None):
        groups = kprune.bind_optimizer(self.model, self.model.optimizer)
        if not self.slot_zeroing:
            for group in groups:
                group.slots = [[[] for _ in per_wrapper] for per_wrapper in group.slots]

    def on_train_end(self, logs=None):
        kprune.api.apply_masks(self.model)


class Trace(keras.callbacks.Callback):
    """Validation accuracy just before and just after every mask update, and per epoch."""

    def __init__(self, x_val, y_val, updates, lr_schedule):
        super().__init__()
        self.x_val, self.y_val = x_val, y_val
        self.updates = dict(updates)
        self.lr_schedule = lr_schedule
        self.rows, self.epochs = [], []
        self._before = None
        self._predict = None

    def accuracy(self):
        if self._predict is None:
            self._predict = tf.function(lambda x: tf.argmax(self.model(x, training=False), -1))
        predicted = self._predict(self.x_val).numpy()
        return float(np.mean(predicted == self.y_val))

    def on_train_begin(self, logs=None):
        if 0 in self.updates:
            self._before = (self.accuracy(), kept_count(self.model))

    def on_train_batch_end(self, batch, logs=None):
        done = int(self.model.optimizer.iterations.numpy())  # steps 0 .. done - 1 have run
        step = done - 1
        if step in self.updates and self._before is not None:
            before_acc, before_kept = self._before
            kept = kept_count(self.model)
            self.rows.append(
                {
                    "step": step,
                    "target": round(self.updates[step], 6),
                    "lr": float(self.lr_schedule(step)),
                    "acc_before": before_acc,
                    "acc_after": self.accuracy(),
                    "kept_before": before_kept,
                    "kept_after": kept,
                    "removed_of_survivors": (before_kept - kept) / before_kept
                    if before_kept
                    else 0.0,
                }
            )
        self._before = None
        if done in self.updates:  # the next step updates the masks: measure before it
            self._before = (self.accuracy(), kept_count(self.model))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self.accuracy())


def dead_units(masks):
    """Units of LeNet-300-100 cut off by the masks: no incoming or no outgoing weight."""
    names = ["fc1/kernel", "fc2/kernel", "logits/kernel"]
    kernels = [masks[n] for n in names if n in masks]
    out = {}
    for i, (name, mask) in enumerate(zip(names, kernels)):
        no_in = int(np.sum(~mask.astype(bool).any(axis=0)))
        no_out = None
        if i + 1 < len(kernels):
            no_out = int(np.sum(~kernels[i + 1].astype(bool).any(axis=1)))
        out[name.split("/")[0]] = {"units": int(mask.shape[1]), "no_incoming": no_in,
                                   "no_outgoing": no_out}  # fmt: skip
    return out


def val_arrays(dataset):
    xs, ys = [], []
    for x, y in dataset.test:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return tf.constant(np.concatenate(xs)), np.concatenate(ys)


def train_one(data_path, method, sparsity, seed, recipe, *, scope="global", quiet=False):
    """One run of LeNet-300-100 with `recipe`; returns a dict of results."""
    r = {**BASE, **recipe}
    epochs = r["epochs"] or FLAGS.epochs
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    data = data_lib.load_dataset(f"npz:{data_path}", FLAGS.batch_size, seed=seed)
    total = epochs * data.steps_per_epoch
    base_total = FLAGS.epochs * data.steps_per_epoch
    if r["end_steps_of_base"]:
        end, freq = round(r["end"] * base_total), max(1, round(r["frequency"] * base_total))
    else:
        end, freq = round(r["end"] * total), max(1, round(r["frequency"] * total))
    end = min(end, total - 1)
    lr = RampLR(r["lr"], total, r["lr_kind"], end)
    callbacks = []
    updates = []
    budget_targets = None
    if method != "dense" and r["budget"] == "erk":
        model, budget_targets = lenet300_100_budgeted(
            data.input_shape, data.num_classes, method, sparsity, end, freq
        )
        # All layers update at the same steps (same window and frequency): trace those.
        updates = update_steps(make_schedule(method, sparsity, 0, end, freq), total)
        callbacks.append(Bind(r["slot_zeroing"]))
    else:
        model = models.lenet300_100(data.input_shape, data.num_classes)
    if method != "dense" and r["budget"] == "global":
        schedule = make_schedule(method, sparsity, 0, end, freq)
        updates = update_steps(schedule, total)
        model = kprune.prune(model, schedule, scope=scope)
        callbacks.append(Bind(r["slot_zeroing"]))
    # Coupled L2 on every trainable variable, as kprune's training loop (PyTorch convention).
    for variable in model.trainable_variables:
        variable.regularizer = keras.regularizers.L2(1e-4 / 2.0)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x_val, y_val = val_arrays(data)
    trace = Trace(x_val, y_val, updates, lr)
    start = time.perf_counter()
    history = model.fit(
        data.train_epochs(0),
        epochs=epochs,
        steps_per_epoch=data.steps_per_epoch,
        callbacks=[*callbacks, trace, keras.callbacks.TerminateOnNaN()],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    final = trace.accuracy()
    result = {
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "scope": scope,
        "recipe": r | {"epochs": epochs},
        "total_steps": total,
        "window": {"begin_step": 0, "end_step": end, "frequency_steps": freq},
        "final_acc": final,
        "epoch_acc": trace.epochs,
        "best_epoch_acc": max(trace.epochs) if trace.epochs else None,
        "final_loss": float(history.history["loss"][-1]),
        "updates": trace.rows,
        "seconds": round(seconds, 2),
        "budget_targets": budget_targets,
    }
    if method != "dense":
        report = kprune.sparsity_report(model)
        result["layers"] = {
            row["layer"]: {"total": row["total"], "nonzero": row["nonzero"],
                           "sparsity": row["sparsity"]}
            for row in report["layers"] if row.get("wrapped")
        }  # fmt: skip
        result["global_sparsity"] = report["pruned"]["sparsity"]
        result["dead_units"] = dead_units(kprune.get_masks(model))
    if not quiet:
        print(
            f"  {method:10s} s={sparsity:.2f} seed={seed} {scope:6s} acc={final * 100:6.2f} "
            f"best-epoch={max(trace.epochs) * 100:6.2f} ({seconds:.1f}s)",
            flush=True,
        )
    return result


# -- summaries ---------------------------------------------------------------------------------
def summarize_trace(run, last=5):
    """The last `last` updates of a run: step, target, lr, removed fraction, accuracy."""
    return [
        (
            u["step"],
            u["target"],
            u["lr"],
            u["removed_of_survivors"],
            u["acc_before"],
            u["acc_after"],
        )
        for u in run["updates"][-last:]
    ]


def trough(run):
    """Lowest post-update accuracy in the second half of the ramp, and its step.

    The first half is left out: there the network is still learning from its random start.
    """
    late = [u for u in run["updates"] if u["step"] >= run["window"]["end_step"] / 2]
    if not late:
        return None, None
    worst = min(late, key=lambda u: u["acc_after"])
    return worst["acc_after"], worst["step"]


def mean_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values) * 100:.2f} [{min(values) * 100:.2f}-{max(values) * 100:.2f}]"


def print_table(runs, title):
    print(f"\n{title}")

    def key(r):
        return r["recipe_name"], r["method"], r["sparsity"], r["scope"]

    keys = sorted({key(r) for r in runs})
    print(f"{'recipe':16s} {'method':10s} {'sparsity':8s} {'final acc % mean [min-max]':28s} "
          f"{'lowest, 2nd half of ramp':26s} {'acc at window end':22s}")  # fmt: skip
    for name, method, sparsity, scope in keys:
        group = [r for r in runs if key(r) == (name, method, sparsity, scope)]
        lows = [trough(r)[0] for r in group]
        ends = [r["updates"][-1]["acc_after"] if r["updates"] else None for r in group]
        label = name if scope == "global" else f"{name}/{scope}"
        final = mean_spread([r["final_acc"] for r in group])
        print(
            f"{label:16s} {method:10s} {sparsity:<8.2f} {final:28s} "
            f"{mean_spread(lows):26s} {mean_spread(ends):22s}"
        )


# -- LeNet-5-Caffe divergence ------------------------------------------------------------------
def standardized_copy(data_path, directory):
    """The .npz as float32 standardized by the training mean/std (as tfds' mnist), in /tmp."""
    with np.load(data_path) as arrays:
        x_train = arrays["x_train"].astype(np.float32) / 255.0
        x_test = arrays["x_test"].astype(np.float32) / 255.0
        mean, std = float(x_train.mean()), float(x_train.std())
        path = os.path.join(directory, "standardized.npz")
        np.savez(path, x_train=(x_train - mean) / std, y_train=arrays["y_train"],
                 x_test=(x_test - mean) / std, y_test=arrays["y_test"])  # fmt: skip
    return path, mean, std


NAN_CONFIGS = {
    # name: overrides of the CLI defaults (batch 32, lr 0.05, SGD Nesterov 0.9, wd 1e-4, he_normal
    # kernels, uint8 / 255 input, cosine over 60 epochs).
    "cli_defaults": {},
    "batch100": {"batch_size": 100},
    "snip_recipe": {"batch_size": 100, "lr": 0.1, "nesterov": False},
    "snip_recipe_batch32": {"lr": 0.1, "nesterov": False},
    "no_nesterov": {"nesterov": False},
    "wd0": {"weight_decay": 0.0},
    "lr0.01": {"lr": 0.01},
    "init_glorot_uniform": {"init": "glorot_uniform"},
    "init_lecun_normal": {"init": "lecun_normal"},
    "input_standardized": {"standardized": True},
    "init_glorot_batch100_lr0.1": {"init": "glorot_uniform", "batch_size": 100, "lr": 0.1},
    "relu_after_convs": {"conv_relu": True},
    "clipnorm5": {"clipnorm": 5.0},
    "init_lecun_input_standardized": {"init": "lecun_normal", "standardized": True},
    # SNIP's code (namhoonlee/snip-public): input standardized by the training mean and std,
    # kernels from TF1's variance_scaling_initializer() (scale 1, fan-in, truncated normal,
    # i.e. lecun_normal), SGD momentum 0.9, lr 0.1, batch 100.
    # Pruned to 98% at step 0 (global magnitude, as a stand-in for SNIP's mask): do the
    # sparse networks that SNIP trains diverge like the dense one?
    "sparse98_at_init": {"sparse_at_init": 0.98},
    "sparse98_at_init_snip_recipe": {
        "sparse_at_init": 0.98,
        "batch_size": 100,
        "lr": 0.1,
        "nesterov": False,
    },
    "warmup_1epoch": {"warmup_epochs": 1.0},
    "warmup_1epoch_snip_recipe": {
        "warmup_epochs": 1.0,
        "batch_size": 100,
        "lr": 0.1,
        "nesterov": False,
    },
    "snip_code": {
        "init": "lecun_normal",
        "standardized": True,
        "batch_size": 100,
        "lr": 0.1,
        "nesterov": False,
    },
}


def lenet5(input_shape, num_classes, init, conv_relu):
    if not conv_relu:
        return models.lenet5_caffe(input_shape, num_classes, kernel_initializer=init)
    # The zoo's LeNet-5-Caffe with a ReLU after each convolution (the only change), to test
    # whether the activation-free convolutions are what lets the activations grow.
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(20, 5, activation="relu", kernel_initializer=init)(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(50, 5, activation="relu", kernel_initializer=init)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(500, activation="relu", kernel_initializer=init)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def nan_one(data_path, standardized_path, name, overrides, seed, steps):
    c = {"batch_size": 32, "lr": 0.05, "nesterov": True, "weight_decay": 1e-4,
         "init": "he_normal", "standardized": False, "conv_relu": False, "clipnorm": None,
         "sparse_at_init": None, "warmup_epochs": 0.0,
         **overrides}  # fmt: skip
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    path = standardized_path if c["standardized"] else data_path
    data = data_lib.load_dataset(f"npz:{path}", c["batch_size"], seed=seed)
    model = lenet5(data.input_shape, data.num_classes, c["init"], c["conv_relu"])
    if c["sparse_at_init"]:  # pruned in the first train step (before its update)
        model = kprune.prune(
            model, kprune.ConstantSparsity(c["sparse_at_init"], begin_step=0), scope="global"
        )
    for variable in model.trainable_variables:
        if c["weight_decay"]:
            variable.regularizer = keras.regularizers.L2(c["weight_decay"] / 2.0)
    total = 60 * data.steps_per_epoch  # the CLI's 60 epochs: the cosine barely moves early on
    lr = RampLR(c["lr"], total, "cosine", 0)
    if c["warmup_epochs"]:
        lr = Warmup(lr, round(c["warmup_epochs"] * data.steps_per_epoch))
    optimizer = keras.optimizers.SGD(
        lr, momentum=0.9, nesterov=c["nesterov"], clipnorm=c["clipnorm"]
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if c["sparse_at_init"]:
        kprune.bind_optimizer(model, optimizer)
    x_first, _ = next(iter(data.train_epochs(0)))
    logits0 = model(x_first, training=False).numpy()
    # Activation scale at init, layer by layer (std over the first batch).
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers[1:]])
    outputs = probe(x_first)
    scales = {layer.name: float(np.std(out)) for layer, out in zip(model.layers[1:], outputs)}

    @tf.function
    def step_fn(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, tf.linalg.global_norm(grads), tf.reduce_max(tf.abs(logits))

    losses, grad_norms, max_logits = [], [], []
    first_bad = None
    for i, (x, y) in enumerate(data.train_epochs(0).take(steps)):
        loss, gnorm, mlogit = (float(v) for v in step_fn(x, y))
        losses.append(loss)
        grad_norms.append(gnorm)
        max_logits.append(mlogit)
        if not math.isfinite(loss):
            first_bad = i
            break
    x_val, y_val = val_arrays(data)
    acc = None
    if first_bad is None:
        acc = float(np.mean(np.argmax(model(x_val, training=False).numpy(), -1) == y_val))
    finite = [v for v in losses if math.isfinite(v)]
    result = {
        "config": name,
        "overrides": overrides,
        "seed": seed,
        "first_nonfinite_step": first_bad,
        "steps_run": len(losses),
        "init_loss": losses[0],
        "init_max_abs_logit": float(np.max(np.abs(logits0))),
        "init_activation_std": scales,
        "max_grad_norm": max(g for g in grad_norms if math.isfinite(g)) if grad_norms else None,
        "max_abs_logit": max(m for m in max_logits if math.isfinite(m)) if max_logits else None,
        "first_grad_norms": grad_norms[:10],
        "first_losses": losses[:10],
        "last_finite_loss": finite[-1] if finite else None,
        "val_acc_after": acc,
    }
    print(
        f"  {name:28s} seed={seed} first non-finite step={first_bad} init loss={losses[0]:.3g} "
        f"init max|logit|={result['init_max_abs_logit']:.3g} "
        f"max grad norm={result['max_grad_norm']:.3g} "
        f"val acc={'-' if acc is None else f'{acc * 100:.1f}'}",
        flush=True,
    )
    return result


# -- the CLI itself ----------------------------------------------------------------------------
def cli_run(data_path, method, sparsity, seed, directory, extra=()):
    run_dir = os.path.join(directory, f"{method}-{sparsity}-{seed}")
    command = [sys.executable, "-m", "kprune.train", f"--dataset=npz:{data_path}",
               "--epochs=20", "--batch_size=100", f"--method={method}",
               f"--target_sparsity={sparsity}", f"--seed={seed}", f"--model_dir={run_dir}",
               "--progress=none", *extra]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    return {"command": " ".join(command[1:]), "test_accuracy": results["test_accuracy"],
            "best_test_accuracy": results.get("best_test_accuracy")}  # fmt: skip


def rounded(value, digits=6):
    """`value` with every float rounded to `digits` significant digits (smaller JSON)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def write_json(path, results):
    """One line per run (the runs hold every mask update), the rest indented."""
    results = rounded(results)
    lists = {k: results.pop(k) for k in ("runs", "nan", "cli_check")}
    text = json.dumps(results, indent=1, default=str)[:-2]
    for key, rows in lists.items():
        body = ",\n".join("  " + json.dumps(row, default=str) for row in rows)
        text += f',\n "{key}": [\n{body}\n ]' if rows else f',\n "{key}": []'
    with open(path, "w") as f:
        f.write(text + "\n}\n")


# -- markdown tables of saved results ----------------------------------------------------------
def _pct(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0] * 100:.{digits}f}"
    low, high = min(values) * 100, max(values) * 100
    return f"{np.mean(values) * 100:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _removed_late(run, fraction=0.1):
    """Fraction of the weights alive at 90% of the window that the last 10% removed."""
    end = run["window"]["end_step"]
    late = [u for u in run["updates"] if u["step"] > (1 - fraction) * end]
    if not late:
        return None
    return 1 - late[-1]["kept_after"] / late[0]["kept_before"]


def markdown(paths):
    runs, nan, cli = [], [], []
    for path in paths:
        with open(path) as f:
            loaded = json.load(f)
        runs += loaded["runs"]
        nan += loaded["nan"]
        cli += loaded["cli_check"]
    lines = []
    dense = [r["final_acc"] for r in runs if r["method"] == "dense"]
    if dense:
        lines += [f"Dense: {_pct(dense)} (mean (min-max) over {len(dense)} seeds)", ""]

    def key(r):
        scope = "erk" if r["recipe"].get("budget") == "erk" else r["scope"]
        return r["recipe_name"], scope, r["sparsity"], r["method"]

    groups = {}
    for r in runs:
        if r["method"] != "dense":
            groups.setdefault(key(r), []).append(r)
    lines += [
        "| recipe | scope | sparsity | method | seeds | final | best epoch | before last update "
        "| after last update | lr at last update | removed by last update | removed in last 10% "
        "of window |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, scope, sparsity, method), group in sorted(groups.items()):
        last = [g["updates"][-1] for g in group]
        lines.append(
            f"| {name} | {scope} | {sparsity:.2f} | {method} | {len(group)} "
            f"| {_pct([g['final_acc'] for g in group])} "
            f"| {_pct([g['best_epoch_acc'] for g in group])} "
            f"| {_pct([u['acc_before'] for u in last])} | {_pct([u['acc_after'] for u in last])} "
            f"| {np.mean([u['lr'] for u in last]):.4f} "
            f"| {_pct([u['removed_of_survivors'] for u in last], 1)} "
            f"| {_pct([_removed_late(g) for g in group], 1)} |"
        )
    lines += ["", "| recipe | sparsity | linear | polynomial | linear - polynomial (per seed) "
              "| linear - dense mean |", "|---|---|---|---|---|---|"]  # fmt: skip
    dense_mean = np.mean(dense) if dense else None
    pairs = sorted({(n, sc, sp) for n, sc, sp, m in groups})
    for name, scope, sparsity in pairs:
        lin = {g["seed"]: g["final_acc"] for g in groups.get((name, scope, sparsity, "linear"), [])}
        poly = {
            g["seed"]: g["final_acc"] for g in groups.get((name, scope, sparsity, "polynomial"), [])
        }
        common = sorted(set(lin) & set(poly))
        diffs = [lin[s] - poly[s] for s in common]
        to_dense = (
            f"{(np.mean(list(lin.values())) - dense_mean) * 100:+.2f}"
            if lin and dense_mean is not None
            else "n/a"
        )
        label = name if scope == "global" else f"{name} ({scope})"
        diff_text = (
            f"{np.mean(diffs) * 100:+.2f} ({min(diffs) * 100:+.2f} to {max(diffs) * 100:+.2f})"
            if diffs
            else "n/a"
        )
        lines.append(
            f"| {label} | {sparsity:.2f} | {_pct(list(lin.values()))} "
            f"| {_pct(list(poly.values()))} | {diff_text} | {to_dense} |"
        )
    lines += ["", "| recipe | scope | sparsity | method | fc1 | fc2 | logits | fc1 units cut off "
              "| fc2 units cut off | classes with no incoming weight |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, scope, sparsity, method), group in sorted(groups.items()):
        if name not in ("cli", "erk", "hold", "hold_erk"):
            continue
        cells = []
        for layer in ("fc1", "fc2", "logits"):
            cells.append(_pct([g["layers"][layer]["sparsity"] for g in group], 1))
        cut = []
        for layer in ("fc1", "fc2"):
            # A unit with no incoming or no outgoing weight is cut off from the output.
            counts = [
                max(g["dead_units"][layer]["no_incoming"], g["dead_units"][layer]["no_outgoing"])
                for g in group
            ]
            cut.append(f"{np.mean(counts):.1f} (max {max(counts)})")
        classes = [g["dead_units"]["logits"]["no_incoming"] for g in group]
        lines.append(
            f"| {name} | {scope} | {sparsity:.2f} | {method} | {' | '.join(cells)} "
            f"| {cut[0]} | {cut[1]} | {np.mean(classes):.1f} (max {max(classes)}) |"
        )
    if nan:
        lines += ["", "| LeNet-5-Caffe configuration | diverged | first non-finite step | loss at "
                  "step 0 | gradient norm at step 0 | val. accuracy after the steps |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        configs = {}
        for r in nan:
            configs.setdefault(r["config"], []).append(r)
        for name, group in configs.items():
            bad = [
                g["first_nonfinite_step"] for g in group if g["first_nonfinite_step"] is not None
            ]
            lines.append(
                f"| {name} | {len(bad)}/{len(group)} | {', '.join(map(str, bad)) or '-'} "
                f"| {np.mean([g['init_loss'] for g in group]):.2f} "
                f"| {np.mean([g['first_grad_norms'][0] for g in group]):.1f} "
                f"| {_pct([g['val_acc_after'] for g in group], 1)} |"
            )
    for c in cli:
        lines.append(
            f"\nCLI `{c['command']}`: {c['test_accuracy'] * 100:.2f}; "
            f"rebuilt recipe: {c['rebuilt_final_acc'] * 100:.2f}"
        )
    print("\n".join(lines))


def main(argv):
    del argv
    if FLAGS.summarize:
        markdown(FLAGS.summarize)
        return
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    data_path = os.path.abspath(os.path.expanduser(FLAGS.data))
    seeds = [int(s) for s in FLAGS.seeds]
    out = {"environment": environment(), "data": os.path.basename(data_path),
           "flags": {k: FLAGS[k].value for k in ("seeds", "sparsities", "variant_sparsities",
                                                 "parts", "variants", "methods", "epochs",
                                                 "batch_size", "nan_steps")},
           "base_recipe": BASE, "recipes": RECIPES,
           "runs": [], "nan": [], "cli_check": []}  # fmt: skip
    start = time.perf_counter()

    def run(name, method, sparsity, seed, scope="global"):
        result = train_one(data_path, method, sparsity, seed, RECIPES[name], scope=scope)
        result["recipe_name"] = name
        out["runs"].append(result)

    if FLAGS.dense and ("trace" in FLAGS.parts or "variants" in FLAGS.parts):
        print("dense", flush=True)
        for seed in seeds:
            run("cli", "dense", 0.0, seed)
    if "trace" in FLAGS.parts:
        print("trace: CLI recipe", flush=True)
        for sparsity in map(float, FLAGS.sparsities):
            for method in FLAGS.methods:
                for seed in seeds:
                    run("cli", method, sparsity, seed)
    if "variants" in FLAGS.parts:
        for name in FLAGS.variants or list(RECIPES):
            print(f"variant {name}: {RECIPES[name]}", flush=True)
            for sparsity in map(float, FLAGS.variant_sparsities):
                if name == "cli" and "trace" in FLAGS.parts and str(sparsity) in FLAGS.sparsities:
                    continue
                for method in FLAGS.methods:
                    for seed in seeds:
                        run(name, method, sparsity, seed)
    if "layer" in FLAGS.parts:
        print("layer scope, CLI recipe", flush=True)
        for sparsity in map(float, FLAGS.variant_sparsities):
            for method in FLAGS.methods:
                for seed in seeds:
                    run("cli", method, sparsity, seed, scope="layer")
    if "nan" in FLAGS.parts:
        print("LeNet-5-Caffe: first non-finite loss", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            std_path, mean, std = standardized_copy(data_path, tmp)
            out["nan_input_stats"] = {"mean": mean, "std": std}
            for name in FLAGS.nan_configs or list(NAN_CONFIGS):
                overrides = NAN_CONFIGS[name]
                for seed in seeds:
                    out["nan"].append(
                        nan_one(data_path, std_path, name, overrides, seed, FLAGS.nan_steps)
                    )
    if "cli_check" in FLAGS.parts:
        print("CLI check: python -m kprune.train with the same settings", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for method, sparsity in (("linear", 0.98), ("polynomial", 0.98)):
                cli = cli_run(data_path, method, sparsity, seeds[0], tmp)
                mine = train_one(data_path, method, sparsity, seeds[0], RECIPES["cli"])
                cli["rebuilt_final_acc"] = mine["final_acc"]
                print(f"  {method} 98% seed {seeds[0]}: CLI {cli['test_accuracy'] * 100:.2f}, "
                      f"rebuilt {mine['final_acc'] * 100:.2f}", flush=True)  # fmt: skip
                out["cli_check"].append(cli)
    out["wall_time_s"] = round(time.perf_counter() - start, 1)
    if out["runs"]:
        print_table(out["runs"], "validation accuracy (mnist_dev, 800 images), %")
        for r in out["runs"]:
            if r["recipe_name"] == "cli" and r["method"] != "dense" and r["seed"] == seeds[0]:
                print(
                    f"\nlast updates, {r['method']} {r['sparsity']} {r['scope']} "
                    f"seed {r['seed']}: step target lr removed acc_before acc_after"
                )
                for row in summarize_trace(r):
                    print("   ", "  ".join(f"{v:.4g}" for v in row))
    print(f"\nwall time {out['wall_time_s']} s")
    if FLAGS.out:
        write_json(FLAGS.out, out)


if __name__ == "__main__":
    app.run(main)
