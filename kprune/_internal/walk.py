"""Walking and cloning Keras models: every layer once, nested models and custom layers included.

`kprune.api` builds on these to find the layers to wrap, the masks and the report rows; the
export reads pruned variables in the same order, under the same keys.

Example:

>>> import keras
>>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="block")
>>> model = keras.Sequential([keras.Input((3,)), inner])
>>> [(layer.name, prefix) for layer, prefix in walk(model)]
[('block', ()), ('fc', ('block',))]
"""

from __future__ import annotations

import keras

from kprune._internal.compat import child_layers, is_legacy_keras_object

__all__ = [
    "check_model",
    "clone",
    "fresh_copy",
    "is_graph_model",
    "subclassed_error",
    "variable_path",
    "walk",
    "weight_key",
]


def walk(layer, opaque=(), prefix=(), seen=None):
    """Yields `(sublayer, names of its containers)` below `layer`, each layer once.

    Nested models and custom layers are entered; layers in `opaque` (a tuple of classes, e.g.
    `(PruningWrapper,)`, or a predicate `opaque(layer) -> bool`) are yielded but not entered,
    so a wrapped layer is not listed twice.

    Example:

    >>> list(walk(keras.layers.Dense(2)))  # a plain layer holds no layers
    []
    """
    seen = set() if seen is None else seen
    for child in child_layers(layer):
        if id(child) in seen or isinstance(child, keras.layers.InputLayer):
            continue
        seen.add(id(child))
        yield child, prefix
        if not (opaque(child) if callable(opaque) else isinstance(child, opaque)):
            yield from walk(child, opaque, prefix + (child.name,), seen)


def variable_path(layer, variable):
    """Names from `layer` down to `variable`: `("kernel",)`, or `("query", "kernel")` when a
    sublayer of `layer` (here a MultiHeadAttention's `query` EinsumDense) owns it.

    Example:

    >>> td = keras.layers.TimeDistributed(keras.layers.Dense(2, name="fc"))
    >>> td.build((None, 5, 3))
    >>> variable_path(td, td.layer.kernel)
    ('fc', 'kernel')
    """
    for child in child_layers(layer):
        if any(v is variable for v in child.weights):
            return (child.name, *variable_path(child, variable))
    return (variable.name,)


def weight_key(prefix, layer, variable):
    """Stable name of a pruned variable: containers / layer / variable, e.g. `block/fc/kernel`.

    A variable of a sublayer of `layer` is named by its path inside `layer`
    (`"block/mha/query/kernel"`). Keras variable paths depend on the name scopes active when a
    layer was built, which differ between `prune()` and `keras.models.load_model()`; this key
    does not.

    Example:

    >>> dense = keras.layers.Dense(2, name="fc")
    >>> dense.build((None, 3))
    >>> weight_key(("block",), dense, dense.kernel)
    'block/fc/kernel'
    """
    # A PruningWrapper keeps its own name, but paths inside it start at the wrapped layer
    # (`"fc/kernel"`, not `"fc/fc/kernel"`), so they are the same before and after strip().
    inner = layer.layer if getattr(layer, "is_pruning_wrapper", False) else layer
    return "/".join((*prefix, layer.name, *variable_path(inner, variable)))


def check_model(model, what):
    """TypeError unless `model` is a Keras 3 `keras.Model`; names tf_keras models as such.

    Example:

    >>> check_model("not a model", "prune")
    Traceback (most recent call last):
    TypeError: prune() takes a keras.Model (Keras 3). Received: 'not a model' of type str
    """
    if isinstance(model, keras.Model):
        return
    if is_legacy_keras_object(model):
        raise TypeError(
            f"{what}() takes a Keras 3 model, but received a legacy Keras 2 / tf_keras "
            f"{type(model).__name__}. kprune works with Keras 3 (`import keras`, keras>=3). "
            "For tf_keras models use tensorflow_model_optimization, or rebuild the model with "
            "Keras 3."
        )
    raise TypeError(
        f"{what}() takes a keras.Model (Keras 3). Received: {model!r} of type "
        f"{type(model).__name__}"
    )


def is_graph_model(model):
    """True for Sequential and functional models: those `keras.models.clone_model` can copy.

    A functional model (also a subclass of `keras.Model` built with `super().__init__(inputs,
    outputs)`) is a `keras.Function`, the public base class of Keras' functional graphs; a
    subclassed model whose structure is Python code is not.

    Example:

    >>> is_graph_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    True
    """
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and isinstance(model, keras.Function)
    )


def subclassed_error(model, what):
    """The TypeError for a subclassed model given to a function that clones models."""
    return TypeError(
        f"{what}() clones Sequential and functional models, but '{model.name}' is a subclassed "
        f"model ({type(model).__name__}), whose structure lives in Python code that cannot be "
        "cloned. Wrap the prunable layers where you create them instead, e.g. "
        "`self.fc = kprune.PruningWrapper(keras.layers.Dense(128), schedule)` in __init__, and "
        "train with kprune.PruningCallback() as usual."
    )


def fresh_copy(layer):
    """A new, unbuilt layer with the same config (weights are copied after cloning).

    A `Lambda` holds no state and, when its function is Python code, can only be rebuilt from
    its config with unsafe deserialization enabled process-wide: it is reused as it is.
    """
    if isinstance(layer, keras.Model) and not is_graph_model(layer):
        raise subclassed_error(layer, "prune")
    if isinstance(layer, keras.layers.Lambda) and not layer.weights:
        return layer
    try:
        return layer.__class__.from_config(layer.get_config())
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Layer '{layer.name}' ({type(layer).__module__}.{type(layer).__name__}) cannot be "
            "rebuilt from its own config: `from_config(layer.get_config())` fails with "
            f"{type(err).__name__}: {err}. kprune copies models layer by layer this way (as "
            "keras.models.clone_model does); fix the layer's get_config()/from_config()."
        ) from err


def clone(model, make_layer, compiled=True):
    """`keras.models.clone_model` with `make_layer(layer)`, then weights copied over.

    `make_layer(layer)` is called for every Layer and returns `(new_layer, copy_weights)`,
    where `copy_weights()` runs once the clone is built. Operator nodes of functional graphs
    (Keras Operations that are not Layers, e.g. from `x + y`) are passed through untouched.
    With `compiled=False` the copy is not compiled even if `model` is (`clone_model` copies
    the compile config of a compiled model).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> def same(layer):
    ...     new = fresh_copy(layer)
    ...     return new, lambda: new.set_weights(layer.get_weights())
    >>> copy = clone(model, same)
    >>> bool((copy.layers[0].kernel.numpy() == model.layers[0].kernel.numpy()).all())
    True
    """
    copies = []

    def clone_function(layer):
        # A functional graph also holds operator nodes (`x + y`, `keras.ops.relu(h)`): Keras
        # Operations that are not Layers, hold no state, and have no config to rebuild from
        # in general. Reusing the node in the new graph is what `clone_model` does by default.
        if not isinstance(layer, keras.layers.Layer):
            return layer
        new_layer, copy_weights = make_layer(layer)
        copies.append(copy_weights)
        return new_layer

    was_compiled = getattr(model, "compiled", False)
    if not compiled:
        model.compiled = False
    try:
        new_model = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    finally:
        if not compiled:
            model.compiled = was_compiled
    for copy_weights in copies:
        copy_weights()
    return new_model
