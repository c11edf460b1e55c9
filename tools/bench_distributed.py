"""Step time and images/s of dense and pruned models on 1 and 2 replicas (tf.distribute).

For each model, four variants are trained on the same random batch (global batch `--batch`):
dense and pruned (kprune global magnitude pruning, past its last mask update, so the timed
steps are ordinary steps), each on 1 replica (TensorFlow's default strategy on the first
device, what `--strategy=auto` gives on one device) and on 2 replicas (`MirroredStrategy`, what
`--strategy=mirrored` gives). Keras' default `jit_compile="auto"` applies: XLA on a GPU with the
default strategy, off under `MirroredStrategy` and on CPUs; the JSON records it. All four live
in one process and are timed in interleaved stretches (1-dense, 1-pruned, 2-dense, 2-pruned,
repeated) after warm-up, so the drifts of a shared machine hit them alike; the table gives
median step times, images/s (global batch / step time), and the median (min-max) over rounds
of the pruned/dense ratio on each replica count and of the 2-replica/1-replica ratio.
Mask-update steps (a schedule that updates at every step) are timed separately.

Devices:
    --devices=cpu (default without GPUs): the CPU is split into 2 logical devices. They share
        the same cores, so 2 replicas measure the cost of the distribution machinery
        (per-replica steps, all-reduce, cross-replica mask updates), not a speed-up.
    --devices=gpu: 1 replica on GPU:0; 2 replicas on GPU:0 and GPU:1 when there are two or more
        GPUs (otherwise the 2-replica variants are left out and said so). With --devices=cpu on a
        GPU machine the GPUs are hidden.

Usage:
    python tools/bench_distributed.py --quick                       # smoke run, ~1 min on 2 cores
    python tools/bench_distributed.py --devices=gpu --models=vgg19,resnet18 --batch=128

Flags may also come from a file: --flagfile=PATH (one --name=value per line).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kprune._internal.validate import check_choices  # noqa: E402
from tools import cli  # noqa: E402

# name: (builder name in kprune.models, input shape, classes)
MODELS = {
    "lenet300": ("lenet300_100", (28, 28, 1), 10),
    "vgg19": ("vgg19", (32, 32, 3), 10),
    "resnet18": ("resnet18", (32, 32, 3), 10),
}

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_bool("quick", False, "lenet300, few steps (smoke run).", flag_values=FLAGS)
flags.DEFINE_enum(
    "devices", None, ["cpu", "gpu"], "Default: gpu if TensorFlow sees one.", flag_values=FLAGS
)
flags.DEFINE_list(
    "models", None, "Comma-separated: " + ",".join(MODELS) + " (default all).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "batch", None, "Global batch (default 128; 64 with --quick).", flag_values=FLAGS
)
flags.DEFINE_enum(
    "mixed_precision", "off", ["off", "float16", "bfloat16"], "Compute dtype.", flag_values=FLAGS
)
flags.DEFINE_string("json", "bench_distributed.json", "Output JSON path.", flag_values=FLAGS)


def configure_devices(kind):
    """Returns the device names of the 1- and 2-replica variants (before TF initializes)."""
    if kind == "cpu":
        tf.config.set_visible_devices([], "GPU")
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
    else:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not names:
            raise SystemExit("--devices=gpu: TensorFlow sees no GPU.")
    return names[:1], names[:2] if len(names) >= 2 else None


def build(strategy, name, batch, pruned, every_step=False):
    """`(run, jit_compile)`: `run(n)` trains a compiled dense or pruned model `n` steps."""
    import keras

    import kprune
    from kprune import models

    builder, shape, classes = MODELS[name]
    rng = np.random.default_rng(0)
    data = (
        rng.normal(size=(batch, *shape)).astype("float32"),
        rng.integers(0, classes, size=batch).astype("int32"),
    )
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = getattr(models, builder)(shape, classes)
        if pruned:
            # Ordinary steps: one update at step 0, the next far beyond the timed steps.
            frequency = 1 if every_step else 10**5
            schedule = kprune.LinearSparsity(0.5, 0.9, 0, 10**6, frequency=frequency)
            model = kprune.prune(model, schedule, scope="global")
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.optimizer.build(model.trainable_variables)
        if pruned:
            kprune.bind_optimizer(model, model.optimizer)
        dataset = tf.data.Dataset.from_tensors(data).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        model.make_train_function()

    def run(n):
        for _ in range(n):
            model.train_function(iterator)
        model.optimizer.iterations.numpy()  # wait for the last step

    return run, bool(model.jit_compile)


def _summary(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def bench_model(name, batch, strategies, quick):
    variants, jit = {}, {}
    for replicas, strategy in strategies.items():
        for kind in ("dense", "pruned"):
            run, jit[f"{replicas}-{kind}"] = build(strategy, name, batch, pruned=kind == "pruned")
            variants[(replicas, kind)] = run
    warmup, reps, rounds = (3, 5, 3) if quick else (10, 20, 7)
    for run in variants.values():
        run(warmup)
    times = {key: [] for key in variants}
    for _ in range(rounds):
        for key, run in variants.items():
            start = time.perf_counter()
            run(reps)
            times[key].append((time.perf_counter() - start) / reps)
    result = {
        "batch": batch,
        "rounds": rounds,
        "steps_per_stretch": reps,
        "jit_compile": jit,
        "replicas": {},
    }
    for replicas in strategies:
        dense, pruned = times[(replicas, "dense")], times[(replicas, "pruned")]
        update, _ = build(strategies[replicas], name, batch, pruned=True, every_step=True)
        update(2)
        n_update = 3 if quick else 10
        start = time.perf_counter()
        update(n_update)
        update_ms = 1000 * (time.perf_counter() - start) / n_update
        result["replicas"][str(replicas)] = {
            "dense_ms": 1000 * statistics.median(dense),
            "pruned_ms": 1000 * statistics.median(pruned),
            "dense_images_per_s": batch / statistics.median(dense),
            "pruned_images_per_s": batch / statistics.median(pruned),
            "pruned_over_dense": _summary([p / d for p, d in zip(pruned, dense)]),
            "update_step_ms": update_ms,
        }
    if len(strategies) == 2:
        for kind in ("dense", "pruned"):
            result[f"{kind}_2_over_1"] = _summary(
                [b / a for a, b in zip(times[(1, kind)], times[(2, kind)])]
            )
    return result


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    kind = FLAGS.devices or ("gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    names = FLAGS.models or (["lenet300"] if FLAGS.quick else list(MODELS))
    names = cli.checked(check_choices, "--models", names, MODELS, "model(s)")
    batch = FLAGS.batch or (64 if FLAGS.quick else 128)
    if batch < 2 or batch % 2:
        raise cli.UsageError(f"--batch must be even (split over 2 replicas). Received: {batch}")
    one, two = configure_devices(kind)

    import keras

    from tools.benchlib import environment, write_json

    if FLAGS.mixed_precision != "off":
        keras.mixed_precision.set_dtype_policy(f"mixed_{FLAGS.mixed_precision}")
    strategies = {1: tf.distribute.get_strategy()}  # places ops on the first device
    if two is not None:
        strategies[2] = tf.distribute.MirroredStrategy(two)
    else:
        print(f"only one {kind.upper()} device: the 2-replica variants are left out")
    results = {}
    print(
        f"{'model':<9} {'repl':>4} {'dense ms':>9} {'pruned ms':>10} {'img/s dense':>12} "
        f"{'img/s pruned':>13} {'pruned/dense (min-max)':>24} {'update ms':>10}"
    )
    for name in names:
        r = bench_model(name, batch, strategies, FLAGS.quick)
        results[name] = r
        for replicas, row in r["replicas"].items():
            ratio = row["pruned_over_dense"]
            print(
                f"{name:<9} {replicas:>4} {row['dense_ms']:>9.2f} {row['pruned_ms']:>10.2f} "
                f"{row['dense_images_per_s']:>12.0f} {row['pruned_images_per_s']:>13.0f} "
                f"{ratio['median']:>8.3f} ({ratio['min']:.3f}-{ratio['max']:.3f}) "
                f"{row['update_step_ms']:>10.1f}",
                flush=True,
            )
        if "dense_2_over_1" in r:
            d, p = r["dense_2_over_1"], r["pruned_2_over_1"]
            print(
                f"{name:<9} 2 vs 1 replica step time: dense {d['median']:.3f} "
                f"({d['min']:.3f}-{d['max']:.3f}), pruned {p['median']:.3f} "
                f"({p['min']:.3f}-{p['max']:.3f})"
            )
    payload = {
        "benchmark": "bench_distributed",
        "settings": {
            "quick": FLAGS.quick,
            "devices": kind,
            "replica_devices": {"1": one, "2": two},
            "strategies": {"1": "default", "2": "MirroredStrategy" if two else None},
            "global_batch": batch,
            "mixed_precision": FLAGS.mixed_precision,
            "data": "one random batch, repeated",
            "optimizer": "SGD(0.01, momentum=0.9)",
            "pruning": "LinearSparsity(0.5, 0.9), global scope; timed steps update no mask",
            "jit_compile": "auto (Keras default)",
        },
        "models": results,
        **environment(),
    }
    write_json(FLAGS.json, payload)
    print(f"wrote {FLAGS.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
