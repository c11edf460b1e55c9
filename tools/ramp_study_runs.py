"""Issue 14 study, the LeNet-300-100 runs: recipes, schedules, callbacks, one run, summaries.

`train_one` trains LeNet-300-100 with the CLI's recipe rebuilt from plain Keras and kprune's
public API, varied by a recipe of `RECIPES`, and records the validation accuracy around every
mask update (`Trace`). `epochs` and `batch_size` come from tools/ramp_study.py's `--epochs` and
`--batch_size` (the flags live with the entry point). tools/ramp_study_nan.py reuses the
learning-rate schedules and `val_arrays`.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

import kprune
from kprune import api, models
from kprune import data as data_lib

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
        api.apply_masks(self.model)  # since the 17-name top level, in kprune.api


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


def train_one(
    data_path,
    method,
    sparsity,
    seed,
    recipe,
    *,
    epochs=20,
    batch_size=100,
    scope="global",
    quiet=False,
):
    """One run of LeNet-300-100 with `recipe`; returns a dict of results.

    `epochs` is the base recipe's (a recipe's own "epochs" overrides it; the pruning window of
    "end_steps_of_base" stays the base's in steps).
    """
    r = {**BASE, **recipe}
    base_epochs = epochs
    epochs = r["epochs"] or base_epochs
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    data = data_lib.load_dataset(f"npz:{data_path}", batch_size, seed=seed)
    total = epochs * data.steps_per_epoch
    base_total = base_epochs * data.steps_per_epoch
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
