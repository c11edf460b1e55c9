"""Datasets from `.npz` files: the bundled digits and `npz:PATH`, checked before loading.

A usable file holds `x_train, y_train, x_test, y_test`; its shapes and dtypes are checked from
the array headers (nothing is loaded), its labels must be `0 .. num_classes - 1`. `digits` is
only scaled (pixel values 0..16 divided by 16); `npz:` arrays are used as given, except uint8
arrays, which are divided by 255.

Example:

>>> npz_info("digits").input_shape
(8, 8, 1)
"""

from __future__ import annotations

import importlib.resources
import os
import zipfile

import numpy as np
import tensorflow as tf

from kprune.data import pipelines
from kprune.data.dataset import Dataset, DatasetInfo

__all__ = ["NPZ_PREFIX", "NPZ_KEYS", "digits_path", "npz_info", "load_npz"]

NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def digits_path():
    """Path of the bundled digits arrays (`kprune/data/digits.npz`).

    Example:

    >>> digits_path().name
    'digits.npz'
    """
    return importlib.resources.files(__package__) / "digits.npz"


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


def npz_info(name):
    """`DatasetInfo` of `"digits"` or `"npz:PATH"` from the array headers and the labels.

    Raises:
        ValueError: missing or unreadable file, missing keys, mismatched shapes, bad labels.

    Example: see the module docstring.
    """
    path = _npz_source(name)
    try:
        headers = _npz_headers(path)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise ValueError(f"--dataset={name}: {path} is not a readable .npz file ({err})") from err
    _validate_npz_headers(name, path, headers)
    _, _, num_classes = _read_labels(name, path)
    x_train, x_test = headers["x_train"][0], headers["x_test"][0]
    return DatasetInfo(name, _example_shape(x_train), num_classes, x_train[0], x_test[0])


def load_npz(name, batch_size, seed, augment):
    """The `Dataset` of `"digits"` or `"npz:PATH"` (checked by `npz_info` first).

    Example:

    >>> load_npz("digits", batch_size=128, seed=0, augment=False).steps_per_epoch
    12
    """
    info = npz_info(name)
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
    normalize = pipelines.normalizer(scale)

    def finish(ds, augmentation_seeds):
        if augment:
            ds = pipelines.augment_crop_flip(ds, seed, seeds=augmentation_seeds)
        return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    train, epochs = pipelines.training_pipelines(x_train, y_train, batch_size, seed, finish)
    return Dataset(
        name=name,
        input_shape=info.input_shape,
        num_classes=info.num_classes,
        train_size=len(x_train),
        test_size=len(x_test),
        epoch_stream=epochs,
        train=train,
        test=pipelines.batched(
            tf.data.Dataset.from_tensor_slices((x_test, y_test)),
            batch_size,
            transform=lambda ds: ds.map(normalize, tf.data.AUTOTUNE),
        ),
        batch_size=batch_size,
    )
