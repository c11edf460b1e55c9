"""Export a pruned Keras model for deployment: SavedModel and sparse TFLite, with checks.

`export(model, out_dir)` writes, into `out_dir`:

* `saved_model/`: a TensorFlow SavedModel made by Keras 3 `model.export`, with a
  `serving_default` signature whose inputs carry the names of the model's `keras.Input`s;
* `model.tflite`: a TFLite (LiteRT) flatbuffer converted with
  `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`, so zero-heavy weight tensors are stored in a
  compressed sparse format; optionally with dynamic-range int8 weights (`quantize="dynamic"`)
  or fully int8 (`quantize="int8"`, calibrated on a representative dataset);
* `export_report.json`: sizes (bytes and gzip bytes) of each artifact next to those of a
  dense export of the same architecture, the sparsity of every weight tensor as read back from
  the exported files, and a parity check of each artifact against the Keras model.

All files are written into a temporary directory next to `out_dir`, which replaces `out_dir`
only once everything has been converted and checked, so a failed export leaves nothing behind.

The same module is the command-line entry point:

    python -m kprune.export --model=run/model.keras --out=run/export --quantize=int8 \\
        --data_npz=calibration.npz

Example:

>>> from kprune.export import export
>>> report = export(kprune.strip(pruned), "export/")  # doctest: +SKIP
>>> report["artifacts"]["tflite"]["ratio"]  # sparse bytes / dense bytes  # doctest: +SKIP
0.15
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from kprune.api import _walk, _weight_key, pruning_wrappers, sparsity_report, strip
from kprune.targets import is_prunable, prunable_weights
from kprune.versions import versions

__all__ = [
    "FORMATS",
    "QUANTIZE_MODES",
    "ConversionError",
    "ParityError",
    "compare_outputs",
    "convert_to_tflite",
    "export",
    "format_export_report",
    "load_keras_model",
    "make_interpreter",
    "read_tflite_weights",
]

FORMATS = ("saved_model", "tflite")
QUANTIZE_MODES = ("none", "dynamic", "int8")
RUNTIMES = ("auto", "litert", "tflite")
REPORT_FILE = "export_report.json"
TFLITE_FILE = "model.tflite"
SAVED_MODEL_DIR = "saved_model"
SIGNATURE_KEY = "serving_default"

# Ops the converter puts between a stored weight tensor and the op that uses it.
_WEIGHT_PASSTHROUGH_OPS = ("DENSIFY", "DEQUANTIZE")
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 9: np.int8, 10: np.float64}


class ConversionError(RuntimeError):
    """The SavedModel export or the TFLite conversion failed.

    Attributes:
        layers: paths of the Keras layers that hold the offending ops (e.g. `["block/gauss"]`),
            as far as they could be read from the converter's message; may be empty.
        ops: names of the TensorFlow ops the converter rejected (e.g. `["Erfinv"]`).

    Example:

    >>> try:
    ...     export(model_with_erfinv, "out")  # doctest: +SKIP
    ... except ConversionError as e:
    ...     print(e.layers, e.ops)
    ['gauss'] ['Erfinv']
    """

    def __init__(self, message, layers=(), ops=()):
        super().__init__(message)
        self.layers = list(layers)
        self.ops = list(ops)


class ParityError(RuntimeError):
    """A float32 artifact disagrees with the Keras model on too many samples.

    Raised by `export()` after the artifacts and `export_report.json` have been written, so
    they can be inspected; `report` is the report as a dict.

    Example:

    >>> try:
    ...     export(model, "out")  # doctest: +SKIP
    ... except ParityError as e:
    ...     print(e.report["parity"]["failures"])
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


# -- validation -----------------------------------------------------------------------------
def _check_formats(formats):
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        formats = list(formats)
    except TypeError:
        raise TypeError(
            f"`formats` must be a sequence of names from {FORMATS} (or a comma-separated "
            f"string). Received: formats={formats!r}"
        ) from None
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ValueError(
            f"`formats` must name one or more of {FORMATS}. Received: formats={formats!r}"
        )
    return tuple(f for f in FORMATS if f in formats)


def _check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}")
    return float(value)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
    return value


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}")
    return value


# -- input samples --------------------------------------------------------------------------
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


# -- SavedModel and TFLite conversion -------------------------------------------------------
def _layer_paths_from_message(model, message):
    """Keras layer paths named in the `loc(...)` of a converter error.

    The converter reports the TensorFlow name scope of a failing op, e.g.
    `functional_1/block_1/gauss_1/erfinv/Erfinv`; Keras traces each layer in a scope named
    after it, uniquified with a `_<n>` suffix. The path is walked from the model down,
    keeping components that name a sublayer of the current container.
    """
    paths = []
    for scope in re.findall(r'fused\["\w+:", "([^"@]+)@', message):
        container, found = model, []
        for component in scope.split("/")[:-1]:
            children = {
                layer.name: layer
                for layer in getattr(container, "_flatten_layers", lambda **_: [])(
                    include_self=False, recursive=False
                )
            }
            stripped = re.sub(r"_\d+$", "", component)
            child = children.get(stripped) or children.get(component)
            if child is not None:
                found.append(child.name)
                container = child
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

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> flatbuffer = convert_to_tflite(model)
    >>> flatbuffer[4:8]
    b'TFL3'
    """
    _check_choice("quantize", quantize, QUANTIZE_MODES)
    _check_count("num_calibration_samples", num_calibration_samples)
    model = _plain_model(model)
    spec = _InputSpec(model)
    calibration = _calibration(spec, quantize, representative_data, num_calibration_samples)
    with tempfile.TemporaryDirectory(prefix="kprune-export-") as tmp:
        saved_model = os.path.join(tmp, SAVED_MODEL_DIR)
        _export_saved_model(model, saved_model)
        return _convert_saved_model(
            saved_model, model, sparse=sparse, quantize=quantize, calibration=calibration
        )


def _calibration(spec, quantize, representative_data, n):
    if quantize != "int8":
        return None
    if representative_data is None:
        raise ValueError(
            "quantize='int8' calibrates activation ranges on real inputs: pass "
            "`representative_data` (e.g. a few hundred training samples, or the training "
            "tf.data pipeline). Received: representative_data=None"
        )
    return _take_samples(representative_data, n, spec, "representative_data")


# -- reading weights back from the files ----------------------------------------------------
def _tflite_schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def read_tflite_weights(tflite):
    """The weight tensors stored in a `.tflite` file, read from its flatbuffer.

    A weight tensor is a constant of rank >= 2 (float or int8) that feeds an op directly or
    through `DENSIFY`/`DEQUANTIZE`. For sparse-encoded tensors, `stored` counts the values kept
    in the file (whole blocks for block-sparse formats) and `nonzero` counts the non-zero ones
    among them, so `nonzero` is exact for every encoding.

    Args:
        tflite: the file contents (bytes) or a path.

    Returns:
        A list of dicts, in op order: `tensor` (name in the file), `op` (first op using it),
        `shape`, `dtype`, `encoding` (`"sparse"` or `"dense"`), `total`, `stored`, `nonzero`,
        `sparsity` (None where zeros cannot be told from the file, e.g. non-zero zero-points).

    Example:

    >>> rows = read_tflite_weights(convert_to_tflite(model))  # doctest: +SKIP
    >>> rows[0]["op"], rows[0]["encoding"]
    ('FULLY_CONNECTED', 'sparse')
    """
    if isinstance(tflite, (str, os.PathLike)):
        with open(tflite, "rb") as f:
            tflite = f.read()
    schema = _tflite_schema()
    buf = bytearray(tflite)
    model = schema.Model.GetRootAs(buf, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?"))
    rows, seen = [], set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        producer = {}
        for op in ops:
            for out in op.OutputsAsNumpy() if op.OutputsLength() else []:
                producer[int(out)] = op
        for op in ops:
            op_name = codes[op.OpcodeIndex()]
            if op_name in _WEIGHT_PASSTHROUGH_OPS:
                continue
            for index in op.InputsAsNumpy() if op.InputsLength() else []:
                index = int(index)
                while index in producer and codes[producer[index].OpcodeIndex()] in (
                    _WEIGHT_PASSTHROUGH_OPS
                ):
                    index = int(producer[index].Inputs(0))
                if index < 0 or (s, index) in seen:
                    continue
                row = _weight_row(model, graph.Tensors(index), buf, op_name)
                if row is not None:
                    seen.add((s, index))
                    rows.append(row)
    return rows


def _buffer_bytes(model, tensor, buf):
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None:
        return None
    if buffer.DataLength():
        return buffer.DataAsNumpy().tobytes()
    # Models over 2 GB keep tensor data after the flatbuffer, addressed by offset and size.
    if buffer.Offset() > 1 and buffer.Size():
        return bytes(buf[buffer.Offset() : buffer.Offset() + buffer.Size()])
    return None


def _weight_row(model, tensor, buf, op_name):
    dtype = _TFLITE_DTYPES.get(tensor.Type())
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    if dtype is None or len(shape) < 2:
        return None
    data = _buffer_bytes(model, tensor, buf)
    if not data:
        return None
    values = np.frombuffer(data, dtype=dtype)
    total = int(np.prod(shape))
    zero_point = 0
    quant = tensor.Quantization()
    if quant is not None and quant.ZeroPointLength():
        zero_points = quant.ZeroPointAsNumpy()
        zero_point = None if np.any(zero_points != 0) else 0
    nonzero = int(np.count_nonzero(values)) if zero_point == 0 else None
    return {
        "tensor": tensor.Name().decode("utf-8", "replace"),
        "op": op_name,
        "shape": shape,
        "dtype": np.dtype(dtype).name,
        "encoding": "sparse" if tensor.Sparsity() is not None else "dense",
        "total": total,
        "stored": int(values.size),
        "nonzero": nonzero,
        "sparsity": None if nonzero is None else 1.0 - nonzero / total,
    }


def _prunable_variables(model):
    """`(weight key, variable)` for every prunable variable, keys as in `sparsity_report`."""
    out = []
    for layer, prefix in _walk(model):
        if is_prunable(layer) and not isinstance(layer, keras.Model) and layer.built:
            for v in prunable_weights(layer):
                out.append((_weight_key(prefix, layer, v), v))
    return out


def _name_mentions(tensor_name, layer_name):
    for component in re.split(r"[/;]", tensor_name):
        if component == layer_name or re.sub(r"_\d+$", "", component) == layer_name:
            return True
    return False


def _match_keras_weights(rows, keras_rows):
    """Adds `weight`, `matched_by` and `keras_nonzero` to TFLite rows.

    Sparse-encoded tensors often lose the layer name (the converter renames them after the
    op they feed), so a row is matched by name when its tensor name mentions the layer, and
    otherwise to the first unmatched Keras weight with the same number of elements, in order.
    """
    unmatched = list(keras_rows)
    for row in rows:
        same_size = [k for k in unmatched if k["total"] == row["total"]]
        by_name = [k for k in same_size if _name_mentions(row["tensor"], k["layer"].split("/")[-1])]
        match, how = (
            (by_name[0], "name")
            if by_name
            else ((same_size[0], "size and order") if same_size else (None, None))
        )
        if match is not None:
            unmatched.remove(match)
        row["weight"] = None if match is None else match["weight"]
        row["matched_by"] = how
        row["keras_nonzero"] = None if match is None else match["nonzero"]
    return rows


def _saved_model_weights(loaded, model):
    """Sparsity of each prunable variable as stored in a loaded SavedModel."""
    stored = {v.name.rsplit(":", 1)[0]: v for v in loaded.variables}
    rows = []
    for key, variable in _prunable_variables(model):
        saved = stored.get(variable.path)
        if saved is None:
            continue
        value = saved.numpy()
        nonzero = int(np.count_nonzero(value))
        rows.append(
            {
                "weight": key,
                "variable": saved.name.rsplit(":", 1)[0],
                "shape": [int(d) for d in value.shape],
                "total": int(value.size),
                "nonzero": nonzero,
                "sparsity": 1.0 - nonzero / value.size if value.size else 0.0,
                "keras_nonzero": int(np.count_nonzero(variable.numpy())),
            }
        )
    return rows


# -- sizes ----------------------------------------------------------------------------------
def _gzip_size(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _dir_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


def _dir_gzip_size(path):
    """Size of a deterministic gzipped tar of a directory (sorted names, no timestamps)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                info = tarfile.TarInfo(os.path.relpath(full, path))
                info.size = os.path.getsize(full)
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    return _gzip_size(raw.getvalue())


def _sizes(bytes_, gzip_bytes, dense_bytes, dense_gzip_bytes):
    return {
        "bytes": bytes_,
        "gzip_bytes": gzip_bytes,
        "dense_bytes": dense_bytes,
        "dense_gzip_bytes": dense_gzip_bytes,
        "ratio": bytes_ / dense_bytes if dense_bytes else None,
        "gzip_ratio": gzip_bytes / dense_gzip_bytes if dense_gzip_bytes else None,
    }


# -- running the artifacts ------------------------------------------------------------------
def _interpreter_module(runtime):
    """The Interpreter class to use and a label naming it with its version."""
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert import interpreter as litert
        except ImportError:
            if runtime == "litert":
                raise ImportError(
                    "runtime='litert' needs the ai-edge-litert package: "
                    "pip install 'kprune[litert]'"
                ) from None
        else:
            from importlib.metadata import PackageNotFoundError, version

            try:
                label = f"ai_edge_litert {version('ai-edge-litert')}"
            except PackageNotFoundError:
                label = "ai_edge_litert"
            return litert.Interpreter, litert.OpResolverType, label
    return (
        tf.lite.Interpreter,
        tf.lite.experimental.OpResolverType,
        f"tf.lite.Interpreter (TensorFlow {tf.__version__})",
    )


def make_interpreter(tflite, *, num_threads=None, runtime="auto", xnnpack=True, batch_size=1):
    """A ready LiteRT interpreter, and a note on how it runs the model.

    Uses `ai_edge_litert` when installed (`pip install 'kprune[litert]'`) and
    `tf.lite.Interpreter` otherwise. Inputs are resized to `batch_size`, tensors allocated and
    the model run once on zeros. The default delegate (XNNPACK) is tried first; if it cannot
    prepare or run the model -- LiteRT 2.3 refuses sparse quantized weights, for instance --
    the model runs on the builtin kernels, and `info["xnnpack"]` says so. Keep the input
    shapes fixed afterwards: a resize makes XNNPACK prepare the model again.

    Args:
        tflite: the file contents (bytes) or a path.
        num_threads: CPU threads (None: the runtime's default).
        runtime: `"auto"`, `"litert"` (ai_edge_litert, error if missing) or `"tflite"`
            (`tf.lite.Interpreter`).
        xnnpack: try the XNNPACK delegate first.
        batch_size: leading dimension of every input.

    Returns:
        `(interpreter, info)`, `info` = `{"runtime": str, "xnnpack": bool, "note": str|None}`.

    Example:

    >>> interpreter, info = make_interpreter(convert_to_tflite(model))  # doctest: +SKIP
    >>> info["runtime"]
    'ai_edge_litert 2.3.0'
    """
    _check_choice("runtime", runtime, RUNTIMES)
    _check_count("batch_size", batch_size)
    interpreter_class, resolvers, label = _interpreter_module(runtime)
    source = (
        {"model_path": os.fspath(tflite)}
        if isinstance(tflite, (str, os.PathLike))
        else {"model_content": bytes(tflite)}
    )
    attempts = [resolvers.AUTO] if xnnpack else []
    attempts.append(resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    note = None
    for resolver in attempts:
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns that it is deprecated in favour of ai_edge_litert; that
            # is the documented fallback here, not news to the user.
            warnings.simplefilter("ignore", UserWarning)
            interpreter = interpreter_class(
                **source, num_threads=num_threads, experimental_op_resolver_type=resolver
            )
        try:
            for detail in interpreter.get_input_details():
                shape = [batch_size, *detail["shape"][1:]]
                interpreter.resize_tensor_input(detail["index"], shape)
            interpreter.allocate_tensors()
            # XNNPACK may accept a model at allocation and refuse it at the first run.
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except RuntimeError as e:
            if resolver != resolvers.AUTO:
                raise ConversionError(f"{label} could not run the TFLite model: {e}") from e
            note = f"XNNPACK could not prepare the model ({str(e).splitlines()[0]}); "
            note += "it runs on the builtin kernels"
            continue
        delegated = resolver == resolvers.AUTO and any(
            op.get("op_name") == "DELEGATE" for op in interpreter._get_ops_details()
        )
        return interpreter, {"runtime": label, "xnnpack": delegated, "note": note}
    raise AssertionError("unreachable: the builtin attempt returns or raises")


def _keras_outputs(model, spec, samples, chunk):
    """Keras predictions keyed like the serving signature's outputs."""
    parts = []
    for batch in _chunks(samples, chunk):
        x = [batch[n] for n in spec.names]
        y = model(x[0] if len(x) == 1 else x, training=False)
        if isinstance(y, dict):
            named = {k: np.asarray(v) for k, v in y.items()}
        elif isinstance(y, (list, tuple)):
            named = {f"output_{i}": np.asarray(v) for i, v in enumerate(y)}
        else:
            named = {"output_0": np.asarray(y)}
        parts.append(named)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _run_saved_model(loaded, samples, chunk):
    signature = loaded.signatures[SIGNATURE_KEY]
    parts = [
        {k: v.numpy() for k, v in signature(**{n: tf.constant(a) for n, a in b.items()}).items()}
        for b in _chunks(samples, chunk)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _run_tflite(interpreter, samples, chunk):
    """Runs `samples` in batches of `chunk` (the interpreter's batch size), padding the last."""
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    parts = []
    for batch in _chunks(samples, chunk):
        n = _num_samples(batch)
        padded = {
            k: np.concatenate([v, np.zeros((chunk - n, *v.shape[1:]), v.dtype)]) if n < chunk else v
            for k, v in batch.items()
        }
        parts.append({k: np.array(v)[:n] for k, v in runner(**padded).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def compare_outputs(reference, outputs):
    """Max absolute difference and top-1 agreement of `outputs` against `reference`.

    Both are dicts {output name: array (n, ..., classes)}. Top-1 agreement is the fraction of
    samples whose argmax over the last axis is the same; it is None for outputs with a single
    unit, where the check relies on the difference alone.

    Example:

    >>> ref = {"y": np.array([[0.0, 1.0], [2.0, 0.0]])}
    >>> compare_outputs(ref, {"y": np.array([[0.0, 1.5], [0.0, 1.0]])})["top1_agreement"]
    0.5
    """
    if set(reference) != set(outputs):
        raise ValueError(
            f"Outputs differ in names: the Keras model has {sorted(reference)}, the artifact "
            f"{sorted(outputs)}."
        )
    per_output = {}
    for name, ref in reference.items():
        out = np.asarray(outputs[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if out.shape != ref.shape:
            raise ValueError(
                f"Output '{name}' has shape {out.shape} in the artifact and {ref.shape} in "
                "the Keras model."
            )
        agreement = None
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            agreement = float(np.mean(np.argmax(ref, -1) == np.argmax(out, -1)))
        per_output[name] = {
            "max_abs_diff": float(np.max(np.abs(out - ref))) if ref.size else 0.0,
            "top1_agreement": agreement,
        }
    agreements = [
        o["top1_agreement"] for o in per_output.values() if o["top1_agreement"] is not None
    ]
    return {
        "max_abs_diff": max(o["max_abs_diff"] for o in per_output.values()),
        "top1_agreement": min(agreements) if agreements else None,
        "outputs": per_output,
    }


def _passes(result, min_agreement, reference):
    """Float32 gate: top-1 agreement, or (single-unit outputs) a relative difference < 1e-3."""
    if result["top1_agreement"] is not None:
        return result["top1_agreement"] >= min_agreement
    scale = max(1.0, max(float(np.max(np.abs(r))) for r in reference.values()))
    return result["max_abs_diff"] <= 1e-3 * scale


# -- directories ----------------------------------------------------------------------------
def _prepare_out_dir(out_dir, overwrite):
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"`out_dir` is an existing file, not a directory: {out_dir!r}")
        if os.listdir(out_dir) and not overwrite:
            raise ValueError(
                f"`out_dir` {out_dir!r} exists and is not empty; pass overwrite=True (CLI: "
                "--overwrite) to replace it."
            )
    created, parent = [], os.path.dirname(out_dir)
    while parent and not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    return out_dir, created


def _replace_dir(tmp, out_dir):
    """Moves the finished `tmp` into place; an old `out_dir` is removed only afterwards."""
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir)
        )
        os.rename(out_dir, os.path.join(old, "previous"))
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


# -- the export -----------------------------------------------------------------------------
def _plain_model(model):
    if not isinstance(model, keras.Model):
        hint = ""
        if isinstance(model, (str, os.PathLike)):
            hint = " To export a saved file, load it first: kprune.export.load_keras_model(path)."
        raise TypeError(f"`model` must be a keras.Model. Received: {model!r}.{hint}")
    return strip(model) if pruning_wrappers(model) else model


def _dense_twin(model):
    """A model to measure the dense export with, and a sentence saying what it is.

    Preferably the same architecture with fresh weights (a model that was never pruned); if
    the model cannot be cloned (e.g. it contains a subclassed model), the model itself, whose
    zeros then flatter the dense gzip size (raw bytes are unaffected).
    """
    try:
        twin = keras.models.clone_model(model)
    except Exception as e:  # subclassed parts, custom layers without get_config, ...
        return model, (
            f"same weights stored densely (the model could not be cloned: {type(e).__name__}); "
            "raw bytes are those of a dense model, gzip bytes are smaller than a dense "
            "model's because the zeros compress"
        )
    return twin, (
        "same architecture, freshly initialized weights, same converter settings without "
        "sparse encoding"
    )


def export(
    model,
    out_dir,
    formats=FORMATS,
    quantize="none",
    representative_data=None,
    *,
    eval_data=None,
    num_eval_samples=256,
    num_calibration_samples=100,
    min_fp32_agreement=0.999,
    compare_dense=True,
    overwrite=False,
    runtime="auto",
    verbose=True,
):
    """Exports a (pruned) Keras model as SavedModel and sparse TFLite, checked and measured.

    The model is stripped first if it contains `PruningWrapper`s. Everything is written into a
    temporary directory next to `out_dir` that replaces `out_dir` only when all conversions
    have succeeded, so an error leaves no partial file behind.

    Parity: the Keras model, the SavedModel (`serving_default` signature, named inputs) and
    the TFLite model (LiteRT interpreter) are run on `num_eval_samples` samples. For each
    artifact the report gives the max absolute difference to Keras and the top-1 agreement
    (argmax over the last axis). Float32 artifacts -- the SavedModel, and the TFLite file when
    `quantize="none"` -- must agree on at least `min_fp32_agreement` of the samples (outputs
    with one unit: max difference <= 1e-3 * max(1, max |output|)); otherwise the artifacts
    and the report are still written and `ParityError` is raised. Quantized files are
    reported, not gated.

    Dense baseline: the same architecture with freshly initialized weights (a model that was
    never pruned), exported with the same settings minus the sparse encoding. Its raw bytes
    are what an unpruned model of this architecture costs; its gzip bytes are realistic for
    trained dense weights, which do not compress much. A model that cannot be cloned (one with
    a subclassed part) is measured against its own weights stored densely; `dense_baseline`
    in the report says which.

    Args:
        model: a built `keras.Model`, pruned (wrapped) or stripped.
        out_dir: directory to create (or replace, with `overwrite=True`).
        formats: any of `("saved_model", "tflite")`, or a comma-separated string.
        quantize: `"none"`, `"dynamic"` (int8 weights, float activations) or `"int8"` (int8
            weights and activations, calibrated on `representative_data`; float32 inputs and
            outputs). Applies to the TFLite file; both quantized modes keep the sparse
            encoding where the converter supports it.
        representative_data: model inputs for int8 calibration: a NumPy array (single input),
            a dict {input name: array}, a `tf.data.Dataset` or any iterable of batches or
            single samples, whose elements are inputs or `(inputs, targets[, weights])`
            tuples (inputs: array, dict, or tuple of arrays in input order). Typically the
            training pipeline.
        eval_data: model inputs for the parity check, in the same forms; defaults to
            `representative_data`, else synthetic samples (uniform in [0, 1)).
        num_eval_samples: samples for the parity check.
        num_calibration_samples: samples of `representative_data` for int8 calibration.
        min_fp32_agreement: top-1 agreement that float32 artifacts must reach, in [0, 1].
        compare_dense: also convert a dense model of the same architecture for the size
            comparison (doubles the conversion time).
        overwrite: replace a non-empty `out_dir`.
        runtime: TFLite interpreter for the parity check: `"auto"` (ai_edge_litert if
            installed, else tf.lite.Interpreter), `"litert"` or `"tflite"`.
        verbose: print the report as a table.

    Returns:
        The report (also written to `out_dir/export_report.json`), a JSON-compatible dict.

    Raises:
        TypeError / ValueError: bad arguments (each names the argument and the value), a
            non-empty `out_dir` without `overwrite`, or `quantize="int8"` without
            `representative_data`. Nothing is written.
        ConversionError: the model cannot be exported or converted; the message names the
            layer and the op where the converter says which. Nothing is written.
        ParityError: a float32 artifact disagrees with Keras; the files are written.

    Example:

    >>> model = keras.Sequential([keras.Input((784,), name="pixels"),
    ...                           keras.layers.Dense(300, activation="relu"),
    ...                           keras.layers.Dense(10)])
    >>> report = export(model, "/tmp/lenet_export", verbose=False)  # doctest: +SKIP
    >>> sorted(os.listdir("/tmp/lenet_export"))  # doctest: +SKIP
    ['export_report.json', 'model.tflite', 'saved_model']
    """
    formats = _check_formats(formats)
    _check_choice("quantize", quantize, QUANTIZE_MODES)
    _check_choice("runtime", runtime, RUNTIMES)
    if quantize != "none" and "tflite" not in formats:
        raise ValueError(
            f"`quantize` applies to the TFLite file, but formats={formats!r} has no 'tflite'. "
            f"Received: quantize={quantize!r}"
        )
    _check_count("num_eval_samples", num_eval_samples)
    _check_count("num_calibration_samples", num_calibration_samples)
    min_fp32_agreement = _check_fraction("min_fp32_agreement", min_fp32_agreement)
    model = _plain_model(model)
    spec = _InputSpec(model)
    if quantize == "int8" and representative_data is None:
        _calibration(spec, quantize, None, num_calibration_samples)  # raises the clear error
    out_dir, created = _prepare_out_dir(out_dir, overwrite)
    tmp = tempfile.mkdtemp(
        prefix=f".{os.path.basename(out_dir)}.tmp-", dir=os.path.dirname(out_dir)
    )
    try:
        report = _export_into(
            model,
            tmp,
            spec,
            formats=formats,
            quantize=quantize,
            representative_data=representative_data,
            eval_data=eval_data,
            num_eval_samples=num_eval_samples,
            num_calibration_samples=num_calibration_samples,
            min_fp32_agreement=min_fp32_agreement,
            compare_dense=compare_dense,
            runtime=runtime,
        )
        with open(os.path.join(tmp, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in created:  # parents we made for out_dir, innermost first
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise
    if verbose:
        print(format_export_report(report))
    if not report["parity"]["passed"]:
        raise ParityError(
            "Exported model disagrees with the Keras model: "
            + "; ".join(report["parity"]["failures"])
            + f". Artifacts and report kept in {out_dir!r} for inspection.",
            report,
        )
    return report


def _export_into(
    model,
    tmp,
    spec,
    *,
    formats,
    quantize,
    representative_data,
    eval_data,
    num_eval_samples,
    num_calibration_samples,
    min_fp32_agreement,
    compare_dense,
    runtime,
):
    """Writes the artifacts into `tmp` and returns the report (the caller writes it)."""
    work = os.path.join(tmp, ".work")  # scratch space inside tmp: removed with it on error
    os.makedirs(work)
    saved_model_dir = os.path.join(tmp if "saved_model" in formats else work, SAVED_MODEL_DIR)
    _export_saved_model(model, saved_model_dir)
    calibration = _calibration(spec, quantize, representative_data, num_calibration_samples)
    keras_report = sparsity_report(model)
    report = {
        "format_version": 1,
        "model": model.name,
        "versions": versions(),
        "formats": list(formats),
        "quantize": quantize,
        "keras_sparsity": {
            "prunable": keras_report["prunable"],
            "all_params": keras_report["all_params"],
        },
        "dense_baseline": None,
        "artifacts": {},
    }
    twin, report["dense_baseline"] = (
        _dense_twin(model) if compare_dense else (None, "not measured (compare_dense=False)")
    )
    twin_dir = None
    if twin is model:
        twin_dir = saved_model_dir
    elif twin is not None:
        twin_dir = os.path.join(work, "dense_saved_model")
        _export_saved_model(twin, twin_dir)

    if "saved_model" in formats:
        entry = {"path": SAVED_MODEL_DIR}
        entry.update(
            _sizes(
                _dir_bytes(saved_model_dir),
                _dir_gzip_size(saved_model_dir),
                _dir_bytes(twin_dir) if twin_dir else None,
                _dir_gzip_size(twin_dir) if twin_dir else None,
            )
        )
        report["artifacts"]["saved_model"] = entry
    tflite_bytes = None
    if "tflite" in formats:
        tflite_bytes = _convert_saved_model(
            saved_model_dir, model, sparse=True, quantize=quantize, calibration=calibration
        )
        with open(os.path.join(tmp, TFLITE_FILE), "wb") as f:
            f.write(tflite_bytes)
        report["artifacts"]["tflite"] = _tflite_entry(
            tflite_bytes, quantize, twin, twin_dir, calibration, keras_report["layers"]
        )

    if eval_data is not None:
        samples = _take_samples(eval_data, num_eval_samples, spec, "eval_data")
        source = "eval_data"
    elif representative_data is not None:
        samples = _take_samples(representative_data, num_eval_samples, spec, "representative_data")
        source = "representative_data"
    else:
        samples, source = spec.synthetic(num_eval_samples), "synthetic uniform [0, 1) inputs"
    report["parity"] = _parity(
        model,
        spec,
        samples,
        source,
        saved_model_dir if "saved_model" in formats else None,
        tflite_bytes,
        quantize=quantize,
        min_fp32_agreement=min_fp32_agreement,
        runtime=runtime,
        report=report,
    )
    shutil.rmtree(work)
    return report


def _tflite_entry(tflite_bytes, quantize, twin, twin_dir, calibration, keras_rows):
    """Sizes against the dense twin, and the weights read back from the file."""
    dense = dense_fp32 = None
    if twin_dir:
        dense = _convert_saved_model(
            twin_dir, twin, sparse=False, quantize=quantize, calibration=calibration
        )
        dense_fp32 = dense
        if quantize != "none":
            dense_fp32 = _convert_saved_model(
                twin_dir, twin, sparse=False, quantize="none", calibration=None
            )
    entry = {"path": TFLITE_FILE, "quantize": quantize, "sparse_encoding": True}
    entry.update(
        _sizes(
            len(tflite_bytes),
            _gzip_size(tflite_bytes),
            len(dense) if dense else None,
            _gzip_size(dense) if dense else None,
        )
    )
    entry["dense_fp32_bytes"] = len(dense_fp32) if dense_fp32 else None
    entry["ratio_vs_dense_fp32"] = len(tflite_bytes) / len(dense_fp32) if dense_fp32 else None
    weights = _match_keras_weights(read_tflite_weights(tflite_bytes), keras_rows)
    entry["weights"] = weights
    notes = []
    if any(r["matched_by"] == "size and order" for r in weights):
        notes.append(
            "Some weight tensors carry no layer name in the file (the converter renames "
            "sparse tensors after the op they feed); they were matched to Keras weights "
            "by element count in layer order."
        )
    if any(r["nonzero"] is None for r in weights):
        notes.append(
            "Zeros of tensors with non-zero quantization zero-points cannot be counted "
            "from the stored values; their sparsity is null."
        )
    if quantize != "none":
        notes.append(
            "Quantization can round small weights to zero, so a quantized tensor may have "
            "fewer non-zeros than its Keras weight."
        )
    if entry["ratio"] is not None and entry["ratio"] > 1:
        notes.append(
            "The sparse file is larger than the dense one: at this sparsity the index arrays "
            "of the sparse format cost more than the zeros they replace (common with int8 "
            "weights below ~60-70% sparsity)."
        )
    entry["notes"] = notes
    return entry


def _parity(
    model,
    spec,
    samples,
    source,
    saved_model_dir,
    tflite_bytes,
    *,
    quantize,
    min_fp32_agreement,
    runtime,
    report,
):
    """Runs Keras and each artifact on `samples`; adds SavedModel weights to `report`."""
    chunk = min(32, _num_samples(samples))
    reference = _keras_outputs(model, spec, samples, chunk)
    parity = {
        "samples": _num_samples(samples),
        "data": source,
        "min_fp32_agreement": min_fp32_agreement,
        "failures": [],
    }
    if saved_model_dir is not None:
        loaded = tf.saved_model.load(saved_model_dir)
        result = compare_outputs(reference, _run_saved_model(loaded, samples, chunk))
        result["gated"] = True
        parity["saved_model"] = result
        report["artifacts"]["saved_model"]["weights"] = _saved_model_weights(loaded, model)
        del loaded
    if tflite_bytes is not None:
        interpreter, info = make_interpreter(tflite_bytes, runtime=runtime, batch_size=chunk)
        result = compare_outputs(reference, _run_tflite(interpreter, samples, chunk))
        result.update(info)
        result["gated"] = quantize == "none"
        parity["tflite"] = result
    for name in FORMATS:
        result = parity.get(name)
        if result is None or not result["gated"]:
            continue
        if not _passes(result, min_fp32_agreement, reference):
            agreement = result["top1_agreement"]
            parity["failures"].append(
                f"{name}: top-1 agreement {agreement:.4%} < {min_fp32_agreement:.2%}"
                if agreement is not None
                else f"{name}: max |difference| {result['max_abs_diff']:.3g} too large"
            )
    parity["passed"] = not parity["failures"]
    return parity


def _fmt_bytes(n):
    return "-" if n is None else f"{n:,}"


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.3f}x"


def format_export_report(report):
    """Renders an export report as fixed-width tables (a string).

    Example:

    >>> print(format_export_report(report))  # doctest: +SKIP
    artifact                      bytes    gzip bytes   dense bytes    dense gzip  ratio  gzip ratio
    saved_model                 ...
    """
    lines = [
        f"export of '{report['model']}' (quantize={report['quantize']}); dense baseline: "
        f"{report['dense_baseline']}",
        f"{'artifact':<22} {'bytes':>12} {'gzip bytes':>12} {'dense bytes':>12} "
        f"{'dense gzip':>12} {'ratio':>8} {'gzip ratio':>10}",
    ]
    for name, entry in report["artifacts"].items():
        label = name if name != "tflite" else f"tflite ({entry['quantize']}, sparse)"
        lines.append(
            f"{label:<22} {_fmt_bytes(entry['bytes']):>12} {_fmt_bytes(entry['gzip_bytes']):>12} "
            f"{_fmt_bytes(entry['dense_bytes']):>12} {_fmt_bytes(entry['dense_gzip_bytes']):>12} "
            f"{_fmt_ratio(entry['ratio']):>8} {_fmt_ratio(entry['gzip_ratio']):>10}"
        )
        if name == "tflite" and entry["quantize"] != "none":
            lines.append(
                f"{'':<22} vs dense float32 TFLite ({_fmt_bytes(entry['dense_fp32_bytes'])} "
                f"bytes): {_fmt_ratio(entry['ratio_vs_dense_fp32'])}"
            )
    tflite = report["artifacts"].get("tflite")
    if tflite:
        lines.append("")
        lines.append("weights read back from model.tflite")
        lines.append(
            f"{'keras weight':<32} {'op':<18} {'shape':<16} {'encoding':<8} {'dtype':<8} "
            f"{'nonzero':>9} {'total':>10} {'sparsity':>8} {'keras':>8}"
        )
        for row in tflite["weights"]:
            keras_sparsity = (
                "-"
                if row["keras_nonzero"] is None
                else f"{1 - row['keras_nonzero'] / row['total']:.2%}"
            )
            sparsity = "-" if row["sparsity"] is None else f"{row['sparsity']:.2%}"
            nonzero = "-" if row["nonzero"] is None else str(row["nonzero"])
            lines.append(
                f"{(row['weight'] or '(' + row['tensor'][:30] + ')')[:32]:<32} "
                f"{row['op'][:18]:<18} {'x'.join(map(str, row['shape']))[:16]:<16} "
                f"{row['encoding']:<8} {row['dtype']:<8} {nonzero:>9} {row['total']:>10} "
                f"{sparsity:>8} {keras_sparsity:>8}"
            )
        for note in tflite["notes"]:
            lines.append(f"note: {note}")
    parity = report["parity"]
    lines.append("")
    lines.append(f"parity with Keras on {parity['samples']} samples ({parity['data']})")
    for name in FORMATS:
        result = parity.get(name)
        if result is None:
            continue
        agreement = result["top1_agreement"]
        how = ""
        if name == "tflite":
            how = f" [{result['runtime']}, {'XNNPACK' if result['xnnpack'] else 'builtin kernels'}]"
        gate = f"gate >= {parity['min_fp32_agreement']:.2%}" if result["gated"] else "not gated"
        lines.append(
            f"  {name:<12} max |diff| {result['max_abs_diff']:.3g}, top-1 agreement "
            f"{'-' if agreement is None else f'{agreement:.2%}'} ({gate}){how}"
        )
    lines.append(
        "parity: " + ("ok" if parity["passed"] else "FAILED: " + "; ".join(parity["failures"]))
    )
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------
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
    # Custom layers of the model zoo must be registered before loading, when it exists.
    with contextlib.suppress(ImportError):
        import kprune.models  # noqa: F401
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ValueError(
            f"Could not load the Keras model {path!r}: {e}. If it uses custom layers, import "
            "the module that registers them (keras.saving.register_keras_serializable) first."
        ) from e


def define_flags(flag_values=flags.FLAGS):
    """Declares the `python -m kprune.export` flags on `flag_values`.

    They are declared only when the module runs as a program (or when a caller asks), never
    on import, so `from kprune.export import export` adds no flags to the importing program
    (e.g. `python -m kprune.train`, which has a `--dataset` flag of its own).

    Example:

    >>> fv = flags.FlagValues()
    >>> define_flags(fv)
    >>> fv(["export", "--model=m.keras", "--out=out"]).quantize  # doctest: +SKIP
    'none'
    """
    flags.DEFINE_string(
        "model", None, "Keras model file (.keras) to export.", flag_values=flag_values
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=flag_values)
    flags.DEFINE_list(
        "formats",
        list(FORMATS),
        f"Comma-separated formats from {FORMATS}.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "quantize",
        "none",
        list(QUANTIZE_MODES),
        "TFLite quantization: none (float32), dynamic (int8 weights) or int8 (full integer; "
        "needs --dataset or --data_npz).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "Dataset name for kprune.data.load_dataset: int8 calibration from its training split, "
        "parity samples from its test split.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "tensorflow-datasets data directory for --dataset (as in python -m kprune.train).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_npz",
        None,
        "A .npz file of model inputs: one array (single input) or one array per input name. "
        "Used for int8 calibration and the parity check.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "eval_samples", 256, "Samples for the parity check.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "calibration_samples",
        100,
        "Samples for int8 calibration.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "min_agreement",
        0.999,
        "Top-1 agreement with Keras that float32 artifacts must reach.",
        lower_bound=0.0,
        upper_bound=1.0,
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "compare_dense", True, "Also export a dense twin for sizes.", flag_values=flag_values
    )
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=flag_values)
    flags.mark_flags_as_required(["model", "out"], flag_values=flag_values)


def _load_npz(path, spec):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    missing = [n for n in spec.names if n not in arrays]
    if missing:
        raise ValueError(
            f"--data_npz {path!r} holds arrays {sorted(arrays)}; with several arrays their names "
            f"must be the model's input names {spec.names} (missing {missing})."
        )
    return {n: arrays[n] for n in spec.names}


def _named_dataset(name, data_dir=None, batch_size=32):
    """(training inputs, test inputs) of a dataset known to `kprune.data.load_dataset`."""
    from kprune import data as data_lib  # imported here: loading tfds is slow

    datasets = data_lib.load_dataset(name, batch_size=batch_size, data_dir=data_dir)
    return datasets.train, datasets.test


EXIT_ERROR = 1
EXIT_PARITY = 3


def run(flag_values):
    """Runs an export from parsed flags; returns the process exit status.

    0: exported and checked; 1: bad input or a failed conversion (nothing written);
    3: written, but a float32 artifact failed the parity check.

    Example:

    >>> fv = flags.FlagValues(); define_flags(fv)
    >>> fv(["export", "--model=m.keras", "--out=out"])  # doctest: +SKIP
    >>> run(fv)  # doctest: +SKIP
    0
    """
    fv = flag_values
    try:
        model = load_keras_model(fv.model)
        spec = _InputSpec(_plain_model(model))
        representative = evaluation = None
        if fv.data_npz:
            representative = evaluation = _load_npz(fv.data_npz, spec)
        if fv.dataset:
            representative, evaluation = _named_dataset(fv.dataset, fv.data_dir)
        export(
            model,
            fv.out,
            formats=fv.formats,
            quantize=fv.quantize,
            representative_data=representative,
            eval_data=evaluation,
            num_eval_samples=fv.eval_samples,
            num_calibration_samples=fv.calibration_samples,
            min_fp32_agreement=fv.min_agreement,
            compare_dense=fv.compare_dense,
            overwrite=fv.overwrite,
        )
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PARITY
    except (ValueError, TypeError, ConversionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {os.path.abspath(fv.out)}")
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    sys.exit(run(flags.FLAGS))
