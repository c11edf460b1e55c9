"""What an export takes in: a Keras model (loaded from a file, stripped) and samples of its inputs.

`export()` accepts calibration and parity data in many forms (a NumPy array, a dict keyed by
input name, a `tf.data.Dataset`, any iterable of batches or of `(x, y)` pairs); `_InputSpec`
and `_take_samples` turn each of them into one form, `{input name: (n, ...) array}`, checked
against the model's inputs, with errors that say which input and shape was expected.

Example:

>>> model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2)])
>>> spec = _InputSpec(model)
>>> spec.names, spec.shapes
(['x'], [(3,)])
>>> _take_samples(np.zeros((5, 3)), 2, spec, "eval_data")["x"].shape
(2, 3)
"""

from __future__ import annotations

import contextlib
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from kprune.api import pruning_wrappers, strip

__all__ = ["load_keras_model"]


def load_keras_model(path):
    """Loads a `.keras` (or legacy `.h5`) model file, with a clear error for anything else.

    kprune's layers are registered on import, so pruned (wrapped) models load too.

    Args:
        path: path to the model file.

    Returns:
        The `keras.Model`.

    Raises:
        ValueError: the path is missing, a directory (e.g. a SavedModel), or not a Keras file.

    Example:

    >>> model = load_keras_model("saved_models/run/model.keras")  # doctest: +SKIP
    >>> load_keras_model("no/such/model.keras")
    Traceback (most recent call last):
    ValueError: Model file not found: 'no/such/model.keras'
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Model file not found: {path!r}")
    if os.path.isdir(path):
        kind = (
            "a SavedModel directory"
            if os.path.exists(os.path.join(path, "saved_model.pb"))
            else "a directory"
        )
        raise ValueError(
            f"{path!r} is {kind}, not a Keras model file. Export needs the .keras file "
            "(model.save('model.keras')), which keeps the layers and their masks."
        )
    with open(path, "rb") as f:
        head = f.read(8)
    is_zip = zipfile.is_zipfile(path)
    is_h5 = head == b"\x89HDF\r\n\x1a\n"
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            is_zip = "config.json" in archive.namelist()
    if not (is_zip or is_h5):
        raise ValueError(
            f"{path!r} is not a Keras model file: a .keras file is a zip archive holding "
            "config.json (written by model.save('model.keras')); legacy .h5 files work too."
        )
    # Custom layers of the model zoo must be registered before loading. Imported here, not at
    # the top: the zoo is optional, and importing it is not free.
    with contextlib.suppress(ImportError):
        import kprune.models  # noqa: F401
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ValueError(
            f"Could not load the Keras model {path!r}: {e}. If it uses custom layers, import "
            "the module that registers them (keras.saving.register_keras_serializable) first."
        ) from e


def _plain_model(model):
    """`model` without PruningWrappers (a stripped copy if it has any); TypeError if no model."""
    if not isinstance(model, keras.Model):
        hint = ""
        if isinstance(model, (str, os.PathLike)):
            hint = " To export a saved file, load it first: kprune.export.load_keras_model(path)."
        raise TypeError(f"`model` must be a keras.Model. Received: {model!r}.{hint}")
    return strip(model) if pruning_wrappers(model) else model


class _InputSpec:
    """Names, per-sample shapes and dtypes of a model's inputs, in the model's input order."""

    def __init__(self, model):
        try:
            inputs = list(model.inputs)
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"Model '{model.name}' ({type(model).__name__}) has no defined inputs, which "
                "the export signature needs. Start Sequential models with keras.Input(shape); "
                "wrap a subclassed model in a functional one: inputs = keras.Input(shape); "
                "keras.Model(inputs, model(inputs))."
            ) from e
        self.names = [t.name for t in inputs]
        self.shapes = [tuple(t.shape[1:]) for t in inputs]
        self.dtypes = [np.dtype(keras.backend.standardize_dtype(t.dtype)) for t in inputs]

    def as_dict(self, x, what):
        """Maps one element of user data (inputs only) to {input name: array}."""
        if isinstance(x, dict):
            missing = [n for n in self.names if n not in x]
            if missing:
                raise ValueError(
                    f"{what}: a dict of inputs must have the model's input names "
                    f"{self.names}; missing {missing}. Received keys: {sorted(x)}"
                )
            arrays = [x[n] for n in self.names]
        elif isinstance(x, (list, tuple)):
            if len(x) != len(self.names):
                raise ValueError(
                    f"{what}: got a sequence of {len(x)} input arrays, but the model has "
                    f"{len(self.names)} inputs {self.names}."
                )
            arrays = list(x)
        else:
            if len(self.names) != 1:
                raise ValueError(
                    f"{what}: the model has {len(self.names)} inputs {self.names}; give a dict "
                    "keyed by input name or a tuple of arrays in input order."
                )
            arrays = [x]
        out = {}
        for name, shape, dtype, array in zip(self.names, self.shapes, self.dtypes, arrays):
            array = np.asarray(array)
            if array.ndim == len(shape):  # one sample: add the batch axis
                array = array[None]
            if array.ndim != len(shape) + 1 or any(
                d is not None and d != a for d, a in zip(shape, array.shape[1:])
            ):
                raise ValueError(
                    f"{what}: input '{name}' expects samples of shape {shape} (batched: "
                    f"(n, *{shape})); received an array of shape {array.shape}."
                )
            out[name] = array.astype(dtype, copy=False)
        return out

    def split_element(self, element):
        """Inputs of a dataset element that may be `x`, `(x,)`, `(x, y)` or `(x, y, w)`."""
        if isinstance(element, (list, tuple)):
            first = element[0] if element else None
            if len(self.names) == 1 or isinstance(first, (dict, list, tuple)):
                return first
        return element

    def synthetic(self, n, seed=0):
        """`n` random samples: uniform [0, 1) for float inputs, 0/1 for integer inputs."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            if any(d is None for d in shape):
                raise ValueError(
                    f"Input '{name}' has an unknown dimension (shape {shape}), so kprune cannot "
                    "make synthetic samples for the parity check; pass `eval_data`."
                )
            if np.issubdtype(dtype, np.integer):
                out[name] = rng.integers(0, 2, size=(n, *shape)).astype(dtype)
            else:
                out[name] = rng.random((n, *shape)).astype(dtype)
        return out


def _take_samples(data, n, spec, what):
    """Up to `n` samples of the model inputs from `data` as {input name: (n', ...) array}."""
    if isinstance(data, (np.ndarray, tf.Tensor, dict)):
        batches = [spec.as_dict(data, what)]
    else:
        if isinstance(data, tf.data.Dataset):
            data = data.as_numpy_iterator()
        try:
            iterator = iter(data)
        except TypeError:
            raise TypeError(
                f"{what} must be a NumPy array, a dict of arrays, a tf.data.Dataset or an "
                f"iterable of batches. Received: {type(data).__name__}"
            ) from None
        batches, count = [], 0
        for element in iterator:
            batch = spec.as_dict(spec.split_element(element), what)
            batches.append(batch)
            count += len(next(iter(batch.values())))
            if count >= n:
                break
    samples = {name: np.concatenate([b[name] for b in batches])[:n] for name in spec.names}
    if len(samples[spec.names[0]]) == 0:
        raise ValueError(f"{what} yielded no samples.")
    return samples


def _num_samples(samples):
    return len(next(iter(samples.values())))


def _chunks(samples, size):
    n = _num_samples(samples)
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in samples.items()}
