"""Reading the weights back from the exported files, and matching them to the Keras weights.

The sparsity in an export report is counted in the files themselves: the `.tflite` flatbuffer
is parsed with TensorFlow's generated schema (through `kprune._internal.compat`), and the
SavedModel's variables are read from the loaded SavedModel, so the report shows what a device
receives, not what the Keras model claims.

Example:

>>> _name_mentions("sequential/hidden_1/MatMul", "hidden")
True
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np

from kprune._internal.compat import tflite_schema
from kprune._internal.walk import weight_key as _weight_key
from kprune.granularity import nm_axis, nm_pattern_holds, parse_granularity
from kprune.masks import walk_model as _walk
from kprune.targets import is_prunable, prunable_weights

__all__ = ["NM_PATTERNS", "nm_pattern_rows", "read_tflite_weights"]

# The N:M patterns the export report checks on every Dense/Conv kernel (2:4: sparse tensor
# cores); a pattern holds when no group of M along the input axis has more than N non-zeros.
NM_PATTERNS = ("1:4", "2:4", "4:8")

# Ops the converter puts between a stored weight tensor and the op that uses it.
_WEIGHT_PASSTHROUGH_OPS = ("DENSIFY", "DEQUANTIZE")
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 9: np.int8, 10: np.float64}


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

    >>> from kprune.export import convert_to_tflite
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32)])
    >>> kernel = np.where(np.arange(64 * 32).reshape(64, 32) % 4, 0.0, 1.0)  # 75% zeros
    >>> model.layers[0].set_weights([kernel, np.zeros(32)])
    >>> rows = read_tflite_weights(convert_to_tflite(model))
    >>> rows[0]["op"], rows[0]["encoding"], rows[0]["shape"], rows[0]["sparsity"]
    ('FULLY_CONNECTED', 'sparse', [32, 64], 0.75)
    """
    if isinstance(tflite, (str, os.PathLike)):
        with open(tflite, "rb") as f:
            tflite = f.read()
    schema = tflite_schema()
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


def nm_pattern_rows(model):
    """For every Dense/Conv kernel of `model`: which of `NM_PATTERNS` its weights hold.

    Checked on the Keras weights (those the files are converted from) along the kernel's input
    axis (`kprune.granularity.nm_axis`); a kernel whose input axis is not a multiple of M does
    not hold that pattern.

    Example:

    >>> dense = keras.layers.Dense(1, name="fc")
    >>> model = keras.Sequential([keras.Input((4,)), dense])
    >>> _ = dense.kernel.assign(np.array([[1.0], [0.0], [0.0], [2.0]]))
    >>> nm_pattern_rows(model)
    [{'weight': 'fc/kernel', 'axis': 0, '1:4': False, '2:4': True, '4:8': False}]
    """
    rows = []
    for layer, prefix in _walk(model):
        if not is_prunable(layer) or isinstance(layer, keras.Model) or not layer.built:
            continue
        for v in prunable_weights(layer):
            axis = nm_axis(layer, v)
            if axis is None:
                continue
            value = np.asarray(v.numpy())
            row = {"weight": _weight_key(prefix, layer, v), "axis": axis}
            for pattern in NM_PATTERNS:
                g = parse_granularity(pattern)
                row[pattern] = nm_pattern_holds(value, g.n, g.m, axis)
            rows.append(row)
    return rows


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
