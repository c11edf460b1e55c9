"""Accuracy of channel pruning against dense training and unstructured pruning at equal params.

For every model and seed, one dense run, and for every fraction f of `--fractions`:

* "channel": `kprune.prune(model, LinearSparsity(0, f), granularity="channel",
  criterion="l1", scope="layer")`: every channel group loses round(f * size) of its channels,
  ramped linearly over the pruning window; after training `kprune.shrink()` builds the smaller
  plain model, which is evaluated on the test split (and must agree with the masked model);
* "weight": unstructured magnitude pruning (`granularity="weight"`, the CLI's default ERK
  budget) on the same linear schedule, whose final sparsity is chosen so that the nonzero
  kernel weights equal the kernel weights of that seed's shrunk channel model. Only the
  prunable kernels (Conv/Dense kernels: what `kprune.sparsity_report(...)["prunable"]`
  counts) are matched; biases and BatchNorm parameters are left out of the match on both
  sides (unstructured pruning keeps all of them; the shrunk model keeps those of its
  remaining channels). Both counts are in the JSON.

All runs of one seed start from the same initial weights and see the same batches, and all
use one recipe (`kprune.workflows.training.fit_and_evaluate`, the defaults of
configs/digits.flags): SGD with Nesterov momentum 0.9, batch 32, weight decay 1e-4, the model's
CLI learning rate (0.01 for lenet5_caffe, 0.05 otherwise), "hold_cosine" held until the end of
the pruning window (begin 0, end at 75% of training, an update every 1%) and cosine to 0 after
it. The dense run gets the same learning-rate curve, so the runs differ only in the masks.

Models (both on the bundled digits scaled to 28x28, as `tools/make_digits28.py` writes them,
1,438 train / 359 test images; the arrays are made in a temporary folder):

* "lenet5": `kprune.models.lenet5_caffe` (431,080 parameters);
* "vgg_small": the layout of `kprune.models.vgg_like` (thirteen 3x3 convolutions with
  BatchNorm and ReLU, five 2x2 max-poolings, fc + BatchNorm + ReLU, logits) at 1/`--vgg_divisor`
  of its width (8..64 filters and fc 64 at the default 8), so that it trains on 2 CPU cores.

Recorded per run: test accuracy (masked model, and shrunk model for "channel"), the largest
|logit| difference between the two, kernel and total parameters, MACs per image
(`kprune.structured.engine.macs_of` of the executed model: unstructured models run at dense
MACs), training time (first to last batch). The table shows mean [min-max] over the seeds.

Usage:
    python tools/structured_accuracy.py [--quick] [--json PATH] [--models lenet5,vgg_small]
        [--seeds 1,2,3] [--fractions 0.3,0.5,0.7] [--epochs 10] [--vgg_divisor 8]

`--quick` is a smoke test: lenet5, seed 1, f=0.5, 2 epochs on 256 training images.
Flags may also come from a file: --flagfile=PATH (one --name=value per line).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kprune  # noqa: E402
from kprune._internal.validate import check_at_least, check_between, check_choices  # noqa: E402
from kprune.data import digits_path, load_dataset  # noqa: E402
from kprune.experiment.config import MODEL_LEARNING_RATES  # noqa: E402
from kprune.models import lenet5_caffe  # noqa: E402
from kprune.models.vgg import _features  # noqa: E402
from kprune.reporting import sparsity_report  # noqa: E402
from kprune.structured import trace_channels  # noqa: E402
from kprune.structured.engine import macs_of  # noqa: E402
from kprune.workflows.gradual import pruning_window  # noqa: E402
from kprune.workflows.training import TrainConfig, fit_and_evaluate  # noqa: E402
from tools import cli  # noqa: E402
from tools.benchlib import environment, write_json  # noqa: E402
from tools.make_digits28 import to_mnist_layout  # noqa: E402

MODELS = ("lenet5", "vgg_small")
# The VGG-D convolutions of kprune.models.vgg_like ("M" = 2x2 max-pooling).
_VGG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_BN = {"momentum": 0.9, "epsilon": 1e-5}

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_bool("quick", False, "Smoke test: lenet5, 1 seed, f=0.5, 2 epochs.", flag_values=FLAGS)
flags.DEFINE_string(
    "json", "docs/bench/structured_accuracy.json", "Output JSON path.", flag_values=FLAGS
)
flags.DEFINE_list("models", list(MODELS), "Comma-separated model names.", flag_values=FLAGS)
flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds (model init and data order).", flag_values=FLAGS)
flags.DEFINE_list(
    "fractions", ["0.3", "0.5", "0.7"], "Fractions of channels removed.", flag_values=FLAGS
)
flags.DEFINE_integer("epochs", 10, "Epochs of every run (dense and pruned).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Batch size.", flag_values=FLAGS)
flags.DEFINE_integer("vgg_divisor", 8, "vgg_small's width is vgg_like's / this.", flag_values=FLAGS)
flags.DEFINE_string(
    "weight_budget", "erk", "Budget of the unstructured runs: erk, global, uniform.",
    flag_values=FLAGS,
)  # fmt: skip


def vgg_small(input_shape, num_classes, divisor=4):
    """vgg_like's layout (13 conv + BN + ReLU, 5 pools, fc + BN + ReLU) at 1/divisor width.

    Example:

    >>> model = vgg_small((28, 28, 1), 10, divisor=8)
    >>> model.get_layer("block1_conv1").filters, model.get_layer("fc1").units
    (8, 64)
    >>> model.count_params()
    237602
    """
    config = tuple(item if item == "M" else item // divisor for item in _VGG_D)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _features(inputs, config, "he_normal")
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(512 // divisor, kernel_initializer="he_normal", name="fc1")(x)
    x = keras.layers.BatchNormalization(**_BN, name="fc1_bn")(x)
    x = keras.layers.ReLU(name="fc1_relu")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg_small")


def build(name, data):
    if name == "lenet5":
        return lenet5_caffe(data.input_shape, data.num_classes)
    return vgg_small(data.input_shape, data.num_classes, FLAGS.vgg_divisor)


def write_digits28(path, train_limit=None):
    """The bundled digits in the 28x28 layout of tools/make_digits28.py, as an .npz file."""
    with np.load(digits_path()) as digits:
        arrays = {
            "x_train": to_mnist_layout(digits["x_train"][:train_limit]),
            "y_train": digits["y_train"][:train_limit],
            "x_test": to_mnist_layout(digits["x_test"]),
            "y_test": digits["y_test"],
        }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def kernel_params(model):
    """Nonzero Conv/Dense kernel weights (what `sparsity_report` calls prunable)."""
    return int(sparsity_report(model)["prunable"]["nonzero"])


def kernel_total(model):
    return int(sparsity_report(model)["prunable"]["total"])


def evaluate(model, data):
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return float(model.evaluate(data.test, return_dict=True, verbose=0)["accuracy"])


def logits(model, data):
    return np.concatenate([np.asarray(model(x, training=False)) for x, _ in data.test])


def one_run(name, data, seed, method, fraction, config, window, kernels_to_match=None):
    """Trains one model of `method` ("dense", "channel", "weight"); returns its row."""
    keras.utils.set_random_seed(seed)
    base = build(name, data)
    dense_kernels, dense_params = kernel_total(base), base.count_params()
    row = {"model": name, "seed": seed, "method": method, "fraction": fraction}
    if method == "dense":
        model, schedule = base, None
    elif method == "channel":
        schedule = kprune.LinearSparsity(
            0.0, fraction, window.begin_step, window.end_step, frequency=window.frequency
        )
        model = kprune.prune(base, schedule, granularity="channel", criterion="l1", scope="layer")
    else:
        sparsity = 1.0 - kernels_to_match / dense_kernels
        schedule = kprune.LinearSparsity(
            0.0, sparsity, window.begin_step, window.end_step, frequency=window.frequency
        )
        model = kprune.prune(base, schedule, budget=FLAGS.weight_budget)
        row["weight_sparsity"] = sparsity
    results = fit_and_evaluate(model, data, config, verbose=0)
    row.update(
        test_accuracy=results["test_accuracy"],
        fit_time_s=results["fit_time_s"],
        diverged=results["diverged"],
        total_steps=results["total_steps"],
    )
    if method == "channel":
        small = kprune.shrink(model)
        row["shrunk_test_accuracy"] = evaluate(small, data)
        row["max_logit_diff"] = float(np.max(np.abs(logits(model, data) - logits(small, data))))
        row["kernel_params"] = kernel_total(small)
        row["params"] = int(small.count_params())
        row["macs"] = macs_of(trace_channels(small))
    else:
        nonzero = kernel_params(model)
        row["kernel_params"] = nonzero
        # Zeros of unstructured pruning are not counted; biases and BatchNorm all remain.
        row["params"] = int(dense_params - (dense_kernels - nonzero))
        row["macs"] = macs_of(trace_channels(base))
    row["kernel_params_dense"], row["params_dense"] = dense_kernels, int(dense_params)
    row["macs_dense"] = macs_of(trace_channels(base))
    return row


def _spread(values):
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(rows):
    """One entry per (model, method, fraction): mean, min, max over the seeds."""
    keys = []
    for row in rows:
        key = (row["model"], row["method"], row["fraction"])
        if key not in keys:
            keys.append(key)
    out = []
    for model, method, fraction in keys:
        group = [
            r for r in rows if (r["model"], r["method"], r["fraction"]) == (model, method, fraction)
        ]
        out.append(
            {
                "model": model,
                "method": method,
                "fraction": fraction,
                "test_accuracy": _spread([r["test_accuracy"] for r in group]),
                "kernel_params": _spread([r["kernel_params"] for r in group]),
                "params": _spread([r["params"] for r in group]),
                "macs": _spread([r["macs"] for r in group]),
                "fit_time_s": _spread([r["fit_time_s"] for r in group]),
                "shrunk_equals_masked": all(
                    r.get("shrunk_test_accuracy", r["test_accuracy"]) == r["test_accuracy"]
                    for r in group
                ),
                "seeds": [r["seed"] for r in group],
            }
        )
    return out


def table(summary):
    lines = [
        f"{'model':<10} {'method':<8} {'f':>4} {'kernels':>9} {'params':>9} {'MACs':>10} "
        f"{'test acc % mean [min-max]':>27} {'fit s':>6}"
    ]
    for s in summary:
        acc = s["test_accuracy"]
        accuracy = f"{100 * acc['mean']:.2f} [{100 * acc['min']:.2f}-{100 * acc['max']:.2f}]"
        f = "-" if s["fraction"] is None else f"{s['fraction']:.1f}"
        lines.append(
            f"{s['model']:<10} {s['method']:<8} {f:>4} {s['kernel_params']['mean']:>9.0f} "
            f"{s['params']['mean']:>9.0f} {s['macs']['mean']:>10.0f} {accuracy:>27} "
            f"{s['fit_time_s']['mean']:>6.0f}"
        )
    return "\n".join(lines)


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    names = cli.checked(check_choices, "--models", [n for n in FLAGS.models if n], MODELS)
    try:
        seeds = [int(s) for s in FLAGS.seeds if s]
        fractions = [float(f) for f in FLAGS.fractions if f]
    except ValueError as err:
        raise cli.UsageError(f"--seeds and --fractions take numbers: {err}") from err
    if not seeds or not fractions:
        raise cli.UsageError("--seeds and --fractions need at least one value each.")
    for seed in seeds:
        cli.checked(check_at_least, "--seeds", seed, 0)
    for fraction in fractions:
        cli.checked(check_between, "--fractions", fraction, 0, 1)
    cli.checked(check_at_least, "--epochs", FLAGS.epochs, 2)
    cli.checked(check_at_least, "--batch_size", FLAGS.batch_size, 1)
    cli.checked(check_at_least, "--vgg_divisor", FLAGS.vgg_divisor, 1)
    cli.checked(
        check_choices, "--weight_budget", [FLAGS.weight_budget], ("erk", "global", "uniform")
    )
    epochs, train_limit = FLAGS.epochs, None
    if FLAGS.quick:
        names, seeds, fractions, epochs, train_limit = ("lenet5",), seeds[:1], [0.5], 2, 256

    rows, started = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits28.npz")
        write_digits28(path, train_limit)
        for name in names:
            lr = MODEL_LEARNING_RATES.get({"lenet5": "lenet5_caffe"}.get(name, name), 0.05)
            for seed in seeds:
                data = load_dataset(f"npz:{path}", FLAGS.batch_size, seed=seed)
                window = pruning_window(epochs * data.steps_per_epoch, end=0.75, frequency=0.01)
                config = TrainConfig(
                    epochs=epochs,
                    optimizer="sgd",
                    learning_rate=lr,
                    momentum=0.9,
                    nesterov=True,
                    lr_schedule="hold_cosine",
                    lr_hold_end_step=window.end_step,
                    weight_decay=1e-4,
                    eval_every_epoch=False,
                )
                plan = [("dense", None)] + [("channel", f) for f in fractions]
                for method, fraction in plan:
                    new = [one_run(name, data, seed, method, fraction, config, window)]
                    if method == "channel":
                        match = new[0]["kernel_params"]
                        new.append(
                            one_run(name, data, seed, "weight", fraction, config, window, match)
                        )
                    for r in new:
                        print(
                            f"[{time.time() - started:6.0f}s] {name} seed {seed} {r['method']} "
                            f"{fraction}: acc {r['test_accuracy']:.4f}, "
                            f"{r['kernel_params']} kernels, fit {r['fit_time_s']:.0f}s",
                            flush=True,
                        )
                    rows += new
                settings = {
                    "quick": FLAGS.quick,
                    "epochs": epochs,
                    "batch_size": FLAGS.batch_size,
                    "train_images": data.train_size,
                    "test_images": data.test_size,
                    "steps_per_epoch": data.steps_per_epoch,
                    "window": {
                        "begin_step": window.begin_step,
                        "end_step": window.end_step,
                        "frequency": window.frequency,
                    },
                    "optimizer": "SGD, Nesterov momentum 0.9",
                    "learning_rate": {
                        n: MODEL_LEARNING_RATES.get(n, 0.05) for n in ("lenet5_caffe", "vgg_small")
                    },
                    "lr_schedule": "hold_cosine, held to the window's end (dense too)",
                    "weight_decay": 1e-4,
                    "channel": "LinearSparsity, criterion l1, scope layer",
                    "weight": f"LinearSparsity, magnitude, budget {FLAGS.weight_budget}, "
                    "nonzero kernels = shrunk model's kernels",
                    "vgg_divisor": FLAGS.vgg_divisor,
                    "seeds": seeds,
                    "fractions": fractions,
                }
                # After every seed, so a long run leaves what it has measured.
                write_json(
                    FLAGS.json,
                    {
                        "benchmark": "structured_accuracy",
                        "complete": False,
                        "settings": settings,
                        "runs": rows,
                        "summary": summarize(rows),
                        **environment(),
                    },
                )
    summary = summarize(rows)
    payload = {
        "benchmark": "structured_accuracy",
        "complete": True,
        "settings": settings,
        "runs": rows,
        "summary": summary,
        "wall_s": round(time.time() - started, 1),
        **environment(),
    }
    write_json(FLAGS.json, payload)
    print(table(summary))
    print(f"wrote {FLAGS.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
