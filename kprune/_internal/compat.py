"""Every private Keras/TensorFlow API kprune uses, in one place.

Each entry names the public gap it fills and checks that what it reaches for still exists, so
a Keras or TensorFlow release that moves an internal fails here, loudly, with the version
named, instead of somewhere deep in a training run. `tests/test_compat.py` has a test per
entry.
"""

from __future__ import annotations

import importlib

import tensorflow as tf

# -- Keras model and layer internals (api, wrapper) ------------------------------------------


# -- tf.distribute internals (distribute, wrapper) -------------------------------------------


# -- TFLite internals (export) ---------------------------------------------------------------
_TFLITE_SCHEMA = "tensorflow.lite.python.schema_py_generated"


def tflite_schema():
    """The generated flatbuffer classes of the `.tflite` format (`Model`, `BuiltinOperator`).

    Public gap: neither TensorFlow nor LiteRT has a public reader for the tensors and buffers
    a `.tflite` file stores (the interpreter shows sparse tensors decoded, and not which bytes
    the file holds); TensorFlow ships the generated schema module only privately.

    Example:

    >>> tflite_schema().BuiltinOperator.FULLY_CONNECTED
    9
    """
    # Imported on first use, so that a TensorFlow without the module breaks only the TFLite
    # read-back, with this message, and not `import kprune`.
    try:
        schema = importlib.import_module(_TFLITE_SCHEMA)
    except ImportError as e:
        raise RuntimeError(
            f"kprune reads .tflite files with {_TFLITE_SCHEMA}, which TensorFlow "
            f"{tf.__version__} does not have (kprune.export.read_tflite_weights needs it; "
            "kprune is tested with TensorFlow 2.21)."
        ) from e
    missing = [name for name in ("Model", "BuiltinOperator") if not hasattr(schema, name)]
    if missing:
        raise RuntimeError(
            f"{_TFLITE_SCHEMA} of TensorFlow {tf.__version__} lacks {missing}, which kprune "
            "reads .tflite files with."
        )
    return schema


def interpreter_ops_details(interpreter):
    """One dict per node of an allocated TFLite interpreter (`op_name`, `index`, ...).

    Public gap: neither `tf.lite.Interpreter` nor `ai_edge_litert`'s `Interpreter` says
    publicly whether a delegate (XNNPACK) took over the graph; the private
    `_get_ops_details()` lists the nodes after delegation, a delegated partition being one
    node named "DELEGATE".

    Example:

    >>> [op["op_name"] for op in interpreter_ops_details(interpreter)]  # doctest: +SKIP
    ['DELEGATE']
    """
    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        cls = type(interpreter)
        raise RuntimeError(
            f"{cls.__module__}.{cls.__name__} (TensorFlow {tf.__version__}) has no "
            "_get_ops_details(), which kprune uses to tell whether XNNPACK runs the model."
        )
    return details()
