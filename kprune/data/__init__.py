"""Datasets as batched `tf.data` pipelines: tensorflow-datasets, your own arrays, bundled digits.

| name            | source                                       | example shape | classes |
|-----------------|----------------------------------------------|---------------|---------|
| `digits`        | bundled with kprune (UCI digits, 1,797 imgs) | 8x8x1         | 10      |
| `mnist`         | tensorflow-datasets                          | 28x28x1       | 10      |
| `fashion_mnist` | tensorflow-datasets                          | 28x28x1       | 10      |
| `cifar10`       | tensorflow-datasets                          | 32x32x3       | 10      |
| `cifar100`      | tensorflow-datasets                          | 32x32x3       | 100     |
| `npz:PATH`      | a `.npz` file with `x_train, y_train, x_test, y_test` | any  | max(y) + 1 |

Pipelines: the decoded uint8 images are cached in memory, shuffled every epoch (seeded),
augmented (CIFAR only: zero-pad 4 pixels, random 32x32 crop, random horizontal flip, with
stateless seeded ops), scaled to [0, 1], normalized per channel (tfds datasets), batched and
prefetched with `AUTOTUNE`. The test split is neither shuffled nor augmented. `train` draws a
new order at every iteration; `train_epochs(e)` is the stream kprune trains on, in which the
order and augmentation of epoch `e` depend on the seed and `e` only, so a resumed run replays
the batches of an uninterrupted one. Under a multi-worker strategy every worker reads the same
stream and takes its share of each global batch (`AutoShardPolicy.DATA`). `digits` is only
scaled (pixel values 0..16 divided by 16); `npz:` arrays are used as given, except uint8 arrays,
which are divided by 255.

tensorflow-datasets never downloads unless asked (`download=True`): a dataset missing from
`data_dir` raises `DatasetNotAvailableError` that says how to prepare it.

The package: `dataset.py` (what a dataset is), `npz.py` (digits and `npz:` files, with their
checks), `tfds.py` (the tensorflow-datasets loaders), `pipelines.py` (the tf.data streams).

Example:

>>> data = load_dataset("digits", batch_size=32)
>>> data.input_shape, data.num_classes, data.train_size, data.test_size
((8, 8, 1), 10, 1438, 359)
>>> images, labels = next(iter(data.train))
>>> images.shape
TensorShape([32, 8, 8, 1])
"""

from __future__ import annotations

from kprune._internal.validate import check_integer
from kprune.data.dataset import Dataset, DatasetInfo, DatasetNotAvailableError
from kprune.data.npz import NPZ_KEYS, NPZ_PREFIX, digits_path, load_npz, npz_info
from kprune.data.tfds import TFDS, load_tfds

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "Dataset",
    "DatasetNotAvailableError",
    "dataset_info",
    "load_dataset",
    "digits_path",
    "NPZ_PREFIX",
    "NPZ_KEYS",
]

DATASET_NAMES = ("digits", *TFDS)


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ValueError(f"Dataset name must be a non-empty string. Received: {name!r}")
    if name.startswith(NPZ_PREFIX):
        if not name[len(NPZ_PREFIX) :]:
            raise ValueError("`npz:` needs a path, e.g. --dataset=npz:/data/my_arrays.npz")
        return
    if name not in DATASET_NAMES:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASET_NAMES)}, or "
            "npz:PATH for a .npz file with arrays x_train, y_train, x_test, y_test."
        )


def dataset_info(name, data_dir=None):
    """Shape, class count and split sizes of a dataset, without loading the images.

    For tfds datasets this is a fixed table (nothing is read); for `npz:` files and `digits`
    only the array headers and the labels are read, and the file is validated.

    Args:
        name: one of `DATASET_NAMES` or `"npz:PATH"`.
        data_dir: unused for the fixed table; accepted for symmetry with `load_dataset`.

    Returns:
        A `DatasetInfo`.

    Raises:
        ValueError: unknown name, missing file, or an .npz file with missing keys or
            mismatched shapes.

    Example:

    >>> dataset_info("mnist")
    DatasetInfo(name='mnist', input_shape=(28, 28, 1), num_classes=10, train_size=60000, \
test_size=10000)
    """
    del data_dir  # the table does not depend on where the data lives
    _check_name(name)
    if name in TFDS:
        spec = TFDS[name]
        return DatasetInfo(
            name, spec.input_shape, spec.num_classes, spec.train_size, spec.test_size
        )
    return npz_info(name)


def load_dataset(name, batch_size, *, data_dir=None, seed=0, augment=None, download=False):
    """Loads a dataset as batched, prefetched `tf.data` pipelines.

    Args:
        name: one of `DATASET_NAMES` ("digits", "mnist", "fashion_mnist", "cifar10",
            "cifar100") or `"npz:PATH"`.
        batch_size: examples per batch, >= 1.
        data_dir: tensorflow-datasets directory (default: tfds' own, `~/tensorflow_datasets` or
            `$TFDS_DATA_DIR`).
        seed: seed of the shuffling and augmentation.
        augment: crop-and-flip augmentation of the training images; None means the standard
            choice (on for CIFAR, off otherwise). Needs images of shape (H, W, C).
        download: let tensorflow-datasets download and prepare a missing dataset.

    Returns:
        A `Dataset`.

    Raises:
        ValueError: unknown name, bad batch size, unusable .npz file.
        DatasetNotAvailableError: a tfds dataset that is not prepared in `data_dir`.

    Example:

    >>> load_dataset("digits", batch_size=128).steps_per_epoch
    12
    """
    batch_size = check_integer("batch_size", batch_size, 1)
    _check_name(name)
    if name in TFDS:
        return load_tfds(name, batch_size, data_dir, seed, augment, download)
    if augment and len(dataset_info(name).input_shape) != 3:
        raise ValueError(f"augment=True needs images of shape (H, W, C); {name} has other shapes")
    return load_npz(name, batch_size, seed, bool(augment))
