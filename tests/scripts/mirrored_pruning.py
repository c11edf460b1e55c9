"""Trains a pruned MLP on 2 logical CPU devices under MirroredStrategy and on one device.

Run as a subprocess by tests/test_distributed.py (logical devices must be configured before
TensorFlow initializes). Prints one JSON line: for each scope, whether the masks are
identical across replicas and equal to a single-device run, and the zero counts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kprune  # noqa: E402


def train(strategy, scope):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype("float32")
    y = rng.integers(0, 4, 256).astype("int32")
    with strategy.scope():
        base = keras.Sequential(
            [
                keras.Input((20,)),
                keras.layers.Dense(32, activation="relu", name="hidden"),
                keras.layers.Dense(4, name="logits"),
            ]
        )
        schedule = kprune.LinearSparsity(0.0, 0.8, begin_step=0, end_step=30, frequency=5)
        if scope == "channel":  # whole channels, per channel group
            model = kprune.prune(base, schedule, granularity="channel")
        else:
            model = kprune.prune(base, schedule, scope=scope)
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=5,
        verbose=0,
        shuffle=False,
        callbacks=[kprune.PruningCallback()],
    )
    replicas = {}
    for wrapper in kprune.api.pruning_wrappers(model):
        for mask in wrapper.masks:
            replicas[mask.path] = [
                v.numpy() for v in strategy.experimental_local_results(mask.value)
            ]
    return model, replicas


def main():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for scope in sys.argv[1:] or ["layer", "global"]:
        model, replicas = train(mirrored, scope)
        single, _ = train(tf.distribute.get_strategy(), scope)
        masks, single_masks = kprune.get_masks(model), kprune.get_masks(single)
        out[scope] = {
            "replicas": len(next(iter(replicas.values()))),
            "identical_across_replicas": all(
                all(np.array_equal(parts[0], p) for p in parts) for parts in replicas.values()
            ),
            "equal_to_single_device": all(np.array_equal(masks[k], single_masks[k]) for k in masks),
            "zeros": {k: int((v == 0).sum()) for k, v in masks.items()},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
