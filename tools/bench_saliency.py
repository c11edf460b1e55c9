"""Cost of pruning at initialization: wall time and peak memory of scoring, per method.

For each model (VGG-19 and ResNet-18 for CIFAR, batch 64, CPU by default) and each method of
`kprune.masks_at_init` (snip, grasp, synflow, random, magnitude), one fresh worker process
builds the model and a random batch, then measures one call of `masks_at_init` (scores and
selection, tracing included, sparsity 0.9, one batch). Another worker measures a training step
of the dense model (SGD with momentum, sparse cross-entropy): the first step (tracing,
optimizer slots, activations) and the median time of the following ones. The table gives the
scoring time over the steady step time, and the scoring peak memory over the first step's.

Peak memory is the peak resident set size of the worker during the measured call minus its
resident size just before it (Linux: `/proc/self/clear_refs` resets the peak; elsewhere a
sampling thread). Both sides are first calls in a fresh process: TensorFlow's allocator keeps
memory once allocated, so later training steps show almost no growth and are not a fair
denominator. The training step is compiled without XLA by default (`--train-jit off`), like the
scoring functions, so compiler memory is not counted on one side only.

Usage:
    python tools/bench_saliency.py [--quick] [--json PATH] [--models vgg19,resnet18]
                                   [--methods snip,grasp,synflow,random,magnitude]
                                   [--batch 64] [--device cpu|default] [--train-jit off|auto]

Flags may also come from a file: --flagfile=PATH (one --name=value per line).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python tools/bench_saliency.py` puts tools/ on sys.path

from kprune._internal.validate import check_at_least, check_choices  # noqa: E402
from tools import cli  # noqa: E402
from tools.benchlib import environment, write_json  # noqa: E402

MODELS = ("vgg19", "resnet18")
METHODS = ("snip", "grasp", "synflow", "random", "magnitude")
INPUT_SHAPE, CLASSES, SPARSITY = (32, 32, 3), 10, 0.9

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_bool("quick", False, "Smoke run: 2 SynFlow rounds.", flag_values=FLAGS)
flags.DEFINE_string("json", "bench_saliency.json", "Output JSON path.", flag_values=FLAGS)
flags.DEFINE_list("models", list(MODELS), "Comma-separated model names.", flag_values=FLAGS)
flags.DEFINE_list("methods", list(METHODS), "Comma-separated methods.", flag_values=FLAGS)
flags.DEFINE_integer("batch", 64, "Batch size of scoring and step.", flag_values=FLAGS)
flags.DEFINE_enum("device", "cpu", ["cpu", "default"], "Where the workers run.", flag_values=FLAGS)
flags.DEFINE_enum(
    "train-jit", "off", ["off", "auto"], "XLA for the training step.", flag_values=FLAGS
)
flags.DEFINE_list(
    "worker", None, "Internal: MODEL,TASK, one measurement in this process.", flag_values=FLAGS
)


# -- memory -----------------------------------------------------------------------------------
def _status_kib(field):
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak resident memory (MiB) above the level at entry, during a `with` block."""

    def __enter__(self):
        self.start = _status_kib("VmRSS")
        self._sampler = None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.exact = _status_kib("VmHWM") is not None
        except OSError:
            self.exact = False
        if not self.exact:
            self._peak, self._stop = self.start or 0, threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kib("VmRSS") or 0)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.exact:
            peak = _status_kib("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
            peak = self._peak
        self.mib = None if self.start is None else (peak - self.start) / 1024.0
        return False


# -- worker -----------------------------------------------------------------------------------
def _model_zoo():
    try:
        from kprune.models import resnet18, vgg19
    except ImportError as error:
        raise SystemExit(
            "bench_saliency needs the model zoo (`from kprune.models import vgg19, resnet18`), "
            f"which is not importable from {ROOT}: {error}"
        ) from error
    return {"vgg19": vgg19, "resnet18": resnet18}


def worker(model_name, task, batch_size, quick, train_jit):
    """Runs one measurement in this process and prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    import kprune

    builders = _model_zoo()
    builder = builders[model_name]
    keras.utils.set_random_seed(0)
    model = builder(INPUT_SHAPE, CLASSES)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, *INPUT_SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, size=batch_size).astype("int32")
    out = {
        "model": model_name,
        "task": task,
        "params": int(model.count_params()),
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }
    if task == "train_step":
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False if train_jit == "off" else "auto",
        )
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        model.make_train_function()

        def step():
            model.train_function(iterator)
            model.optimizer.iterations.numpy()  # wait for the step to finish

        with PeakMemory() as first_mem:
            start = time.perf_counter()
            step()
            out["first_s"] = time.perf_counter() - start
        step()
        times = []
        with PeakMemory() as steady_mem:
            for _ in range(2 if quick else 10):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
        out["step_s"] = float(np.median(times))
        out["steps_timed"] = len(times)
        out["peak_mib"] = first_mem.mib
        out["steady_peak_mib"] = steady_mem.mib
        out["memory_exact"] = first_mem.exact
        out["jit_compile"] = train_jit
    else:
        options = {"iterations": 2} if (task == "synflow" and quick) else {}
        data = (x, y) if task in ("snip", "grasp") else None
        with PeakMemory() as mem:
            start = time.perf_counter()
            masks = kprune.masks_at_init(
                model, data, method=task, sparsity=SPARSITY, batches=1, **options
            )
            out["score_s"] = time.perf_counter() - start
        total = sum(m.size for m in masks.values())
        out["prunable"] = int(total)
        out["zeros"] = int(sum(m.size - np.count_nonzero(m) for m in masks.values()))
        out["peak_mib"] = mem.mib
        out["memory_exact"] = mem.exact
        out["options"] = {"batches": 1, "sparsity": SPARSITY, **options}
    print(json.dumps(out))


# -- driver -----------------------------------------------------------------------------------
def run_worker(model_name, task):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    if FLAGS.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--worker={model_name},{task}"]
    cmd += [f"--batch={FLAGS.batch}", f"--train-jit={FLAGS['train-jit'].value}"]
    cmd += ["--quick"] if FLAGS.quick else []
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {model_name}/{task} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    train_jit = FLAGS["train-jit"].value
    if FLAGS.worker:
        if len(FLAGS.worker) != 2:
            raise cli.UsageError(f"--worker takes MODEL,TASK. Received: {FLAGS.worker}")
        worker(*FLAGS.worker, FLAGS.batch, FLAGS.quick, train_jit)
        return 0
    models = cli.checked(
        check_choices, "--models", [m for m in FLAGS.models if m], MODELS, "model(s)"
    )
    methods = cli.checked(
        check_choices, "--methods", [m for m in FLAGS.methods if m], METHODS, "method(s)"
    )
    cli.checked(check_at_least, "--batch", FLAGS.batch, 1)

    _model_zoo()  # fail here, with a clear message, rather than in every worker

    results = {}
    header = (
        f"{'model':<9} {'method':<10} {'score s':>9} {'step s':>8} {'x step':>8} "
        f"{'score MiB':>9} {'step MiB':>9} {'x step':>7}"
    )
    print(header)
    for model_name in models:
        step = run_worker(model_name, "train_step")
        rows = {"train_step": step}
        for method in methods:
            r = run_worker(model_name, method)
            r["time_vs_step"] = r["score_s"] / step["step_s"]
            r["memory_vs_step"] = (
                r["peak_mib"] / step["peak_mib"] if step["peak_mib"] and r["peak_mib"] else None
            )
            rows[method] = r
            ratio = "n/a" if r["memory_vs_step"] is None else f"{r['memory_vs_step']:.2f}"
            print(
                f"{model_name:<9} {method:<10} {r['score_s']:>9.2f} {step['step_s']:>8.3f} "
                f"{r['time_vs_step']:>8.1f} {r['peak_mib']:>9.1f} {step['peak_mib']:>9.1f} "
                f"{ratio:>7}",
                flush=True,
            )
        results[model_name] = rows
    payload = {
        "benchmark": "bench_saliency",
        "settings": {
            "quick": FLAGS.quick,
            "batch": FLAGS.batch,
            "device": FLAGS.device,
            "input_shape": list(INPUT_SHAPE),
            "classes": CLASSES,
            "sparsity": SPARSITY,
            "batches": 1,
            "synflow_iterations": 2 if FLAGS.quick else 100,
            "train_step": "SGD(0.01, momentum=0.9), sparse CE from logits",
            "train_jit_compile": train_jit,
            "time_vs_step": "scoring wall time (tracing included) / median steady step time",
            "memory_vs_step": "scoring peak RSS growth / first training step's peak RSS growth",
        },
        "results": results,
        **environment(),
    }
    write_json(FLAGS.json, payload)
    print(f"wrote {FLAGS.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
