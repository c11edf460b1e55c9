"""FGGP under MirroredStrategy on 2 logical CPU devices, against a single-device run.

Run as a subprocess by tests/test_fggp.py (logical devices must be configured before
TensorFlow initializes) with the gradient modes to test as arguments ("batch", "accumulated").
Prints one JSON line, per mode: whether the gradient records and masks are identical across
replicas, how far the records are from the single-device run's, whether the masks equal the
single-device masks, and the zero count.
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


def train(strategy, gradient):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 12)).astype("float32")
    y = rng.integers(0, 3, 128).astype("int32")
    with strategy.scope():
        base = keras.Sequential(
            [
                keras.Input((12,)),
                keras.layers.Dense(16, activation="relu", name="hidden"),
                keras.layers.Dense(3, name="logits"),
            ]
        )
        schedule = kprune.PolynomialDecay(0.0, 0.8, begin_step=1, end_step=13, frequency=4)
        model = kprune.prune(
            base, schedule, scope="global", criterion=kprune.FGGP(gradient=gradient)
        )
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[kprune.PruningCallback()],
    )
    parts = {}
    for wrapper in kprune.api.pruning_wrappers(model):
        for v in (*wrapper.masks, *wrapper.gradient_records):
            parts[f"{wrapper.name}/{v.name}"] = [
                p.numpy() for p in strategy.experimental_local_results(v.value)
            ]
    return model, parts


def compare(gradient):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model, parts = train(mirrored, gradient)
    single, single_parts = train(tf.distribute.get_strategy(), gradient)
    masks, single_masks = kprune.get_masks(model), kprune.get_masks(single)
    records = {k: v for k, v in parts.items() if k.endswith("_grad")}
    return {
        "replicas": len(next(iter(parts.values()))),
        "identical_across_replicas": all(
            all(np.array_equal(p[0], q) for q in p) for p in parts.values()
        ),
        "record_error": max(
            float(np.abs(records[k][0] - single_parts[k][0]).max()) for k in records
        ),
        "record_scale": max(float(np.abs(single_parts[k][0]).max()) for k in records),
        "masks_equal_single_device": all(np.array_equal(masks[k], single_masks[k]) for k in masks),
        "zeros": sum(int((m == 0).sum()) for m in masks.values()),
    }


def main():
    print(json.dumps({mode: compare(mode) for mode in sys.argv[1:] or ["batch"]}))


if __name__ == "__main__":
    main()
