"""`PruningCallback`: the one callback `model.fit` needs to train a pruned model.

Example:

>>> import keras, kprune, numpy as np
>>> base_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> model = kprune.prune(base_model, kprune.LinearSparsity(0.0, 0.5, 0, 2, frequency=1))
>>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")
>>> history = model.fit(x, y, batch_size=2, epochs=1, verbose=0,
...                     callbacks=[kprune.PruningCallback()])
>>> history.history["sparsity"]
[0.5]
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from kprune.masks import apply_masks, bind_optimizer, get_masks

__all__ = ["PruningCallback"]


class PruningCallback(keras.callbacks.Callback):
    """Binds the pruning schedules to the optimizer and reports sparsity.

    * `on_train_begin`: `kprune.bind_optimizer(model, model.optimizer)`, so the masks are
      updated inside the compiled train step at the steps the schedule names (the step is
      `optimizer.iterations`, which survives `steps_per_execution`, resumed runs and reloaded
      `.keras` files). Nothing runs in Python per batch.
    * `on_epoch_end`: adds `sparsity` (fraction of zeros over all pruned weights) to the logs,
      so it appears in the progress bar, `History` and Keras' `TensorBoard` callback; with
      `per_layer=True` also `sparsity/<path>` for every pruned variable (paths as in
      `kprune.get_masks`). With
      `log_dir`, writes the global and per-layer sparsity as TensorBoard scalars under
      `log_dir/pruning`.
    * `on_train_end`: re-applies the masks (in case anything, e.g. an EMA swap, wrote non-zero
      values into pruned positions).

    Args:
        log_dir: optional TensorBoard directory for sparsity scalars.
        per_layer: also put per-variable sparsity into the epoch logs.

    Example:

    >>> callback = PruningCallback(log_dir="saved_models/run/logs")
    """

    def __init__(self, log_dir=None, per_layer=False):
        super().__init__()
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.per_layer = bool(per_layer)
        self._writer = None

    def on_train_begin(self, logs=None):
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError(
                "PruningCallback needs a compiled model: call model.compile(optimizer, loss) "
                "before model.fit."
            )
        bind_optimizer(self.model, self.model.optimizer)
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "pruning"))

    def sparsities(self):
        """`(global_sparsity, {variable path: sparsity})` read from the current masks."""
        per_var, zeros, total = {}, 0, 0
        for path, mask in get_masks(self.model).items():
            n_zero = int(mask.size - np.count_nonzero(mask))
            per_var[path] = n_zero / mask.size
            zeros += n_zero
            total += mask.size
        return (zeros / total if total else 0.0), per_var

    def on_epoch_end(self, epoch, logs=None):
        overall, per_var = self.sparsities()
        if logs is not None:
            logs["sparsity"] = overall
            if self.per_layer:
                for path, value in per_var.items():
                    logs[f"sparsity/{path}"] = value
        if self._writer is not None:
            with self._writer.as_default(step=epoch):
                tf.summary.scalar("sparsity/global", overall)
                for path, value in per_var.items():
                    tf.summary.scalar(f"sparsity/{path}", value)
            self._writer.flush()

    def on_train_end(self, logs=None):
        apply_masks(self.model)
        if self._writer is not None:
            self._writer.flush()
