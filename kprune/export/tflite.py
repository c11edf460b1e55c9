"""SavedModel writing and TFLite conversion: converter settings, int8 calibration, clear errors.

The TFLite file is always converted from a SavedModel written by Keras 3 `model.export`, so the
`serving_default` signature (inputs named after the model's `keras.Input`s) is the same in
both artifacts. When the converter fails, `ConversionError` names the Keras layer and the op.

Example:

>>> _converter_settings(sparse=True, quantize="dynamic") == [
...     tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
True
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings

import tensorflow as tf

from kprune._internal.validate import check_choice, check_integer
from kprune.export.inputs import _InputSpec, _num_samples, _plain_model, _take_samples
from kprune.masks import walk_model as _walk

__all__ = [
    "FORMATS",
    "QUANTIZE_MODES",
    "SAVED_MODEL_DIR",
    "TFLITE_FILE",
    "ConversionError",
    "convert_to_tflite",
]

FORMATS = ("saved_model", "tflite")  # what this module writes, in report order
QUANTIZE_MODES = ("none", "dynamic", "int8")
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"


class ConversionError(RuntimeError):
    """The SavedModel export or the TFLite conversion failed.

    Attributes:
        layers: paths of the Keras layers that hold the offending ops (e.g. `["block/gauss"]`),
            as far as they could be read from the converter's message; may be empty.
        ops: names of the TensorFlow ops the converter rejected (e.g. `["Erfinv"]`).

    Example:

    >>> error = ConversionError("no kernel for Erfinv", layers=["gauss"], ops=["Erfinv"])
    >>> error.layers, error.ops
    (['gauss'], ['Erfinv'])
    """

    def __init__(self, message, layers=(), ops=()):
        super().__init__(message)
        self.layers = list(layers)
        self.ops = list(ops)


def _layer_paths_from_message(model, message):
    """Keras layer paths named in the `loc(...)` of a converter error.

    The converter reports the TensorFlow name scope of a failing op, e.g.
    `functional_1/block_1/gauss_1/erfinv/Erfinv`; Keras traces each layer in a scope named
    after it, uniquified with a `_<n>` suffix. The path is walked from the model down,
    keeping components that name a sublayer of the current container.
    """
    # {container path: {layer name: layer}} for every container below the model.
    children = {}
    for layer, prefix in _walk(model):
        children.setdefault(prefix, {})[layer.name] = layer
    paths = []
    for scope in re.findall(r'fused\["\w+:", "([^"@]+)@', message):
        container, found = (), []
        for component in scope.split("/")[:-1]:
            named = children.get(container, {})
            stripped = re.sub(r"_\d+$", "", component)
            child = named.get(stripped) or named.get(component)
            if child is not None:
                found.append(child.name)
                container = (*container, child.name)
        if found:
            path = "/".join(found)
            if path not in paths:
                paths.append(path)
    return paths


def _conversion_error(model, what, error):
    message = str(error)
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)))
    layers = _layer_paths_from_message(model, message)
    located = ""
    if layers:
        located = (
            " in layer" + ("s " if len(layers) > 1 else " ") + ", ".join(f"'{p}'" for p in layers)
        )
    if ops:
        summary = (
            f"The TFLite converter has no builtin kernel for op(s) {ops}{located} of model "
            f"'{model.name}'. Rewrite that layer with supported ops (see "
            "https://ai.google.dev/edge/litert/models/ops_compatibility), or convert it "
            "yourself with SELECT_TF_OPS and ship the Flex delegate."
        )
    else:
        first_line = next((line for line in message.splitlines() if line.strip()), message)
        summary = f"{what} of model '{model.name}' failed{located}: {first_line[:500]}"
    return ConversionError(summary, layers=layers, ops=ops)


def _export_saved_model(model, path):
    try:
        model.export(path, format="tf_saved_model", verbose=False)
    except Exception as e:  # any tracing failure: report it with the layer when we can
        raise _conversion_error(model, "SavedModel export", e) from e


def _converter_settings(sparse, quantize):
    optimizations = []
    if quantize != "none":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    return optimizations


def _convert_saved_model(saved_model_dir, model, *, sparse, quantize, calibration):
    """TFLite bytes from a SavedModel written by `_export_saved_model(model, ...)`."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = _converter_settings(sparse, quantize)
    if quantize == "int8":
        names = list(calibration)

        def representative_dataset():
            for i in range(_num_samples(calibration)):
                yield {name: calibration[name][i : i + 1] for name in names}

        converter.representative_dataset = representative_dataset
        # Full integer: every op must have an int8 kernel (the converter fails otherwise, and
        # we name the layer). Inputs and outputs stay float32, so callers need no rescaling.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():
            # int8 calibration runs tf.lite.Interpreter, which warns that it is deprecated.
            warnings.simplefilter("ignore", UserWarning)
            return converter.convert()
    except Exception as e:
        raise _conversion_error(model, "TFLite conversion", e) from e


def _calibration(spec, quantize, representative_data, n):
    """Calibration samples for `quantize="int8"` (None otherwise); ValueError without data."""
    if quantize != "int8":
        return None
    if representative_data is None:
        raise ValueError(
            "quantize='int8' calibrates activation ranges on real inputs: pass "
            "`representative_data` (e.g. a few hundred training samples, or the training "
            "tf.data pipeline). Received: representative_data=None"
        )
    return _take_samples(representative_data, n, spec, "representative_data")


def convert_to_tflite(
    model, *, sparse=True, quantize="none", representative_data=None, num_calibration_samples=100
):
    """Converts a Keras model to TFLite flatbuffer bytes (nothing is written to `out_dir`).

    Args:
        model: a built `keras.Model` (pruned models are stripped first).
        sparse: store zero-heavy weights in TFLite's sparse format
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`).
        quantize: `"none"` (float32), `"dynamic"` (int8 weights, float activations) or
            `"int8"` (int8 weights and activations, float32 inputs and outputs).
        representative_data: inputs for calibrating `quantize="int8"`, in any form `export()`
            takes.
        num_calibration_samples: how many samples of `representative_data` to use.

    Returns:
        The `.tflite` file contents as bytes.

    Raises:
        ValueError: bad arguments, or `quantize="int8"` without `representative_data`.
        ConversionError: the model cannot be converted (the message names the layer).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> flatbuffer = convert_to_tflite(model)
    >>> flatbuffer[4:8]
    b'TFL3'
    """
    check_choice("quantize", quantize, QUANTIZE_MODES)
    check_integer("num_calibration_samples", num_calibration_samples, 1)
    model = _plain_model(model)
    spec = _InputSpec(model)
    calibration = _calibration(spec, quantize, representative_data, num_calibration_samples)
    with tempfile.TemporaryDirectory(prefix="kprune-export-") as tmp:
        saved_model = os.path.join(tmp, SAVED_MODEL_DIR)
        _export_saved_model(model, saved_model)
        return _convert_saved_model(
            saved_model, model, sparse=sparse, quantize=quantize, calibration=calibration
        )
