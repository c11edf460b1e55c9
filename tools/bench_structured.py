"""Params, MACs and speed of dense vs channel-shrunk models (issue 13, item 6).

Models: ResNet-18 and VGG-19 of `kprune.models` (CIFAR, 32x32x3) and `keras.applications`
MobileNetV2 (alpha 1.0, `--mobilenet_size`, 224x224x3 by default), random initial weights
(speed does not depend on training). For each model and each fraction of `--fractions`, a
"shrunk" model with that fraction of the output channels of every convolution and hidden dense
layer removed is built by `make_shrunk`. Per variant:

    params, MACs      `kprune.structured.macs.count_macs` (batch 1), and their ratio to dense
    LiteRT latency    float32 TFLite file, XNNPACK, batch 1, 1 and `--threads` threads; the
                      variants of a model are timed in interleaved stretches after warm-up
                      (tools/bench_tflite.py's `time_variants`), median per invoke and the
                      median (min-max) of the per-stretch ratio to dense
    Keras predict     `predict_on_batch` at `--predict_batch` images, images/s; each shrunk
                      variant interleaved with dense (tools/benchlib.py's `interleaved_ratio`)

The goals of the issue at 50% of channels removed (latency <= 0.40x dense for ResNet-18, 0.35x
for VGG-19, 0.55x for MobileNetV2) are checked and printed, not enforced.

Until `kprune.shrink()` exists, `make_shrunk` builds the same architecture with fewer channels
(the shapes shrink() produces for a uniform fraction per channel group); the JSON says which
one ran (`shrunk_by`).

    nice -n 10 python tools/bench_structured.py --json=docs/bench/bench_structured.json
    python tools/bench_structured.py --quick --models=tiny   # smoke run, seconds

Flags may also come from a file: --flagfile=PATH (one --name=value per line).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types
from pathlib import Path

from absl import flags

# Run from a checkout without installing: the repository root holds the kprune package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kprune._internal.validate import check_at_least, check_between, check_choices  # noqa: E402
from tools import cli  # noqa: E402
from tools.bench_tflite import time_variants  # noqa: E402
from tools.benchlib import environment, interleaved_ratio, write_json  # noqa: E402

MODELS = ("resnet18", "vgg19", "mobilenet_v2", "tiny")
DEFAULT_MODELS = ("resnet18", "vgg19", "mobilenet_v2")
# Latency goals of issue 13 at 50% of channels removed (shrunk / dense, checked, not enforced).
GOAL_FRACTION = 0.5
GOALS = {"resnet18": 0.40, "vgg19": 0.35, "mobilenet_v2": 0.55}
# What `make_shrunk` does; the lead sets this to the real thing with the swap (see there).
SHRUNK_BY = "kprune.prune(granularity='channel', L1) + kprune.shrink()"
DENSE = "dense_fp32"  # time_variants' name for the reference variant

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_list("models", list(DEFAULT_MODELS), f"Subset of {MODELS}.", flag_values=FLAGS)
flags.DEFINE_list(
    "fractions",
    ["0.3", "0.5", "0.7"],
    "Fractions of channels removed, in (0, 1).",
    flag_values=FLAGS,
)
flags.DEFINE_integer("threads", 2, "Threads of the second LiteRT timing.", flag_values=FLAGS)
flags.DEFINE_integer("runs", 300, "Timed LiteRT invokes per variant.", flag_values=FLAGS)
flags.DEFINE_integer("stretch", 20, "Invokes per timed stretch.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 30, "Untimed invokes per interpreter.", flag_values=FLAGS)
flags.DEFINE_integer("predict_batch", 64, "Batch of the Keras predict timing.", flag_values=FLAGS)
flags.DEFINE_integer(
    "predict_pairs", 5, "Interleaved dense/shrunk stretches of predict.", flag_values=FLAGS
)
flags.DEFINE_integer("predict_reps", 2, "predict_on_batch calls per stretch.", flag_values=FLAGS)
flags.DEFINE_integer("mobilenet_size", 224, "MobileNetV2 input side (>= 96).", flag_values=FLAGS)
flags.DEFINE_bool("no_xnnpack", False, "Builtin LiteRT kernels only.", flag_values=FLAGS)
flags.DEFINE_bool("quick", False, "Smoke run (few runs, small predict batch).", flag_values=FLAGS)
flags.DEFINE_string("json", "bench_structured.json", "Output JSON path.", flag_values=FLAGS)


def parse_args(argv):
    """The settings of a run from the command line (`--quick` shrinks the runs)."""
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    args = types.SimpleNamespace(**FLAGS.flag_values_dict())
    models = [m.strip() for m in args.models if m.strip()]
    args.models = list(cli.checked(check_choices, "--models", models, MODELS, "model(s)"))
    fractions = []
    for text in args.fractions:
        try:
            value = float(text)
        except ValueError:
            raise cli.UsageError(
                f"--fractions takes numbers in (0, 1). Received: --fractions="
                f"{','.join(args.fractions)}"
            ) from None
        fractions.append(cli.checked(check_between, "--fractions", value, 0, 1))
    if not fractions:
        raise cli.UsageError("--fractions needs at least one fraction in (0, 1).")
    args.fractions = sorted(set(fractions))
    for name in ("threads", "runs", "stretch", "predict_batch", "predict_pairs", "predict_reps"):
        cli.checked(check_at_least, f"--{name}", getattr(args, name), 1)
    cli.checked(check_at_least, "--warmup", args.warmup, 0)
    cli.checked(check_at_least, "--mobilenet_size", args.mobilenet_size, 96)
    if args.quick:
        args.runs, args.stretch, args.warmup = 20, 5, 3
        args.predict_batch, args.predict_pairs, args.predict_reps = 8, 2, 1
    return args


def build_model(name, args):
    """The dense model of `name`, seeded, built for its input shape."""
    import keras

    keras.utils.set_random_seed(0)
    if name == "resnet18":
        from kprune.models import resnet18

        return resnet18((32, 32, 3), 10)
    if name == "vgg19":
        from kprune.models import vgg19

        return vgg19((32, 32, 3), 10)
    if name == "mobilenet_v2":
        size = args.mobilenet_size
        return keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=1.0, weights=None, classes=1000
        )
    # tiny: a residual CNN for the smoke test (a coupled Add, a depthwise conv, a classifier).
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inputs)))
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.BatchNormalization()(layers.Conv2D(16, 1)(y))
    x = layers.GlobalAveragePooling2D()(layers.Add()([x, y]))
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="tiny")


# Layer classes whose width `make_shrunk` scales (their "filters" or "units"); depthwise convs,
# BatchNorm and the rest follow the width of their input by themselves.
_WIDTH_KEYS = {
    "Conv1D": "filters",
    "Conv2D": "filters",
    "Conv3D": "filters",
    "SeparableConv1D": "filters",
    "SeparableConv2D": "filters",
    "Conv1DTranspose": "filters",
    "Conv2DTranspose": "filters",
    "Conv3DTranspose": "filters",
    "Dense": "units",
}


def kept(width, fraction):
    """Channels left when `round(fraction * width)` are removed (round half to even, as the
    engine counts), at least one.

    >>> kept(64, 0.5), kept(64, 0.3), kept(3, 0.7)
    (32, 45, 1)
    """
    return max(1, width - round(fraction * width))


def make_shrunk(model, fraction):
    """`model` with `fraction` of the channels of every channel group removed, by shrink().

    `kprune.prune(..., granularity="channel")` with a constant schedule, one mask update (L1
    of the weights as they are: speed does not depend on which channels go), then
    `kprune.shrink()`. The model's inputs and outputs keep their width; coupled layers (both
    sides of an `Add`) lose the same channels.
    """
    import keras
    import tensorflow as tf

    import kprune

    pruned = kprune.prune(model, kprune.ConstantSparsity(fraction), granularity="channel")
    for group in kprune.bind_optimizer(pruned, keras.optimizers.SGD()):
        group.update(tf.constant(fraction, tf.float64))
    return kprune.shrink(pruned)


def variant_name(fraction):
    return f"shrunk_{round(100 * fraction)}"


def time_predict(dense, shrunk, x, args):
    """Interleaved Keras predict_on_batch timing of dense vs one shrunk model."""

    def runner(model):
        def run(n):
            for _ in range(n):
                model.predict_on_batch(x)

        return run

    run_dense, run_shrunk = runner(dense), runner(shrunk)
    run_dense(2)  # trace and warm up both
    run_shrunk(2)
    result = interleaved_ratio(
        run_dense, run_shrunk, pairs=args.predict_pairs, reps=args.predict_reps
    )
    result["batch"] = args.predict_batch
    result["dense_images_per_s"] = args.predict_batch / (result["a_ms"] / 1e3)
    result["shrunk_images_per_s"] = args.predict_batch / (result["b_ms"] / 1e3)
    return result


def bench_model(name, args):
    import numpy as np

    from kprune.export import convert_to_tflite
    from kprune.structured.macs import count_macs

    dense = build_model(name, args)
    input_shape = tuple(dense.inputs[0].shape[1:])
    models, fractions = {DENSE: dense}, {DENSE: 0.0}
    for fraction in args.fractions:
        models[variant_name(fraction)] = make_shrunk(dense, fraction)
        fractions[variant_name(fraction)] = fraction
    dense_counts = count_macs(dense)
    files, variants = {}, {}
    for variant, model in models.items():
        counts = count_macs(model)
        start = time.perf_counter()
        files[variant] = convert_to_tflite(model, sparse=False)
        variants[variant] = {
            "fraction_removed": fractions[variant],
            "params": counts.params,
            "macs": counts.macs,
            "params_ratio": counts.params / dense_counts.params,
            "macs_ratio": counts.macs / dense_counts.macs,
            "tflite_bytes": len(files[variant]),
            "conversion_s": time.perf_counter() - start,
            "uncounted_layers": list(counts.uncounted),
        }
    print(f"  converted {len(files)} variants; timing LiteRT ...", flush=True)
    for threads in sorted({1, args.threads}):
        timed = time_variants(files, threads, args, input_shape)
        for variant, entry in timed.items():
            entry["ratio_to_dense"] = entry.pop("ratio_to_dense_fp32")
            variants[variant].setdefault("latency", {})[str(threads)] = entry
    print("  timing Keras predict ...", flush=True)
    x = np.random.default_rng(0).random((args.predict_batch, *input_shape), dtype="float32")
    dense_ms = []
    for variant, model in models.items():
        if variant == DENSE:
            continue
        timed = time_predict(dense, model, x, args)
        dense_ms.append(timed["a_ms"])
        variants[variant]["predict"] = {
            "ms_per_batch": timed["b_ms"],
            "images_per_s": timed["shrunk_images_per_s"],
            "ratio_to_dense": {
                "median": timed["ratio_median"],
                "min": timed["ratio_min"],
                "max": timed["ratio_max"],
            },
            "dense_ms_per_batch_same_stretches": timed["a_ms"],
            "pairs": timed["pairs"],
            "calls_per_stretch": timed["steps_per_stretch"],
        }
    variants[DENSE]["predict"] = {
        "ms_per_batch": statistics.median(dense_ms),
        "images_per_s": args.predict_batch / (statistics.median(dense_ms) / 1e3),
    }
    return {"input_shape": list(input_shape), "variants": variants}


def goals(results, args):
    """Issue 13's latency goals at 50% of channels removed, per thread count."""
    checked = []
    for model, target in GOALS.items():
        variant = (
            results["models"].get(model, {}).get("variants", {}).get(variant_name(GOAL_FRACTION))
        )
        if variant is None:
            continue
        for threads, entry in variant["latency"].items():
            ratio = entry["ratio_to_dense"]["median"]
            checked.append(
                {
                    "model": model,
                    "fraction_removed": GOAL_FRACTION,
                    "threads": int(threads),
                    "latency_ratio": ratio,
                    "macs_ratio": variant["macs_ratio"],
                    "target": target,
                    "met": ratio <= target,
                }
            )
    return checked


def print_table(results):
    threads = sorted(
        {
            t
            for m in results["models"].values()
            for v in m["variants"].values()
            for t in v["latency"]
        },
        key=int,
    )
    head = f"{'model':<13} {'variant':<11} {'params':>11} {'MACs':>13} {'MACs x':>7}"
    for t in threads:
        head += f" {f'{t}T ms':>9} {f'{t}T x (min-max)':>20}"
    head += f" {'predict img/s':>13} {'time x':>9}"
    print(head)
    for model, entry in results["models"].items():
        for variant, v in entry["variants"].items():
            line = (
                f"{model:<13} {variant:<11} {v['params']:>11,} {v['macs']:>13,} "
                f"{v['macs_ratio']:>6.3f}x"
            )
            for t in threads:
                lat = v["latency"][t]
                r = lat["ratio_to_dense"]
                spread = f"({r['min']:.2f}-{r['max']:.2f})"
                line += f" {lat['median_ms']:>9.3f} {r['median']:>7.3f}x {spread}"
            p = v["predict"]
            ratio = p.get("ratio_to_dense", {}).get("median", 1.0)
            line += f" {p['images_per_s']:>13,.1f} {ratio:>8.3f}x"
            print(line)
    for goal in results["goals"]:
        print(
            f"goal {goal['model']} at {goal['fraction_removed']:.0%} removed, {goal['threads']} "
            f"thread(s): latency {goal['latency_ratio']:.3f}x dense (MACs {goal['macs_ratio']:.3f}x"
            f"; target <= {goal['target']:.2f}x): {'met' if goal['met'] else 'NOT met'}"
        )
    print(f"shrunk models: {results['shrunk_by']}")


def main(argv):
    args = parse_args(argv)
    results = {"settings": vars(args), **environment(), "shrunk_by": SHRUNK_BY, "models": {}}
    for name in args.models:
        print(f"benchmarking {name} ...", flush=True)
        results["models"][name] = bench_model(name, args)
    results["goals"] = goals(results, args)
    write_json(args.json, results)
    print_table(results)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
