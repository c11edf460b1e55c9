"""kprune (Keras 3) next to TensorFlow Model Optimization (tfmot, tf_keras): same nets, same run.

Two networks (LeNet-300-100 and a small conv net, defined below for both frameworks with the
same layer shapes) are trained on the UCI handwritten digits bundled with scikit-learn (8x8,
1797 images; 360 held out) from the *same initial weights* on the *same batch order*, pruned
layer by layer to the same final sparsity along the same schedule (polynomial decay, power 3,
and linear), once with kprune on Keras 3 and once with tfmot on tf_keras. Each framework runs
in its own process (importing tfmot switches TensorFlow to tf_keras). tfmot counts steps from
1, kprune from 0, so tfmot's schedule gets begin/end steps one higher: both update the masks
on the same batches. Both compile with their own defaults.

Reported per network, schedule and framework: final test accuracy (mean and range over
seeds), dense accuracy from the same start, exact zero counts of the pruned kernels against
round(s * N) per layer, and TFLite bytes (float, with `Optimize.EXPERIMENTAL_SPARSITY`).
Per network and framework: train-step time of the pruned model (past the end of its schedule,
so ordinary steps) against the same framework's dense model, timed in interleaved stretches
(median of the pairwise ratios, min-max), and the time of a step that updates the masks.

Usage:
    python tools/bench_vs_tfmot.py [--quick] [--json PATH] [--tfmot-python PATH]
        [--seeds N] [--sparsity S] [--models lenet300_100,conv_small]

Flags may also come from a file: --flagfile=PATH (one --name=value per line).
The worker side (one framework, one network per process) is tools/bench_vs_tfmot_worker.py.

`--tfmot-python` runs the tfmot side with another interpreter (a virtual environment with
`pip install "kprune[tfmot]"`); by default both sides use this one. Needs scikit-learn for the
data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kprune._internal.validate import check_at_least, check_between, check_choices  # noqa: E402
from tools import cli  # noqa: E402
from tools.bench_vs_tfmot_worker import (  # noqa: E402
    BATCH,
    FRAMEWORKS,
    MODELS,
    SCHEDULES,
    build_model,
)
from tools.benchlib import environment, write_json  # noqa: E402

WORKER = os.path.join(ROOT, "tools", "bench_vs_tfmot_worker.py")

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_bool("quick", False, "10 epochs, 1 seed (a few minutes).", flag_values=FLAGS)
flags.DEFINE_string("json", "bench_vs_tfmot.json", "Output JSON path.", flag_values=FLAGS)
flags.DEFINE_string(
    "tfmot-python", sys.executable, "Interpreter with tfmot for the tfmot side.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "seeds", None, "Seeds (default 1 with --quick, 3 otherwise).", flag_values=FLAGS
)
flags.DEFINE_float("sparsity", 0.9, "Final sparsity, in (0, 1).", flag_values=FLAGS)
flags.DEFINE_list("models", list(MODELS), "Comma-separated network names.", flag_values=FLAGS)


def plan(quick, sparsity):
    """Epochs, steps and the schedule's window, in kprune's step numbering."""
    epochs = 10 if quick else 30
    frequency = 10 if quick else 20
    steps_per_epoch = 1437 // BATCH
    total = epochs * steps_per_epoch
    begin = frequency * (total // 10 // frequency)
    end = begin + frequency * ((6 * total) // 10 // frequency)
    return {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "begin_step": begin,
        "end_step": end,
        "frequency": frequency,
        "final_sparsity": sparsity,
        "batch": BATCH,
        "optimizer": "Adam(1e-3)",
        "scope": "layer (both)",
        "timing": {"steps_per_stretch": 10, "pairs": 5, "update_steps": 5}
        if quick
        else {"steps_per_stretch": 20, "pairs": 15, "update_steps": 20},
    }


# -- orchestrator -------------------------------------------------------------------------------


def prepare_data(path, models, seeds, settings):
    """Splits the digits, draws the batch orders and the initial weights; saves one .npz."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SystemExit(
            f"bench_vs_tfmot needs scikit-learn for the digits data ({error})."
        ) from error
    import keras

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    perm = np.random.default_rng(0).permutation(len(x))
    test, train = perm[:360], perm[360:]
    arrays = {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}
    n_train = len(train)
    steps = settings["steps_per_epoch"]
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        arrays[f"order_{seed}"] = np.concatenate(
            [rng.permutation(n_train)[: steps * BATCH] for _ in range(settings["epochs"])]
        )
        for name in models:
            keras.utils.set_random_seed(seed)
            weights = build_model(keras, name).get_weights()
            arrays[f"n_{name}"] = np.array(len(weights))
            for i, w in enumerate(weights):
                arrays[f"init_{name}_{seed}_{i}"] = w
    np.savez(path, **arrays)


def has_module(python, name):
    """Whether interpreter `python` can find module `name` (without importing it)."""
    probe = "import importlib.util as u, sys; sys.exit(not u.find_spec(sys.argv[1]))"
    return subprocess.run([python, "-c", probe, name]).returncode == 0


def run_worker(python, framework, model, data, settings, out):
    """Runs bench_vs_tfmot_worker.py with `python`; returns the JSON it wrote."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [python, WORKER, f"--framework={framework}", f"--model={model}"]
    command += [f"--data={data}", f"--settings={json.dumps(settings)}", f"--out={out}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{framework} worker for {model} failed:\n{done.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def summarize(results, settings):
    rows, timing = [], []
    for model, per_fw in results.items():
        for kind in SCHEDULES:
            for fw in FRAMEWORKS:
                runs = per_fw[fw]["runs"][kind]
                dense = per_fw[fw]["runs"]["dense"]
                kernels = runs[0]["kernels"]
                expected = [round(settings["final_sparsity"] * k["size"]) for k in kernels]
                accs = [r["accuracy"] for r in runs]
                rows.append(
                    {
                        "model": model,
                        "schedule": kind,
                        "framework": fw,
                        "accuracy_mean": float(np.mean(accs)),
                        "accuracy_min": min(accs),
                        "accuracy_max": max(accs),
                        "dense_accuracy_mean": float(np.mean([r["accuracy"] for r in dense])),
                        "zeros": sum(k["zeros"] for k in kernels),
                        "size": sum(k["size"] for k in kernels),
                        "exact": all([k["zeros"] for k in r["kernels"]] == expected for r in runs),
                        "tflite_float_bytes": runs[0]["tflite_bytes"]["float"],
                        "tflite_sparse_bytes": runs[0]["tflite_bytes"]["sparse"],
                    }
                )
        for fw in FRAMEWORKS:
            t = per_fw[fw]["step_time"]
            timing.append(
                {
                    "model": model,
                    "framework": fw,
                    "dense_ms": t["a_ms"],
                    "pruned_ms": t["b_ms"],
                    "ratio": t["ratio_median"],
                    "ratio_min": t["ratio_min"],
                    "ratio_max": t["ratio_max"],
                    "update_step_ms": per_fw[fw]["update_step_ms"],
                    "jit_compile": per_fw[fw]["jit_compile"],
                }
            )
    return rows, timing


def print_tables(rows, timing, n_seeds):
    print(
        f"\n{'model':<13} {'schedule':<10} {'framework':<7} {'acc %':>6} {'(range)':>13} "
        f"{'dense %':>7} {'zeros / N':>13} {'exact':>5} {'tflite B':>9} {'sparse B':>9}"
    )
    for r in rows:
        span = (
            f"({100 * r['accuracy_min']:.1f}-{100 * r['accuracy_max']:.1f})" if n_seeds > 1 else ""
        )
        print(
            f"{r['model']:<13} {r['schedule']:<10} {r['framework']:<7} "
            f"{100 * r['accuracy_mean']:>6.2f} {span:>13} {100 * r['dense_accuracy_mean']:>7.2f} "
            f"{r['zeros']:>6}/{r['size']:<6} {'yes' if r['exact'] else 'NO':>5} "
            f"{r['tflite_float_bytes']:>9} {r['tflite_sparse_bytes']:>9}"
        )
    print(
        f"\n{'model':<13} {'framework':<7} {'dense ms':>9} {'pruned ms':>10} {'ratio':>6} "
        f"{'(min-max)':>13} {'update ms':>10}"
    )
    for t in timing:
        print(
            f"{t['model']:<13} {t['framework']:<7} {t['dense_ms']:>9.2f} {t['pruned_ms']:>10.2f} "
            f"{t['ratio']:>6.3f} ({t['ratio_min']:.3f}-{t['ratio_max']:.3f}) "
            f"{t['update_step_ms']:>10.2f}"
        )


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    names = cli.checked(
        check_choices, "--models", [n for n in FLAGS.models if n], MODELS, "model(s)"
    )
    cli.checked(check_between, "--sparsity", FLAGS.sparsity, 0, 1)
    n_seeds = FLAGS.seeds if FLAGS.seeds is not None else (1 if FLAGS.quick else 3)
    cli.checked(check_at_least, "--seeds", n_seeds, 1)
    tfmot_python = FLAGS["tfmot-python"].value
    if not has_module(tfmot_python, "tensorflow_model_optimization"):
        raise cli.UsageError(
            f"{tfmot_python} cannot import tensorflow_model_optimization: install the "
            'extra (pip install "kprune[tfmot]") or pass --tfmot-python'
        )
    settings = {**plan(FLAGS.quick, FLAGS.sparsity), "seeds": list(range(n_seeds))}
    print("settings:", json.dumps(settings), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        prepare_data(data, names, settings["seeds"], settings)
        for name in names:
            results[name] = {}
            for fw in FRAMEWORKS:
                python = tfmot_python if fw == "tfmot" else sys.executable
                start = time.perf_counter()
                out = os.path.join(tmp, f"{fw}_{name}.json")
                results[name][fw] = run_worker(python, fw, name, data, settings, out)
                print(f"{fw} {name}: {time.perf_counter() - start:.0f} s", flush=True)
    rows, timing = summarize(results, settings)
    print_tables(rows, timing, n_seeds)
    payload = {
        "benchmark": "bench_vs_tfmot",
        "settings": {**settings, "quick": FLAGS.quick, "models": names},
        "accuracy_sparsity_size": rows,
        "step_time": timing,
        "workers": results,
        "versions_tfmot_side": results[names[0]]["tfmot"]["versions"],
        **environment(),
    }
    write_json(FLAGS.json, payload)
    print(f"wrote {FLAGS.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
