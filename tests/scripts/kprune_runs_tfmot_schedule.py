"""A Keras 3 program: kprune.prune driven by a tfmot schedule, next to tfmot itself.

Run as a subprocess by tests/test_tfmot_interop.py without TF_USE_LEGACY_KERAS (kprune and
Keras 3 come first; tfmot is imported only for its schedule objects and for the reference run,
which trains the same network with tfmot on tf_keras in the same process). Prints one JSON line:
mask zero counts after every batch under kprune and under tfmot, schedule values, exact
counts with layer and global scope, and config / `.keras` round-trips.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kprune  # noqa: E402
from kprune import tfmot_interop  # noqa: E402

lazy = {
    "tfmot_imported": any(m.startswith("tensorflow_model_optimization") for m in sys.modules),
    "tf_keras_imported": any(m.startswith("tf_keras") for m in sys.modules),
    "legacy_env": os.environ.get("TF_USE_LEGACY_KERAS"),
}

import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

DATA_RNG = np.random.default_rng(0)
X = DATA_RNG.random((256, 16), dtype="float32")
Y = (X[:, :8].sum(axis=1) > X[:, 8:].sum(axis=1)).astype("int32")
EPOCHS, BATCH = 4, 32  # 32 steps


def kprune_run(schedule, scope="layer"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(2)]
    )
    pruned = kprune.prune(model, schedule, scope=scope)
    pruned.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    zeros = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            zeros.append(
                [
                    int(np.sum(mask.numpy() == 0))
                    for wrapper in kprune.api.pruning_wrappers(pruned)
                    for mask in wrapper.masks
                ]
            )

    pruned.fit(
        X,
        Y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        callbacks=[kprune.PruningCallback(), Record()],
        verbose=0,
    )
    return pruned, zeros


def tfmot_run(schedule):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((16,)),
            tf_keras.layers.Dense(128, activation="relu"),
            tf_keras.layers.Dense(2),
        ]
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(
        tf_keras.optimizers.Adam(1e-2),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    zeros = []

    class Record(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            zeros.append(
                [
                    int(np.sum(mask.numpy() == 0))
                    for layer in pruned.layers
                    for _, mask, _ in layer.pruning_vars
                ]
            )

    pruned.fit(
        X,
        Y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), Record()],
        verbose=0,
    )
    return zeros


def values(schedule, steps):
    out = []
    for step in steps:
        should, target = schedule(tf.constant(step, tf.int64))
        out.append([bool(should), float(target)])
    return out


def main():
    # end - begin = 20 is a multiple of frequency, so tfmot itself reaches 0.9 at step 23.
    native = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, begin_step=3, end_step=23, frequency=5)
    schedule = tfmot_interop.from_tfmot(native)
    steps = list(range(30))
    pruned, kprune_zeros = kprune_run(schedule)
    tfmot_zeros = tfmot_run(native)
    _, global_zeros = kprune_run(tfmot_interop.from_tfmot(native), scope="global")
    stripped = kprune.strip(pruned)

    config = json.loads(json.dumps(schedule.get_config()))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pruned.keras")
        pruned.save(path)
        reloaded = keras.models.load_model(path)
        reloaded_schedule = kprune.api.pruning_wrappers(reloaded)[0].schedule
        masks_equal = all(
            np.array_equal(kprune.get_masks(pruned)[k], v)
            for k, v in kprune.get_masks(reloaded).items()
        )

    constant = tfmot_interop.from_tfmot(tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=1))
    errors = {}
    for name, bad in (
        ("kprune_schedule", kprune.ConstantSparsity(0.5)),
        ("number", 0.5),
        ("align_steps", "yes"),
    ):
        try:
            if name == "align_steps":
                tfmot_interop.from_tfmot(native, align_steps=bad)
            else:
                tfmot_interop.from_tfmot(bad)
        except TypeError as error:
            errors[name] = str(error)

    print(
        json.dumps(
            {
                "lazy": lazy,
                "kprune_zeros": kprune_zeros,
                "tfmot_zeros": tfmot_zeros,
                "global_zeros": global_zeros,
                "stripped_kernel_zeros": [
                    int(np.sum(layer.kernel.numpy() == 0)) for layer in stripped.layers
                ],
                "aligned_values": values(schedule, steps),
                "unaligned_values": values(tfmot_interop.from_tfmot(native, False), steps),
                "native_values": values(native, [s + 1 for s in steps]),
                "native_values_same_step": values(native, steps),
                "config": config,
                "config_round_trip_equal": tfmot_interop.TfmotSchedule.from_config(config)
                == schedule,
                "hash_equal": hash(tfmot_interop.TfmotSchedule.from_config(config))
                == hash(schedule),
                "reloaded_equal": reloaded_schedule == schedule,
                "reloaded_type": type(reloaded_schedule).__name__,
                "reloaded_masks_equal": masks_equal,
                "final_sparsity": schedule.final_sparsity,
                "last_update_step": schedule.last_update_step,
                "constant_final_sparsity": constant.final_sparsity,
                "constant_last_update_step": constant.last_update_step,
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
