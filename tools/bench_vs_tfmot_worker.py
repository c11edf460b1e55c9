"""The worker side of tools/bench_vs_tfmot.py: one framework and one network in this process.

Run by bench_vs_tfmot.py, once per framework and network, each in a fresh interpreter
(importing tfmot switches TensorFlow to tf_keras, which must happen before TensorFlow is
imported): it trains the dense and the pruned models from the shared initial weights on the
shared batch order, times ordinary and mask-updating train steps, and writes one JSON file.

    python tools/bench_vs_tfmot_worker.py --framework=kprune --model=lenet300_100 \\
        --data=DATA.npz --settings='{...}' --out=OUT.json

Nothing here imports TensorFlow, Keras or kprune at module level: `Framework` chooses the Keras
first.

Example:

>>> import keras
>>> build_model(keras, "conv_small").count_params()
38282
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools import cli  # noqa: E402  (absl only: no TensorFlow before Framework)

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


# -- one framework, one network ------------------------------------------------------------------


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
        """`kprune.versions.versions()`, with tf-keras and tfmot on the tfmot side."""
        # Imported when called: importing kprune imports TensorFlow and Keras 3, which the
        # tfmot side may only do once tf_keras is chosen (after Framework's __init__).
        from kprune.versions import versions

        extra = ("tf-keras", "tensorflow-model-optimization") if self.name == "tfmot" else ()
        return versions(extra=extra)

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


def worker(framework, model_name, data_path, settings, out):
    """Measures `model_name` with `framework`, writes the result as JSON to `out`."""
    fw = Framework(framework)
    # Only now, after Framework chose the Keras (see the module docstring); benchlib imports
    # kprune, hence Keras 3, which is harmless once tf.keras is settled.
    import tensorflow as tf

    from tools.benchlib import interleaved_ratio, write_json

    arrays = np.load(data_path)
    data = {key: arrays[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    seeds = settings["seeds"]
    result = {"framework": fw.name, "model": model_name, "runs": {}}
    trained = {}
    for seed in seeds:
        tf.random.set_seed(seed)
        order = arrays[f"order_{seed}"]
        init = [
            arrays[f"init_{model_name}_{seed}_{i}"] for i in range(int(arrays[f"n_{model_name}"]))
        ]
        dense = compiled(fw, fresh_model(fw, model_name, init))
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
                fw, fw.prune(fresh_model(fw, model_name, init), fw.schedule(kind, settings))
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
        fw, fw.prune(fresh_model(fw, model_name, init), fw.schedule("", settings, every_step=True))
    )
    fw.bind(updating)
    run_updating = stepper(updating, batch)
    run_updating(2)
    start = time.perf_counter()
    run_updating(timing["update_steps"])
    result["update_step_ms"] = 1000 * (time.perf_counter() - start) / timing["update_steps"]
    result["versions"] = fw.versions()
    write_json(out, result)


FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py); all are needed
flags.DEFINE_enum("framework", None, list(FRAMEWORKS), "Which side to run.", flag_values=FLAGS)
flags.DEFINE_enum("model", None, list(MODELS), "Which network.", flag_values=FLAGS)
flags.DEFINE_string("data", None, ".npz from bench_vs_tfmot.prepare_data.", flag_values=FLAGS)
flags.DEFINE_string("settings", None, "JSON of bench_vs_tfmot.plan + seeds.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output JSON path.", flag_values=FLAGS)
for _name in ("framework", "model", "data", "settings", "out"):
    flags.mark_flag_as_required(_name, flag_values=FLAGS)


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    try:
        settings = json.loads(FLAGS.settings)
    except ValueError as err:
        raise cli.UsageError(f"--settings is not JSON ({err})") from err
    worker(FLAGS.framework, FLAGS.model, FLAGS.data, settings, FLAGS.out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
