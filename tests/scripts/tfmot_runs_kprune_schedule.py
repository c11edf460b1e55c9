"""A tf_keras program: tfmot's prune_low_magnitude driven by a kprune schedule.

Run as a subprocess by tests/test_tfmot_interop.py with TF_USE_LEGACY_KERAS=1 (importing tfmot
switches `tf.keras` to tf_keras, which must not happen in the pytest process). Prints one JSON
line with what the test checks: zero counts of every mask after every batch, the stripped
model's zero counts, and the schedule after config and file round-trips.
"""

import json
import os
import sys
import tempfile

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

import kprune  # noqa: E402
from kprune import tfmot_interop  # noqa: E402

sparsity = tfmot.sparsity.keras


def main():
    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((256, 16), dtype="float32")
    y = (x[:, :8].sum(axis=1) > x[:, 8:].sum(axis=1)).astype("int32")
    # 13 is not a multiple of 5: kprune's forced update at end_step must still happen.
    schedule = tfmot_interop.to_tfmot(
        kprune.LinearSparsity(0.0, 0.9, begin_step=0, end_step=13, frequency=5)
    )
    model = tf_keras.Sequential(
        [
            tf_keras.Input((16,)),
            tf_keras.layers.Dense(128, activation="relu"),
            tf_keras.layers.Dense(2),
        ]
    )
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(
        tf_keras.optimizers.Adam(1e-2),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    zeros_per_batch = []

    class Record(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            zeros_per_batch.append(
                [
                    int(np.sum(mask.numpy() == 0))
                    for layer in pruned.layers
                    for _, mask, _ in layer.pruning_vars
                ]
            )

    pruned.fit(
        x,
        y,
        batch_size=32,
        epochs=2,
        shuffle=False,
        callbacks=[sparsity.UpdatePruningStep(), Record()],
        verbose=0,
    )
    stripped = sparsity.strip_pruning(pruned)
    kernel_zeros = [int(np.sum(layer.kernel.numpy() == 0)) for layer in stripped.layers]

    adapter = pruned.layers[0].pruning_schedule
    with tempfile.TemporaryDirectory() as tmp:
        loaded = {}
        with sparsity.prune_scope():
            for suffix in ("h5", "keras"):
                path = os.path.join(tmp, f"pruned.{suffix}")
                pruned.save(path)
                reloaded = tf_keras.models.load_model(path)
                loaded[suffix] = {
                    "schedule_equal": reloaded.layers[0].pruning_schedule == adapter,
                    "masks_equal": all(
                        np.array_equal(a[1].numpy(), b[1].numpy())
                        for a, b in zip(
                            pruned.layers[0].pruning_vars, reloaded.layers[0].pruning_vars
                        )
                    ),
                }
        layer_config = pruned.layers[0].get_config()
        with sparsity.prune_scope():
            rebuilt = type(pruned.layers[0]).from_config(json.loads(json.dumps(layer_config)))

    from_dict = tfmot_interop.KpruneScheduleForTfmot.from_config(
        json.loads(json.dumps(adapter.get_config()))
    )
    steps = tf.constant(list(range(16)), tf.int64)
    own = [adapter(s) for s in steps]
    inner = [adapter.schedule(s - 1) for s in steps]
    errors = {}
    for name, bad in (("kprune_type", 0.9), ("tfmot_type", sparsity.ConstantSparsity(0.5, 0))):
        try:
            tfmot_interop.to_tfmot(bad)
        except TypeError as error:
            errors[name] = str(error)

    print(
        json.dumps(
            {
                "is_tfmot_schedule": isinstance(adapter, sparsity.PruningSchedule),
                "zeros_per_batch": zeros_per_batch,
                "kernel_zeros": kernel_zeros,
                "loaded": loaded,
                "layer_from_config_equal": rebuilt.pruning_schedule == adapter,
                "config_round_trip_equal": from_dict == adapter,
                "config": adapter.get_config(),
                "aligned": all(
                    bool(a[0]) == bool(b[0]) and float(a[1]) == float(b[1])
                    for a, b in zip(own, inner)
                ),
                "errors": errors,
                "legacy_keras": tf.keras.__name__,
                "modules": sorted(
                    {m.split(".")[0] for m in sys.modules if m.startswith(("tf_keras", "keras"))}
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
