"""Every private Keras/TensorFlow API kprune uses, in one place.

Each entry names the public gap it fills and checks that what it reaches for still exists, so
a Keras or TensorFlow release that moves an internal fails here, loudly, with the version
named, instead of somewhere deep in a training run. `tests/test_compat_*.py` have a test per
entry.

Example:

>>> import keras
>>> [layer.name for layer in child_layers(keras.Sequential([keras.layers.Dense(2, name="fc")]))]
['fc']
"""

from __future__ import annotations

import contextlib
import importlib

import keras
import tensorflow as tf

__all__ = [
    "MissingInternalError",
    "call_has_training_arg",
    "child_layers",
    "graph_nodes",
    "is_legacy_keras_object",
    "no_autocast",
    "maybe_merge_call",
    "multi_worker_trainer_fixes",
    "tflite_schema",
    "interpreter_ops_details",
]


class MissingInternalError(RuntimeError):
    """A Keras/TensorFlow internal that kprune relies on is missing in the installed version."""


def _missing(what, why, err=None):
    return MissingInternalError(
        f"kprune relies on {what} ({why}), which the installed Keras {keras.__version__} / "
        f"TensorFlow {tf.__version__} does not provide"
        + (f" ({type(err).__name__}: {err})" if err is not None else "")
        + ". Install the versions kprune was tested with (see pyproject.toml) or report it "
        "as a kprune issue."
    )


def _module(name, why):
    """The module `name`, imported on first use (so `import kprune` never fails on it)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise _missing(f"the module `{name}`", why, err) from err


def _internal(owner, attribute, why, owner_name=None):
    """`owner.attribute` (owner: a module or class, or a module name); raises if it moved."""
    if isinstance(owner, str):
        owner_name, owner = owner, _module(owner, why)
    value = getattr(owner, attribute, None)
    if value is None:
        raise _missing(f"`{owner_name or owner.__name__}.{attribute}`", why)
    return value


# -- Keras model and layer internals (api, wrapper) ------------------------------------------
# Public gap: Keras 3 has no public "direct sub-layers of a layer". `Model.layers` exists only
# on models, and custom layers that own layers (or models nested inside layers) expose them
# only through this tracker method.
def child_layers(layer):
    """The layers `layer` tracks directly (one level down, `layer` itself excluded).

    Example:

    >>> len(child_layers(keras.layers.Dense(2)))
    0
    """
    flatten = _internal(
        layer, "_flatten_layers", "to find the layers nested in a model", "keras.layers.Layer"
    )
    return list(flatten(include_self=False, recursive=False))


# Public gap: a functional model's graph (which operation consumes which tensor) is public
# only as `model.operations`, without the edges. Channel tracing needs the nodes in
# topological order; Keras keeps them by depth, and a Sequential model built from an Input
# keeps its graph as a Functional.
def graph_nodes(model):
    """The call nodes of a Sequential or functional `model`, inputs first (topological order).

    Each node has `operation`, `input_tensors` and `output_tensors` (KerasTensors) and
    `arguments` (its call arguments). Returns None for a model without a graph (subclassed, or
    a Sequential that was never built from an Input).

    Example:

    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
    >>> [type(node.operation).__name__ for node in graph_nodes(m)]
    ['InputLayer', 'Dense']
    """
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
        if model is None:
            return None
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth is None:
        if isinstance(model, keras.Model) and hasattr(model, "_operations"):
            raise _missing(
                "`keras.Model._nodes_by_depth`", "to follow channels through a functional model"
            )
        return None
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


# Public gap: whether a layer's `call()` takes `training` is known to Keras (it passes it on
# when it does) but not exposed; a wrapper that forwards calls needs to know it too.
def call_has_training_arg(layer):
    """True if `layer.call` accepts a `training` argument.

    Example:

    >>> call_has_training_arg(keras.layers.Dropout(0.5)), call_has_training_arg(
    ...     keras.layers.Flatten())
    (True, False)
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"Expected a keras.layers.Layer. Received: {layer!r}")
    value = getattr(layer, "_call_has_training_arg", None)
    if not isinstance(value, bool):
        raise _missing(
            "`keras.layers.Layer._call_has_training_arg`",
            "to forward `training` to a wrapped layer only if it takes it",
        )
    return value


# Public gap: nothing public tells a Keras 2 / tf_keras object from an unrelated one; their
# classes live in these modules (Keras 2.13-2.15 moved its engine under `keras.src.engine`).
_LEGACY_KERAS_MODULES = ("tf_keras", "keras.engine", "keras.src.engine", "tensorflow.python")


def is_legacy_keras_object(obj):
    """True if `obj`'s class comes from Keras 2 / tf_keras (or TF's bundled Keras 2).

    Example:

    >>> is_legacy_keras_object(keras.layers.Dense(2))
    False
    """
    return type(obj).__module__.startswith(_LEGACY_KERAS_MODULES)


# Public gap: inside a mixed-precision layer call, `variable.value` is autocast to the compute
# dtype (e.g. float16) and no public API reads the stored float32 value there. Masks and weight
# updates must use the stored value.
@contextlib.contextmanager
def no_autocast():
    """Inside it, `variable.value` is the stored value, not autocast to the compute dtype.

    Example:

    >>> with no_autocast():
    ...     keras.Variable([1.0]).value.dtype.name
    'float32'
    """
    scope = _internal(
        "keras.src.backend.common.variables",
        "AutocastScope",
        "to read float32 weights inside a mixed-precision layer call",
    )
    with scope(None):
        yield


# -- tf.distribute internals (distribute, wrapper) -------------------------------------------
# Public gap: `ReplicaContext.merge_call` is public, but Mirrored and MultiWorkerMirrored
# strategies disable merge calls when the step is XLA-compiled on GPUs; then the function must
# be called directly. Only this interim API knows which applies (Keras' own optimizer uses it
# for its updates, for the same reason).
def maybe_merge_call(fn, strategy, *args, **kwargs):
    """`fn(strategy, *args, **kwargs)` in cross-replica context, as the strategy prefers.

    Example:

    >>> maybe_merge_call(lambda strategy, x: x + 1, tf.distribute.get_strategy(), 1)
    2
    """
    interim = getattr(getattr(tf.__internal__, "distribute", None), "interim", None)
    call = _internal(
        interim or tf.__internal__,
        "maybe_merge_call",
        "to update the pruning masks once per step under tf.distribute",
        "tf.__internal__.distribute.interim",
    )
    return call(fn, strategy, *args, **kwargs)


_TRAINER = "keras.src.backend.tensorflow.trainer"


# Public gap: Keras' TensorFlow trainer fails under a multi-worker MultiWorkerMirroredStrategy
# (keras-team/keras#20585, tensorflow/tensorflow#72388) and offers no hook to change how it
# reduces logs or reads the first batch; the only fix is to patch its module for the duration
# of `fit`/`evaluate`.
@contextlib.contextmanager
def multi_worker_trainer_fixes(is_multi_worker):
    """Lets Keras 3's `fit`/`evaluate` run under a multi-worker `MultiWorkerMirroredStrategy`.

    Keras 3.15's TensorFlow trainer fails there in two places: before training it asks the
    strategy to reduce the first batch as one nested structure, which
    `MultiWorkerMirroredStrategy.reduce` rejects; and it reduces every step's logs with
    `axis=0`, which fails on scalar losses and metrics. While this context is active, and only
    for strategies where `is_multi_worker(strategy)` is true, the first batch is read from the
    local replica (it only gives shapes for building) and scalar logs are averaged over the
    replicas with `axis=None`; anything else goes to Keras' own code unchanged. The original
    functions are restored on exit, also on errors. Nested use patches once.

    Raises:
        MissingInternalError: the Keras functions it patches are missing (a Keras that moved
            them): a multi-worker run would fail later without the fix.

    Example:

    >>> with multi_worker_trainer_fixes(lambda strategy: False):
    ...     pass
    """
    why = "to train under a multi-worker MultiWorkerMirroredStrategy"
    trainer = _module(_TRAINER, why)
    original_reduce = _internal(trainer, "reduce_per_replica", why)
    trainer_class = _internal(trainer, "TensorFlowTrainer", why)
    original_build = _internal(
        trainer_class, "_maybe_symbolic_build", why, f"{_TRAINER}.TensorFlowTrainer"
    )
    if getattr(original_reduce, "_kprune_fix", False):  # already active (nested use)
        yield
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction != "auto" or not is_multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def reduce(value):
            if value.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is None or not is_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                next(batches),
            )
            break
        return original_build(self, data_batch=data_batch)

    reduce_per_replica._kprune_fix = True
    trainer.reduce_per_replica = reduce_per_replica
    trainer_class._maybe_symbolic_build = maybe_symbolic_build
    try:
        yield
    finally:
        trainer.reduce_per_replica = original_reduce
        trainer_class._maybe_symbolic_build = original_build


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
        raise MissingInternalError(
            f"kprune reads .tflite files with {_TFLITE_SCHEMA}, which TensorFlow "
            f"{tf.__version__} does not have (kprune.export.read_tflite_weights needs it; "
            "kprune is tested with TensorFlow 2.21)."
        ) from e
    missing = [name for name in ("Model", "BuiltinOperator") if not hasattr(schema, name)]
    if missing:
        raise MissingInternalError(
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
        raise MissingInternalError(
            f"{cls.__module__}.{cls.__name__} (TensorFlow {tf.__version__}) has no "
            "_get_ops_details(), which kprune uses to tell whether XNNPACK runs the model."
        )
    return details()
