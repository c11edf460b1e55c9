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

The code: this file holds the flags, `main` and the check against the CLI itself;
tools/ramp_study_runs.py the recipes, schedules, callbacks, one LeNet-300-100 run and the trace
summaries; tools/ramp_study_nan.py the LeNet-5-Caffe divergence runs;
tools/ramp_study_report.py the results JSON and its markdown tables.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/ramp_study.py` puts tools/, not the root, on sys.path
    sys.path.insert(0, str(ROOT))

from tools import cli  # noqa: E402
from tools.benchlib import environment  # noqa: E402
from tools.ramp_study_nan import NAN_CONFIGS, nan_one, standardized_copy  # noqa: E402
from tools.ramp_study_report import markdown, write_json  # noqa: E402
from tools.ramp_study_runs import (  # noqa: E402
    BASE,
    RECIPES,
    print_table,
    summarize_trace,
    train_one,
)

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_string(
    "data",
    "../shared/data/mnist_dev.npz",
    ".npz with x_train/y_train/x_test/y_test.",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "Seeds (initialization and shuffling).", flag_values=FLAGS
)
flags.DEFINE_list(
    "sparsities",
    ["0.95", "0.98", "0.99"],
    "Target sparsities of the trace part.",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "variant_sparsities",
    ["0.98"],
    "Target sparsities at which every recipe variant runs.",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "parts",
    ["trace", "variants"],
    "trace (CLI recipe at every --sparsities), variants (every recipe of --variants at "
    "--variant_sparsities), layer (layer scope, CLI recipe), nan (LeNet-5-Caffe divergence), "
    "cli_check (the CLI itself, to check the rebuilt recipe).",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "variants", None, "Recipe variants to run (default: all of RECIPES).", flag_values=FLAGS
)
flags.DEFINE_list("methods", ["linear", "polynomial"], "Ramps to compare.", flag_values=FLAGS)
flags.DEFINE_integer("epochs", 20, "Epochs of the base recipe.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 100, "Batch size.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "JSON output path (default: print only).", flag_values=FLAGS)
flags.DEFINE_bool(
    "dense", True, "Train the dense baseline (trace and variants parts).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "nan_steps", 300, "nan part: training steps per configuration.", flag_values=FLAGS
)
flags.DEFINE_list(
    "nan_configs", None, "nan part: configurations (default: all).", flag_values=FLAGS
)
flags.DEFINE_list(
    "summarize",
    None,
    "Only print the markdown tables of these JSON files (no training).",
    flag_values=FLAGS,
)


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


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
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
    sizes = {"epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size}
    start = time.perf_counter()

    def run(name, method, sparsity, seed, scope="global"):
        result = train_one(data_path, method, sparsity, seed, RECIPES[name], scope=scope, **sizes)
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
                run_cli = cli_run(data_path, method, sparsity, seeds[0], tmp)
                mine = train_one(data_path, method, sparsity, seeds[0], RECIPES["cli"], **sizes)
                run_cli["rebuilt_final_acc"] = mine["final_acc"]
                print(f"  {method} 98% seed {seeds[0]}: CLI {run_cli['test_accuracy'] * 100:.2f}, "
                      f"rebuilt {mine['final_acc'] * 100:.2f}", flush=True)  # fmt: skip
                out["cli_check"].append(run_cli)
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
    sys.exit(cli.run(main))
