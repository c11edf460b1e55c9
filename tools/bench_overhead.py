"""Train-step overhead of pruning: dense model vs the same model wrapped by kprune.

For each model, a dense copy and a pruned copy (global LinearSparsity, updates rare enough
that the timed steps are ordinary steps) are compiled the same way (Keras defaults, XLA on)
and trained on the same random batch. Their train functions are timed in interleaved
stretches after warm-up; the table shows median step times and the median (min-max) of the
pairwise pruned/dense ratios. Mask-update steps (selection + writes) are timed separately
with a schedule that updates at every step.

Usage:
    python tools/bench_overhead.py [--quick] [--json PATH] [--models lenet300,vgg_like,resnet18]

Flags may also come from a file: --flagfile=PATH (one --name=value per line).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kprune  # noqa: E402
from kprune._internal.validate import check_choices  # noqa: E402
from tools import cli  # noqa: E402
from tools.benchlib import environment, interleaved_ratio, write_json  # noqa: E402

try:
    from kprune.models import lenet300_100, resnet18, vgg_like
except ImportError as error:  # pragma: no cover - only before the model zoo exists
    raise SystemExit(f"bench_overhead needs kprune.models ({error}).") from error

MODELS = {
    # name: (builder, input shape, classes, batch)
    "lenet300": (lenet300_100, (28, 28, 1), 10, 64),
    "vgg_like": (vgg_like, (32, 32, 3), 10, 16),
    "resnet18": (resnet18, (32, 32, 3), 10, 16),
}

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_bool("quick", False, "Few steps (< 5 min on 2 cores).", flag_values=FLAGS)
flags.DEFINE_string("json", "bench_overhead.json", "Output JSON path.", flag_values=FLAGS)
flags.DEFINE_list("models", list(MODELS), "Comma-separated model names.", flag_values=FLAGS)


def compiled(model):
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def stepper(model, batch):
    """A function running `n` train steps of `model` on `batch`, synchronously."""
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(dataset)
    model.make_train_function()

    def run(n):
        for _ in range(n):
            model.train_function(iterator)
        model.optimizer.iterations.numpy()  # wait for the last step

    return run


def bench_model(name, quick):
    builder, shape, classes, batch_size = MODELS[name]
    rng = np.random.default_rng(0)
    batch = (
        rng.normal(size=(batch_size, *shape)).astype("float32"),
        rng.integers(0, classes, size=batch_size).astype("int32"),
    )
    keras.utils.set_random_seed(0)
    base = builder(shape, classes)
    dense = compiled(keras.models.clone_model(base))
    dense.set_weights(base.get_weights())
    # Ordinary steps: one update at step 0, the next far beyond the timed steps.
    schedule = kprune.LinearSparsity(0.5, 0.9, begin_step=0, end_step=10**6, frequency=10**5)
    pruned = compiled(kprune.prune(base, schedule, scope="global"))
    kprune.bind_optimizer(pruned, pruned.optimizer)
    run_dense, run_pruned = stepper(dense, batch), stepper(pruned, batch)
    warmup = 3 if quick else 10
    run_dense(warmup)
    run_pruned(warmup)
    reps, pairs = (5, 3) if quick else (20, 7)
    result = interleaved_ratio(run_dense, run_pruned, pairs=pairs, reps=reps)

    # Mask-update steps: a schedule that updates at every step.
    every = kprune.LinearSparsity(0.5, 0.9, begin_step=0, end_step=10**6, frequency=1)
    updating = compiled(kprune.prune(base, every, scope="global"))
    kprune.bind_optimizer(updating, updating.optimizer)
    run_updating = stepper(updating, batch)
    run_updating(2)
    start = time.perf_counter()
    n_update = 3 if quick else 10
    run_updating(n_update)
    update_ms = 1000 * (time.perf_counter() - start) / n_update
    n_pruned = kprune.sparsity_report(pruned)["pruned"]["total"]
    return {
        "batch": batch_size,
        "input_shape": list(shape),
        "prunable_weights": n_pruned,
        "dense_ms": result["a_ms"],
        "pruned_ms": result["b_ms"],
        "ratio": result["ratio_median"],
        "ratio_min": result["ratio_min"],
        "ratio_max": result["ratio_max"],
        "pairs": result["pairs"],
        "steps_per_stretch": result["steps_per_stretch"],
        "update_step_ms": update_ms,
    }


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    names = cli.checked(
        check_choices, "--models", [n for n in FLAGS.models if n], MODELS, "model(s)"
    )
    results = {}
    print(
        f"{'model':<10} {'batch':>5} {'dense ms':>9} {'pruned ms':>10} {'ratio':>6} "
        f"{'(min-max)':>13} {'update ms':>10}"
    )
    for name in names:
        r = bench_model(name, FLAGS.quick)
        results[name] = r
        print(
            f"{name:<10} {r['batch']:>5} {r['dense_ms']:>9.2f} {r['pruned_ms']:>10.2f} "
            f"{r['ratio']:>6.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) "
            f"{r['update_step_ms']:>10.1f}",
            flush=True,
        )
    payload = {
        "benchmark": "bench_overhead",
        "settings": {
            "quick": FLAGS.quick,
            "jit_compile": "auto (Keras default)",
            "optimizer": "SGD(0.01, momentum=0.9)",
            "scope": "global",
        },
        "models": results,
        **environment(),
    }
    write_json(FLAGS.json, payload)
    print(f"wrote {FLAGS.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
