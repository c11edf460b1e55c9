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

Example:

>>> data = load_dataset("digits", batch_size=32)
>>> data.input_shape, data.num_classes, data.train_size, data.test_size
((8, 8, 1), 10, 1438, 359)
>>> images, labels = next(iter(data.train))
>>> images.shape
TensorShape([32, 8, 8, 1])
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import zipfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "Dataset",
    "DatasetNotAvailableError",
    "dataset_info",
    "load_dataset",
    "digits_path",
]

NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    input_shape: tuple
    num_classes: int
    train_size: int
    test_size: int
    mean: tuple  # per channel, of the [0, 1]-scaled training images
    std: tuple
    augment: bool  # CIFAR-style crop and flip


# Sizes of the standard splits and per-channel statistics of the training images, so that a
# dry run knows shapes without touching the data.
_TFDS = {
    "mnist": _TfdsSpec((28, 28, 1), 10, 60_000, 10_000, (0.1307,), (0.3081,), False),
    "fashion_mnist": _TfdsSpec((28, 28, 1), 10, 60_000, 10_000, (0.2860,), (0.3530,), False),
    "cifar10": _TfdsSpec(
        (32, 32, 3), 10, 50_000, 10_000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True
    ),
    "cifar100": _TfdsSpec(
        (32, 32, 3), 100, 50_000, 10_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True
    ),
}

DATASET_NAMES = ("digits", *_TFDS)


class DatasetNotAvailableError(ValueError):
    """A tensorflow-datasets dataset is not prepared in `data_dir` (and may not be downloaded).

    Example:

    >>> issubclass(DatasetNotAvailableError, ValueError)
    True
    """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, known without loading it.

    Attributes:
        name: the dataset name as given (e.g. "cifar10", "npz:/data/x.npz").
        input_shape: shape of one example, e.g. `(32, 32, 3)`.
        num_classes: number of classes (labels are `0 .. num_classes - 1`).
        train_size: number of training examples.
        test_size: number of test examples.

    Example:

    >>> dataset_info("cifar10").input_shape
    (32, 32, 3)
    """

    name: str
    input_shape: tuple
    num_classes: int
    train_size: int
    test_size: int


@dataclasses.dataclass(frozen=True)
class Dataset(DatasetInfo):
    """A loaded dataset: `DatasetInfo` plus batched, prefetched `train` and `test` pipelines.

    `train` yields `(images, labels)` batches in a new shuffled (and, for CIFAR, augmented)
    order every epoch; the last batch may be smaller. Labels are int32.

    Example:

    >>> data = load_dataset("digits", batch_size=64)
    >>> data.steps_per_epoch
    23
    """

    train: tf.data.Dataset = None
    test: tf.data.Dataset = None
    batch_size: int = 0
    # `epoch_stream(first_epoch)` -> the endless training stream (see `train_epochs`); None for
    # datasets assembled by hand, whose `train` is all there is.
    epoch_stream: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def steps_per_epoch(self):
        """Number of training batches per epoch (the last one may be partial)."""
        return -(-self.train_size // self.batch_size)

    @property
    def replayable(self):
        """Whether `train_epochs` is available (datasets made by `load_dataset`)."""
        return self.epoch_stream is not None

    def train_epochs(self, first_epoch=0):
        """The training batches of epoch `first_epoch`, then the next epochs, without end.

        Epoch `e` is shuffled (and augmented) from `(seed, e)` alone, with stateless seeds, so
        the stream started at any epoch replays exactly the batches an uninterrupted stream
        gives from that epoch on: a run resumed at epoch `e` trains on the same data as one that
        was never stopped. Each epoch has `steps_per_epoch` batches (the last may be partial);
        train with `model.fit(..., steps_per_epoch=steps_per_epoch, initial_epoch=e)`.

        Raises:
            ValueError: the dataset was assembled by hand (`replayable` is False).

        Example:

        >>> data = load_dataset("digits", batch_size=512)
        >>> [int(y[0]) for _, y in data.train_epochs(1).take(3)] == [
        ...     int(y[0]) for _, y in data.train_epochs(0).skip(3).take(3)]
        True
        """
        if self.epoch_stream is None:
            raise ValueError(
                f"Dataset {self.name!r} was assembled by hand and has no replayable epoch "
                "stream; use its `train` pipeline, or `load_dataset` for one that has."
            )
        if isinstance(first_epoch, bool) or not isinstance(first_epoch, int) or first_epoch < 0:
            raise ValueError(f"`first_epoch` must be an integer >= 0. Received: {first_epoch!r}")
        return self.epoch_stream(first_epoch)


def digits_path():
    """Path of the bundled digits arrays (`kprune/data/digits.npz`).

    Example:

    >>> digits_path().name
    'digits.npz'
    """
    return importlib.resources.files(__name__) / "digits.npz"


# -- info without loading ---------------------------------------------------------------------
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


def _npz_headers(path):
    """`{key: (shape, dtype)}` of the arrays in an .npz file, read from the headers only."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
            headers[member[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return headers


def _npz_source(name):
    if name == "digits":
        return os.fspath(digits_path())
    path = os.path.expanduser(name[len(NPZ_PREFIX) :])
    if not os.path.isfile(path):
        raise ValueError(f"--dataset={name}: file not found: {path}")
    return path


def _validate_npz_headers(name, path, headers):
    missing = [key for key in NPZ_KEYS if key not in headers]
    if missing:
        raise ValueError(
            f"--dataset={name}: {path} lacks the arrays {missing}; it must hold x_train, "
            f"y_train, x_test, y_test. Found: {sorted(headers)}"
        )
    (x_train, x_dtype), (y_train, y_dtype) = headers["x_train"], headers["y_train"]
    (x_test, xt_dtype), (y_test, yt_dtype) = headers["x_test"], headers["y_test"]
    problems = []
    if len(x_train) < 2 or len(x_test) < 1:
        problems.append(f"x_train needs >= 2 examples and x_test >= 1 ({x_train}, {x_test})")
    for key, shape in (("y_train", y_train), ("y_test", y_test)):
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            problems.append(f"{key} must be a vector of integer labels, got shape {shape}")
    if x_train[:1] != y_train[:1]:
        problems.append(f"x_train has {x_train[0]} examples but y_train has {y_train[0]}")
    if x_test[:1] != y_test[:1]:
        problems.append(f"x_test has {x_test[0]} examples but y_test has {y_test[0]}")
    if x_train[1:] != x_test[1:]:
        problems.append(
            f"x_train examples have shape {x_train[1:]} but x_test examples {x_test[1:]}"
        )
    for key, dtype in (("x_train", x_dtype), ("x_test", xt_dtype)):
        if dtype.kind not in "uif":
            problems.append(f"{key} must be numeric, got dtype {dtype}")
    for key, dtype in (("y_train", y_dtype), ("y_test", yt_dtype)):
        if dtype.kind not in "ui":
            problems.append(f"{key} must hold integer labels, got dtype {dtype}")
    if problems:
        raise ValueError(f"--dataset={name}: {path} is not usable: " + "; ".join(problems))


def _read_labels(name, path):
    with np.load(path, allow_pickle=False) as arrays:
        y_train = np.asarray(arrays["y_train"]).reshape(-1)
        y_test = np.asarray(arrays["y_test"]).reshape(-1)
    low = min(int(y_train.min()), int(y_test.min()))
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    if low < 0 or num_classes < 2:
        raise ValueError(
            f"--dataset={name}: labels must be integers 0 .. num_classes - 1 with at least 2 "
            f"classes; found labels from {low} to {num_classes - 1}"
        )
    return y_train, y_test, num_classes


def _example_shape(shape):
    # (N, H, W) grayscale images get a channel axis; vectors and (H, W, C) images stay as they are.
    return (*shape[1:], 1) if len(shape) == 3 else tuple(shape[1:])


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
    if name in _TFDS:
        spec = _TFDS[name]
        return DatasetInfo(
            name, spec.input_shape, spec.num_classes, spec.train_size, spec.test_size
        )
    path = _npz_source(name)
    try:
        headers = _npz_headers(path)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise ValueError(f"--dataset={name}: {path} is not a readable .npz file ({err})") from err
    _validate_npz_headers(name, path, headers)
    _, _, num_classes = _read_labels(name, path)
    x_train, x_test = headers["x_train"][0], headers["x_test"][0]
    return DatasetInfo(name, _example_shape(x_train), num_classes, x_train[0], x_test[0])


# -- pipelines --------------------------------------------------------------------------------
def _with_data_sharding(ds):
    # Multi-worker training: every worker reads the same pipeline and keeps its share of each
    # global batch, so the batches are those of a single-process run (file-based sharding
    # would give each worker different files, i.e. other batches).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _batched(ds, batch_size, *, transform=None):
    ds = ds.cache()
    if transform is not None:
        ds = transform(ds)
    return _with_data_sharding(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _training_pipelines(x, y, batch_size, seed, finish):
    """`(train, epochs)` over the training arrays: a reshuffled epoch per iteration of `train`,
    and `epochs(first_epoch)`, the replayable endless stream.

    `finish(ds, augmentation_seeds)` augments (if it does), normalizes and batches a dataset of
    `(image, label)` examples; `augmentation_seeds` is a dataset of one int64 pair per example.
    The stream orders epoch `e` by a stateless permutation of `(seed, e)` and seeds its
    augmentation with `(key(seed, e), position)`: no tf.data random state is involved, so the
    stream from epoch `e` on is the same in every process, whatever TensorFlow's global seed.
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
        stream = tf.data.Dataset.range(first_epoch, _ENDLESS).flat_map(one_epoch)
        return _with_data_sharding(stream.prefetch(tf.data.AUTOTUNE))

    return _with_data_sharding(train.prefetch(tf.data.AUTOTUNE)), epochs


_ENDLESS = 2**62  # epochs of the "endless" stream: fit stops it after epochs * steps_per_epoch


def _as_arrays(ds):
    """`(x, y)` numpy arrays of a dataset of `(image, label)` examples (read once)."""
    xs, ys = [], []
    for x, y in ds.batch(4096):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _augment_crop_flip(ds, seed, pad=4, seeds=None):
    """Zero-pad by `pad`, random crop back to size, random left-right flip (stateless, seeded).

    One seed pair per example comes from `seeds` (a dataset), else from a random stream drawn
    anew at every iteration from `seed`.
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


def _normalizer(scale, mean=None, std=None):
    def normalize(image, label):
        image = tf.cast(image, tf.float32) * scale
        if mean is not None:
            image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
        return image, tf.cast(label, tf.int32)

    return normalize


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


def _load_tfds(name, batch_size, data_dir, seed, augment, download):
    import tensorflow_datasets as tfds  # imported here: slow, and unused by digits and npz

    spec = _TFDS[name]
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
    normalize = _normalizer(1.0 / 255.0, spec.mean, spec.std)
    use_augment = spec.augment if augment is None else augment

    def finish(ds, augmentation_seeds):
        if use_augment:
            ds = _augment_crop_flip(ds, seed, seeds=augmentation_seeds)
        return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    # The training split is held in memory as arrays (as the former cache() did), so that the
    # replayable stream can read it by index.
    train_ds, epochs = _training_pipelines(*_as_arrays(train), batch_size, seed, finish)
    return Dataset(
        name=name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        train_size=sizes[0],
        test_size=sizes[1],
        train=train_ds,
        test=_batched(test, batch_size, transform=lambda ds: ds.map(normalize, tf.data.AUTOTUNE)),
        batch_size=batch_size,
        epoch_stream=epochs,
    )


def _load_arrays(name, batch_size, seed, augment):
    info = dataset_info(name)
    path = _npz_source(name)
    with np.load(path, allow_pickle=False) as arrays:
        x_train, x_test = arrays["x_train"], arrays["x_test"]
        y_train = arrays["y_train"].reshape(-1).astype(np.int32)
        y_test = arrays["y_test"].reshape(-1).astype(np.int32)
    x_train = x_train.reshape((len(x_train), *info.input_shape))
    x_test = x_test.reshape((len(x_test), *info.input_shape))
    if name == "digits":
        scale = 1.0 / 16.0
    elif x_train.dtype == np.uint8:
        scale = 1.0 / 255.0
    else:
        scale = 1.0
    normalize = _normalizer(scale)

    def finish(ds, augmentation_seeds):
        if augment:
            ds = _augment_crop_flip(ds, seed, seeds=augmentation_seeds)
        return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    train, epochs = _training_pipelines(x_train, y_train, batch_size, seed, finish)
    return Dataset(
        name=name,
        input_shape=info.input_shape,
        num_classes=info.num_classes,
        train_size=len(x_train),
        test_size=len(x_test),
        epoch_stream=epochs,
        train=train,
        test=_batched(
            tf.data.Dataset.from_tensor_slices((x_test, y_test)),
            batch_size,
            transform=lambda ds: ds.map(normalize, tf.data.AUTOTUNE),
        ),
        batch_size=batch_size,
    )


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1. Received: {batch_size!r}")
    _check_name(name)
    if name in _TFDS:
        return _load_tfds(name, batch_size, data_dir, seed, augment, download)
    if augment and len(dataset_info(name).input_shape) != 3:
        raise ValueError(f"augment=True needs images of shape (H, W, C); {name} has other shapes")
    return _load_arrays(name, batch_size, seed, bool(augment))
