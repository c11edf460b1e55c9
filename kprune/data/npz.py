"""Datasets from `.npz` files: the bundled digits and `npz:PATH`, checked before loading.

A usable file holds `x_train, y_train, x_test, y_test`; its shapes and dtypes are checked from
the array headers (nothing is loaded): `x` of shape `(N, features)`, `(N, H, W)` or
`(N, H, W, C)` (or more axes, for a model that takes them) with at least 2 training and 1 test
example, integer label vectors of matching length. Its labels must be `0 .. num_classes - 1`
(`num_classes = max label + 1`); a class that never occurs in `y_train`, or a stray label far
above the others (most of `0 .. max` absent), is logged as a WARNING with the class count it
implies. Float `x` arrays with NaN or inf are refused when loaded. `digits` is only scaled
(pixel values 0..16 divided by 16); `npz:` arrays are used as given, except uint8 arrays, which
are divided by 255.

Example:

>>> npz_info("digits").input_shape
(8, 8, 1)
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import zipfile

import numpy as np
import tensorflow as tf

from kprune.data import pipelines
from kprune.data.dataset import Dataset, DatasetInfo

__all__ = ["NPZ_PREFIX", "NPZ_KEYS", "digits_path", "npz_info", "load_npz"]

_log = logging.getLogger(__name__)

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
    for key, shape in (("x_train", x_train), ("x_test", x_test)):
        if len(shape) < 2:  # one number per example: almost surely a flattened or label array
            raise ValueError(
                f"--dataset={name}: {path}: {key} has shape {shape}; it must be (N, features), "
                "(N, H, W) or (N, H, W, C), with the N examples first."
            )
    problems = []
    for key, count, least in (("x_train", x_train[0], 2), ("x_test", x_test[0], 1)):
        if count < least:
            problems.append(f"{key} has {count} examples; it needs at least {least}")
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
    _warn_about_labels(name, path, y_train, y_test, num_classes)
    return y_train, y_test, num_classes


_warned = set()  # (path, size, mtime) of files already warned about: npz_info runs repeatedly


def _warn_about_labels(name, path, y_train, y_test, num_classes):
    """Logs a WARNING for labels that make `num_classes = max label + 1` look unintended."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _warned:
        return
    present = np.unique(np.concatenate([y_train, y_test]))
    implied = f"num_classes = max label + 1 = {num_classes}"
    if present.size * 2 < num_classes:  # most of 0 .. max never occur: a stray large label
        _warned.add(key)
        top = ", ".join(str(int(v)) for v in present[::-1][:3])
        _log.warning(
            "--dataset=%s: the labels imply %s (an output layer of %d units), but only %d "
            "distinct labels occur (largest: %s). Remap the labels to 0 .. %d if that is not "
            "meant.",
            name, implied, num_classes, present.size, top, present.size - 1,
        )  # fmt: skip
        return
    absent = np.setdiff1d(np.arange(num_classes), y_train)
    if absent.size:
        _warned.add(key)
        shown = ", ".join(str(int(v)) for v in absent[:10]) + (", ..." if absent.size > 10 else "")
        _log.warning(
            "--dataset=%s: %d of the %d classes (%s) never occur in y_train, so the model "
            "cannot learn them%s; the labels imply %s.",
            name, absent.size, num_classes, shown,
            " (they occur in y_test)" if np.isin(absent, y_test).any() else "", implied,
        )  # fmt: skip


def _check_finite_pixels(name, path, key, x):
    """Refuses float arrays holding NaN or inf: they would turn every loss and score into NaN."""
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x)
    count = int(np.count_nonzero(bad))
    if count:
        examples = int(np.count_nonzero(bad.reshape(len(x), -1).any(axis=1)))
        raise ValueError(
            f"--dataset={name}: {path}: {key} holds {count} NaN/inf values in {examples} of its "
            f"{len(x)} examples. Replace or drop them before training."
        )


def _example_shape(shape):
    # (N, H, W) grayscale images get a channel axis; vectors and (H, W, C) images stay as they are.
    return (*shape[1:], 1) if len(shape) == 3 else tuple(shape[1:])


def npz_info(name):
    """`DatasetInfo` of `"digits"` or `"npz:PATH"` from the array headers and the labels.

    Raises:
        ValueError: missing or unreadable file, missing keys, `x` with fewer than 2 axes
            (it must be (N, features), (N, H, W) or (N, H, W, C)), too few examples,
            mismatched shapes, labels that are not integers 0 .. num_classes - 1.

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

    Raises:
        ValueError: as `npz_info`, and float `x_train`/`x_test` holding NaN or inf (the message
            counts the values and the examples).

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
    _check_finite_pixels(name, path, "x_train", x_train)
    _check_finite_pixels(name, path, "x_test", x_test)
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
