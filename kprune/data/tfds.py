"""The tensorflow-datasets loaders: mnist, fashion_mnist, cifar10, cifar100.

Split sizes and per-channel statistics are a fixed table, so a dry run knows shapes without
touching the data. Images are scaled to [0, 1] and normalized per channel; CIFAR's training
images are augmented (zero-pad 4 pixels, random 32x32 crop, random horizontal flip).
tensorflow-datasets never downloads unless asked (`download=True`): a dataset missing from
`data_dir` raises `DatasetNotAvailableError` that says how to prepare it.

Example:

>>> TFDS["cifar10"].input_shape, TFDS["cifar10"].augment
((32, 32, 3), True)
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from kprune.data import pipelines
from kprune.data.dataset import Dataset, DatasetNotAvailableError

__all__ = ["TFDS", "TfdsSpec", "load_tfds"]


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """Shape, classes, split sizes and training-image statistics of one tfds dataset."""

    input_shape: tuple
    num_classes: int
    train_size: int
    test_size: int
    mean: tuple  # per channel, of the [0, 1]-scaled training images
    std: tuple
    augment: bool  # CIFAR-style crop and flip


TFDS = {
    "mnist": TfdsSpec((28, 28, 1), 10, 60_000, 10_000, (0.1307,), (0.3081,), False),
    "fashion_mnist": TfdsSpec((28, 28, 1), 10, 60_000, 10_000, (0.2860,), (0.3530,), False),
    "cifar10": TfdsSpec(
        (32, 32, 3), 10, 50_000, 10_000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True
    ),
    "cifar100": TfdsSpec(
        (32, 32, 3), 100, 50_000, 10_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True
    ),
}


def _tfds_not_available(name, data_dir, err, download):
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    target = data_dir or "DIR"
    if download:
        reason = f"tensorflow-datasets could not download and prepare it ({err})"
    else:
        reason = "it is not prepared there, and downloads are off (pass --download to allow them)"
    return DatasetNotAvailableError(
        f"Dataset {name!r} is not available in data_dir={where}: {reason}. To prepare it on a "
        "machine with network access, run\n"
        f"    python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{target}').download_and_prepare()\"\n"
        f"then copy that directory here and pass --data_dir={target} (or set TFDS_DATA_DIR). "
        "Without network, use --dataset=digits (bundled) or --dataset=npz:PATH."
    )


def load_tfds(name, batch_size, data_dir, seed, augment, download):
    """The `Dataset` of tfds dataset `name` (a key of `TFDS`); `augment=None`: the table's.

    Raises:
        DatasetNotAvailableError: not prepared in `data_dir` (or the download failed).

    Example:

    >>> load_tfds("mnist", 32, "/nonexistent", 0, None, False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    kprune.data.dataset.DatasetNotAvailableError: Dataset 'mnist' is not available ...
    """
    import tensorflow_datasets as tfds  # imported here: slow, and unused by digits and npz

    spec = TFDS[name]
    try:
        splits, info = tfds.load(
            name,
            split=["train", "test"],
            as_supervised=True,
            data_dir=data_dir,
            download=download,
            with_info=True,
        )
    except AssertionError as err:  # tfds' way of saying "not prepared in data_dir"
        raise _tfds_not_available(name, data_dir, err, download) from err
    except Exception as err:  # download failures come in many types (network, checksum, disk)
        if not download:
            raise
        raise _tfds_not_available(name, data_dir, err, download) from err
    train, test = splits
    sizes = []
    for split, ds in (("train", train), ("test", test)):
        known = info.splits[split].num_examples if split in info.splits else 0
        # Split sizes are missing only for synthetic data (tfds.testing.mock_data): count.
        sizes.append(int(known) if known else int(ds.reduce(0, lambda n, _: n + 1)))
    normalize = pipelines.normalizer(1.0 / 255.0, spec.mean, spec.std)
    use_augment = spec.augment if augment is None else augment

    def finish(ds, augmentation_seeds):
        if use_augment:
            ds = pipelines.augment_crop_flip(ds, seed, seeds=augmentation_seeds)
        return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    # The training split is held in memory as arrays (as the former cache() did), so that the
    # replayable stream can read it by index.
    x, y = pipelines.as_arrays(train)
    train_ds, epochs = pipelines.training_pipelines(x, y, batch_size, seed, finish)
    return Dataset(
        name=name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        train_size=sizes[0],
        test_size=sizes[1],
        train=train_ds,
        test=pipelines.batched(
            test, batch_size, transform=lambda ds: ds.map(normalize, tf.data.AUTOTUNE)
        ),
        batch_size=batch_size,
        epoch_stream=epochs,
    )
