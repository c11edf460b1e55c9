"""`python -m kprune.train --strategy=mirrored` on 2 logical CPU devices, against one device.

Run as a subprocess by tests/test_distribute.py (logical devices must be configured before
TensorFlow initializes) with the methods to compare as arguments (linear, snip, lth,
linear_float16). For each it runs the command line twice in this process,
`--strategy=mirrored` (2 replicas) and `--strategy=default` (1 device), with the same seed and
global batch, and prints one JSON line: what results.json says about the distribution, whether
the final masks (the zeros of the stripped kernels; for lth every round's saved masks) are
equal, how many entries differ, and the zero counts; and whether
`kprune.distribute.ReplicaMaskCheck` notices a mask changed on one replica only.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kprune  # noqa: E402
from kprune import distribute, train  # noqa: E402

# Global batch 64 splits evenly over 2 replicas, and so does the last batch of an epoch
# (1438 = 22 * 64 + 30): every step is the same computation as on one device.
COMMON = ["--batch_size=64", "--seed=5", "--progress=none", "--lr=0.05", "--noeval_every_epoch"]
METHOD_FLAGS = {
    "linear": ["--method=linear", "--epochs=2", "--target_sparsity=0.9"],
    "snip": ["--method=snip", "--epochs=1", "--target_sparsity=0.95"],
    "lth": ["--method=lth", "--epochs=1", "--lth_rounds=2", "--lth_rate=0.5"],
    # Loss scaling (LossScaleOptimizer) under MirroredStrategy, float16 compute.
    "linear_float16": ["--method=linear", "--epochs=1", "--mixed_precision=float16"],
}


def kernel_zeros(run_dir):
    model = keras.models.load_model(run_dir / "model.keras")
    return {
        layer.name: layer.kernel.numpy() == 0 for layer in model.layers if hasattr(layer, "kernel")
    }


def round_masks(run_dir):
    rounds = sorted((run_dir / "lottery").glob("round_*/masks.npz"))
    out = {}
    for path in rounds:
        with np.load(path) as masks:
            out.update({f"{path.parent.name}/{k}": masks[k] for k in masks.files})
    return out


def compare(method, root):
    runs = {}
    for strategy in ("mirrored", "default"):
        run_dir = root / f"{method}-{strategy}"
        code = train.cli(
            ["kprune.train", f"--model_dir={run_dir}", f"--strategy={strategy}"]
            + COMMON
            + METHOD_FLAGS[method]
        )
        if code != 0:
            raise SystemExit(f"{method} --strategy={strategy} exited with {code}")
        runs[strategy] = run_dir
    results = {s: json.loads((d / "results.json").read_text()) for s, d in runs.items()}
    zeros = {s: kernel_zeros(d) for s, d in runs.items()}
    out = {
        "replicas": {s: r["distribution"]["replicas"] for s, r in results.items()},
        "strategy": {s: r["distribution"]["strategy"] for s, r in results.items()},
        "identical_across_replicas": results["mirrored"]["masks_identical_across_replicas"],
        "equal_to_single_device": all(
            np.array_equal(zeros["mirrored"][k], zeros["default"][k]) for k in zeros["default"]
        ),
        "mask_differences": int(
            sum(np.sum(zeros["mirrored"][k] != zeros["default"][k]) for k in zeros["default"])
        ),
        "zeros": {k: int(v.sum()) for k, v in zeros["mirrored"].items()},
        "total_steps": {s: r["total_steps"] for s, r in results.items()},
        "global_sparsity": results["mirrored"]["global_sparsity"],
    }
    if method == "lth":
        masks = {s: round_masks(d) for s, d in runs.items()}
        out["masks_compared"] = len(masks["default"])
        out["round_masks_equal"] = sorted(masks["mirrored"]) == sorted(masks["default"]) and all(
            np.array_equal(masks["mirrored"][k], masks["default"][k]) for k in masks["default"]
        )
    return out


def tampered_check():
    """Whether the replica check notices a mask that differs on one replica."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
        model = kprune.prune(base, kprune.ConstantSparsity(0.5))
    mask = kprune.api.pruning_wrappers(model)[0].masks[0]
    before = distribute.masks_identical_across_replicas(model)
    strategy.experimental_local_results(mask.value)[1].assign(tf.zeros((4, 3)))
    check = distribute.ReplicaMaskCheck()
    check.set_model(model)
    try:
        check.on_train_end()
        raised = False
    except RuntimeError:
        raised = True
    return {
        "identical_before": before,
        "identical_after": distribute.masks_identical_across_replicas(model),
        "check_raised": raised,
    }


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out = {m: compare(m, Path(tmp)) for m in sys.argv[1:] or list(METHOD_FLAGS)}
    out["tampered"] = tampered_check()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
