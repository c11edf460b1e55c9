"""The `tf.data` streams kprune trains and evaluates on, built from in-memory examples.

Training: a reshuffled (and optionally augmented) epoch per iteration of `train`, and the
replayable endless stream of `epochs(first_epoch)`, in which epoch `e` depends on the seed and
`e` only. Evaluation: cached, batched, never shuffled. Under a multi-worker strategy every
worker reads the same stream and takes its share of each global batch.

Example:

>>> import numpy as np
>>> x, y = np.zeros((5, 2, 2, 1), "uint8"), np.arange(5)
>>> finish = lambda ds, seeds: ds.map(normalizer(1 / 255)).batch(2)
>>> train, epochs = training_pipelines(x, y, 2, 0, finish)
>>> [len(labels) for _, labels in epochs(0).take(4)]
[2, 2, 1, 2]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "ENDLESS",
    "as_arrays",
    "augment_crop_flip",
    "batched",
    "normalizer",
    "training_pipelines",
]

ENDLESS = 2**62  # epochs of the "endless" stream: fit stops it after epochs * steps_per_epoch


def _with_data_sharding(ds):
    # Multi-worker training: every worker reads the same pipeline and keeps its share of each
    # global batch, so the batches are those of a single-process run (file-based sharding
    # would give each worker different files, i.e. other batches).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def batched(ds, batch_size, *, transform=None):
    """The evaluation stream: `ds` cached, transformed, batched, prefetched, data-sharded.

    Example:

    >>> ds = tf.data.Dataset.range(5)
    >>> [len(b) for b in batched(ds, 2)]
    [2, 2, 1]
    """
    ds = ds.cache()
    if transform is not None:
        ds = transform(ds)
    return _with_data_sharding(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def training_pipelines(x, y, batch_size, seed, finish):
    """`(train, epochs)` over the training arrays: a reshuffled epoch per iteration of `train`,
    and `epochs(first_epoch)`, the replayable endless stream.

    `finish(ds, augmentation_seeds)` augments (if it does), normalizes and batches a dataset of
    `(image, label)` examples; `augmentation_seeds` is a dataset of one int64 pair per example.
    The stream orders epoch `e` by a stateless permutation of `(seed, e)` and seeds its
    augmentation with `(key(seed, e), position)`: no tf.data random state is involved, so the
    stream from epoch `e` on is the same in every process, whatever TensorFlow's global seed.

    Example: see the module docstring.
    """
    size = len(x)
    # One copy of the split in memory, shared by both pipelines (the stream gathers by index).
    images, labels = tf.constant(x), tf.constant(y)
    train = finish(
        tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(
            size, seed=seed, reshuffle_each_iteration=True
        ),
        tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2),
    )

    def one_epoch(epoch):
        pair = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), pair)
        key = tf.random.stateless_uniform([], pair, minval=0, maxval=2**62, dtype=tf.int64)
        examples = tf.data.Dataset.from_tensor_slices(order).map(
            lambda i: (tf.gather(images, i), tf.gather(labels, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        seeds = tf.data.Dataset.range(size).map(lambda position: tf.stack([key, position]))
        return finish(examples, seeds)

    def epochs(first_epoch):
        stream = tf.data.Dataset.range(first_epoch, ENDLESS).flat_map(one_epoch)
        return _with_data_sharding(stream.prefetch(tf.data.AUTOTUNE))

    return _with_data_sharding(train.prefetch(tf.data.AUTOTUNE)), epochs


def as_arrays(ds):
    """`(x, y)` numpy arrays of a dataset of `(image, label)` examples (read once).

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices((np.zeros((3, 2)), np.arange(3)))
    >>> [a.shape for a in as_arrays(ds)]
    [(3, 2), (3,)]
    """
    xs, ys = [], []
    for x, y in ds.batch(4096):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def augment_crop_flip(ds, seed, pad=4, seeds=None):
    """Zero-pad by `pad`, random crop back to size, random left-right flip (stateless, seeded).

    One seed pair per example comes from `seeds` (a dataset), else from a random stream drawn
    anew at every iteration from `seed`.

    Example:

    >>> ds = tf.data.Dataset.from_tensors((tf.ones((6, 6, 1)), 0)).repeat(2)
    >>> [tuple(x.shape) for x, _ in augment_crop_flip(ds, seed=0)]
    [(6, 6, 1), (6, 6, 1)]
    """
    if seeds is None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augment(example, op_seed):
        image, label = example
        shape = tf.shape(image)
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
        image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image, label

    return tf.data.Dataset.zip((ds, seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)


def normalizer(scale, mean=None, std=None):
    """`(image, label) -> (float32 image * scale, standardized if mean/std given; int32 label)`.

    Example:

    >>> image, label = normalizer(0.5)(tf.constant([2, 4]), 3)
    >>> image.numpy().tolist(), label.dtype.name
    ([1.0, 2.0], 'int32')
    """

    def normalize(image, label):
        image = tf.cast(image, tf.float32) * scale
        if mean is not None:
            image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
        return image, tf.cast(label, tf.int32)

    return normalize
