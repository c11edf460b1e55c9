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

`--tfmot-python` runs the tfmot side with another interpreter (a virtual environment with
`pip install "kprune[tfmot]"`); by default both sides use this one. Needs scikit-learn for the
data.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.benchlib import interleaved_ratio, write_json  # noqa: E402

MODELS = ("lenet300_100", "conv_small")
SCHEDULES = ("polynomial", "linear")
FRAMEWORKS = ("kprune", "tfmot")
INPUT_SHAPE = (8, 8, 1)
CLASSES = 10
BATCH = 32


def build_model(k, name):
    """The benchmark nets for Keras module `k` (Keras 3's `keras` or `tf_keras`).

    `lenet300_100` mirrors `kprune.models.lenet300_100` (Dense 300-100-10 on flattened input);
    `conv_small` is a small conv net: two 3x3 convs (16, 32), 2x2 max-pool, Dense 64, Dense 10.
    """
    layers = k.layers
    if name == "lenet300_100":
        body = [
            layers.Flatten(),
            layers.Dense(300, activation="relu"),
            layers.Dense(100, activation="relu"),
        ]
    elif name == "conv_small":
        body = [
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
        ]
    else:
        raise ValueError(f"`model` must be one of {MODELS}. Received: model={name!r}")
    return k.Sequential([k.Input(INPUT_SHAPE), *body, layers.Dense(CLASSES)])


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


# -- worker side (one framework, one network) --------------------------------------------------


class Framework:
    """What differs between the two sides: imports, schedules, pruning, stepping, stripping."""

    def __init__(self, name):
        self.name = name
        if name == "tfmot":
            # Must precede TensorFlow's import so that tf.keras is tf_keras throughout.
            os.environ["TF_USE_LEGACY_KERAS"] = "1"
            import tensorflow_model_optimization as tfmot
            import tf_keras

            self.k, self.tfmot = tf_keras, tfmot
        else:
            import keras

            import kprune

            self.k, self.kprune = keras, kprune

    def versions(self):
        names = ["tensorflow", "numpy"]
        names += (
            ["tf-keras", "tensorflow-model-optimization"] if self.name == "tfmot" else ["keras"]
        )
        out = {n: importlib.metadata.version(n) for n in names}
        if self.name == "kprune":
            out["kprune"] = self.kprune.__version__
        out["python"] = platform.python_version()
        return out

    def schedule(self, kind, settings, *, every_step=False):
        s_f, f = settings["final_sparsity"], settings["frequency"]
        begin, end = settings["begin_step"], settings["end_step"]
        if every_step:  # for timing mask updates: one at every step
            s_i, s_f, begin, end, f, kind = 0.5, 0.9, 0, 10**6, 1, "linear"
        else:
            s_i = 0.0
        if self.name == "kprune":
            if kind == "linear":
                return self.kprune.LinearSparsity(s_i, s_f, begin, end, frequency=f)
            return self.kprune.PolynomialDecay(s_i, s_f, begin, end, power=3, frequency=f)
        # tfmot asks its schedule about step t + 1 on the batch kprune calls t; power 1 is linear.
        return self.tfmot.sparsity.keras.PolynomialDecay(
            s_i, s_f, begin + 1, end + 1, power=1 if kind == "linear" else 3, frequency=f
        )

    def prune(self, model, schedule):
        if self.name == "kprune":
            return self.kprune.prune(model, schedule, scope="layer")
        return self.tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)

    def callbacks(self):
        if self.name == "kprune":
            return [self.kprune.PruningCallback()]
        return [self.tfmot.sparsity.keras.UpdatePruningStep()]

    def bind(self, model):
        """Makes a freshly compiled pruned model ready for direct train_function calls."""
        if self.name == "kprune":
            self.kprune.bind_optimizer(model, model.optimizer)
        else:
            for layer in model.layers:
                if hasattr(layer, "pruning_step"):
                    layer.pruning_step.assign(0)  # what UpdatePruningStep does at train begin

    def strip(self, model):
        if self.name == "kprune":
            return self.kprune.strip(model)
        return self.tfmot.sparsity.keras.strip_pruning(model)


def compiled(fw, model):
    model.compile(
        fw.k.optimizers.Adam(1e-3),
        fw.k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fresh_model(fw, name, init):
    model = build_model(fw.k, name)
    model.set_weights(init)
    return model


class LoopTimer:
    """Seconds from the first batch's start to the last batch's end (not the whole fit())."""

    def __init__(self, k):
        timer = self

        class _Callback(k.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if timer.start is None:
                    timer.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                timer.end = time.perf_counter()

        self.start = self.end = None
        self.callback = _Callback()

    @property
    def seconds(self):
        return self.end - self.start


def train(fw, model, data, order, callbacks):
    x, y = data["x_train"][order], data["y_train"][order]
    timer = LoopTimer(fw.k)
    # One pass over the pre-shuffled epochs: the same batches, in the same order, on both sides.
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[*callbacks, timer.callback],
    )
    return timer.seconds


def kernel_zeros(model):
    """Zeros and sizes of the Dense/Conv kernels of a plain (stripped) model."""
    out = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            value = np.asarray(kernel.numpy())
            out.append({"layer": layer.name, "zeros": int(np.sum(value == 0)), "size": value.size})
    return out


def tflite_bytes(model):
    import tensorflow as tf

    sizes = {}
    for label, optimizations in (
        ("float", []),
        ("sparse", [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]),
    ):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = optimizations
        sizes[label] = len(converter.convert())
    return sizes


def stepper(model, batch):
    """Runs `n` train steps of `model` on one fixed batch, synchronously."""
    import tensorflow as tf

    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    model.make_train_function()

    def run(n):
        for _ in range(n):
            model.train_function(iterator)
        model.optimizer.iterations.numpy()  # wait for the last step

    return run


def worker(args):
    fw = Framework(args.framework)
    import tensorflow as tf

    settings = json.loads(args.settings)
    arrays = np.load(args.data)
    data = {key: arrays[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    seeds = settings["seeds"]
    result = {"framework": fw.name, "model": args.model, "versions": fw.versions(), "runs": {}}
    trained = {}
    for seed in seeds:
        tf.random.set_seed(seed)
        order = arrays[f"order_{seed}"]
        init = [
            arrays[f"init_{args.model}_{seed}_{i}"] for i in range(int(arrays[f"n_{args.model}"]))
        ]
        dense = compiled(fw, fresh_model(fw, args.model, init))
        dense_s = train(fw, dense, data, order, [])
        dense_acc = dense.evaluate(data["x_test"], data["y_test"], verbose=0)[1]
        result["runs"].setdefault("dense", []).append(
            {"seed": seed, "accuracy": float(dense_acc), "train_loop_s": dense_s}
        )
        if seed == seeds[0]:
            trained["dense"] = dense
            result["jit_compile"] = str(getattr(dense, "jit_compile", None))
        for kind in SCHEDULES:
            pruned = compiled(
                fw, fw.prune(fresh_model(fw, args.model, init), fw.schedule(kind, settings))
            )
            seconds = train(fw, pruned, data, order, fw.callbacks())
            accuracy = pruned.evaluate(data["x_test"], data["y_test"], verbose=0)[1]
            stripped = fw.strip(pruned)
            run = {
                "seed": seed,
                "accuracy": float(accuracy),
                "train_loop_s": seconds,
                "kernels": kernel_zeros(stripped),
            }
            if seed == seeds[0]:
                run["tflite_bytes"] = tflite_bytes(stripped)
                trained[kind] = pruned
            result["runs"].setdefault(kind, []).append(run)

    # Ordinary steps: both pruned models are past their schedule's end; time the first one.
    rng = np.random.default_rng(0)
    index = rng.choice(len(data["x_train"]), BATCH, replace=False)
    batch = (data["x_train"][index], data["y_train"][index])
    timing = settings["timing"]
    run_dense = stepper(trained["dense"], batch)
    run_pruned = stepper(trained[SCHEDULES[0]], batch)
    run_dense(5)
    run_pruned(5)
    result["step_time"] = interleaved_ratio(
        run_dense, run_pruned, pairs=timing["pairs"], reps=timing["steps_per_stretch"]
    )
    # Mask-update steps: a schedule that updates at every step.
    init = trained["dense"].get_weights()
    updating = compiled(
        fw, fw.prune(fresh_model(fw, args.model, init), fw.schedule("", settings, every_step=True))
    )
    fw.bind(updating)
    run_updating = stepper(updating, batch)
    run_updating(2)
    start = time.perf_counter()
    run_updating(timing["update_steps"])
    result["update_step_ms"] = 1000 * (time.perf_counter() - start) / timing["update_steps"]
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


# -- orchestrator side -------------------------------------------------------------------------


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
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [python, os.path.abspath(__file__), "--worker", framework, "--model", model]
    command += ["--data", data, "--settings", json.dumps(settings), "--out", out]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 epochs, 1 seed (a few minutes)")
    parser.add_argument("--json", default="bench_vs_tfmot.json", help="output JSON path")
    parser.add_argument("--tfmot-python", default=sys.executable, help="interpreter with tfmot")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 1 quick, 3 full)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="final sparsity in [0, 1)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    # Internal: one framework and one network in this process.
    parser.add_argument("--worker", choices=FRAMEWORKS, dest="framework", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.framework:
        return worker(args)

    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    if not 0.0 < args.sparsity < 1.0:
        parser.error(f"--sparsity must be in (0, 1); received {args.sparsity}")
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if n_seeds < 1:
        parser.error(f"--seeds must be >= 1; received {n_seeds}")
    if not has_module(args.tfmot_python, "tensorflow_model_optimization"):
        parser.error(
            f"{args.tfmot_python} cannot import tensorflow_model_optimization: install the "
            'extra (pip install "kprune[tfmot]") or pass --tfmot-python'
        )
    settings = {**plan(args.quick, args.sparsity), "seeds": list(range(n_seeds))}
    print("settings:", json.dumps(settings), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        prepare_data(data, names, settings["seeds"], settings)
        for name in names:
            results[name] = {}
            for fw in FRAMEWORKS:
                python = args.tfmot_python if fw == "tfmot" else sys.executable
                start = time.perf_counter()
                out = os.path.join(tmp, f"{fw}_{name}.json")
                results[name][fw] = run_worker(python, fw, name, data, settings, out)
                print(f"{fw} {name}: {time.perf_counter() - start:.0f} s", flush=True)
    rows, timing = summarize(results, settings)
    print_tables(rows, timing, n_seeds)

    from tools.benchlib import environment

    payload = {
        "benchmark": "bench_vs_tfmot",
        "settings": {**settings, "quick": args.quick, "models": names},
        "accuracy_sparsity_size": rows,
        "step_time": timing,
        "workers": results,
        "versions_tfmot_side": results[names[0]]["tfmot"]["versions"],
        **environment(),
    }
    write_json(args.json, payload)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
