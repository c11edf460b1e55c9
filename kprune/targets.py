"""Which variables of which layer are prunable.

Rules, checked with `isinstance` so subclasses of the Keras layers work too:

| layer                                     | pruned variables                       |
|-------------------------------------------|----------------------------------------|
| Dense, EinsumDense                        | kernel                                 |
| Conv1D/2D/3D, Conv1D/2D/3DTranspose       | kernel                                 |
| DepthwiseConv1D/2D                        | depthwise kernel                       |
| SeparableConv1D/2D                        | depthwise_kernel, pointwise_kernel     |
| Embedding                                 | embeddings                             |
| LSTMCell, GRUCell, SimpleRNNCell, any RNN | kernel, recurrent_kernel               |
| cell with both (ConvLSTM's)               |                                        |
| any layer with `get_prunable_weights()`   | what that method returns               |
| a layer that owns such layers:            | those of its sublayers, by the rules   |
| MultiHeadAttention, TimeDistributed,      | above                                  |
| Bidirectional, LSTM/GRU/SimpleRNN, custom |                                        |
| blocks (keras-hub's TransformerEncoder)   |                                        |

A layer that owns layers (a *container*) is wrapped as a whole: its `PruningWrapper` masks the
nested variables, since the wrapper substitutes masked values for every variable the wrapped
layer reads in its call. Nested variables are named by their path inside the container
(`"query/kernel"` in a MultiHeadAttention).

Biases and normalization weights are never pruned by default. A weight that looks prunable (a
trainable matrix that is no bias, e.g. a custom layer's own `add_weight` kernel without
`get_prunable_weights()`) but that no rule covers is reported by `left_dense_weights`.

Layers with LoRA enabled or a quantized dtype policy are refused with an error, since their
effective kernel is not a single variable that a mask could zero.

Example:

>>> layer = keras.layers.Dense(4)
>>> layer.build((None, 3))
>>> [v.name for v in prunable_weights(layer)]
['kernel']
"""

from __future__ import annotations

import keras

from kprune._internal.compat import child_layers
from kprune._internal.walk import walk

__all__ = [
    "check_supported",
    "is_container",
    "is_prunable",
    "layer_variable",
    "left_dense_weights",
    "prunable_weights",
]

_KERNEL_ATTRS = (
    ((keras.layers.Dense, keras.layers.EinsumDense), ("kernel",)),
    (
        (
            keras.layers.DepthwiseConv1D,
            keras.layers.DepthwiseConv2D,
        ),
        # Keras 3 stores the depthwise kernel as `kernel` (older releases:
        # `depthwise_kernel`); either name is accepted.
        (("depthwise_kernel", "kernel"),),
    ),
    (
        (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D),
        ("depthwise_kernel", "pointwise_kernel"),
    ),
    (
        (
            keras.layers.Conv1D,
            keras.layers.Conv2D,
            keras.layers.Conv3D,
            keras.layers.Conv1DTranspose,
            keras.layers.Conv2DTranspose,
            keras.layers.Conv3DTranspose,
        ),
        ("kernel",),
    ),
    ((keras.layers.Embedding,), ("embeddings",)),
    (
        (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell),
        ("kernel", "recurrent_kernel"),
    ),
)
_CELL_ATTRS = ("kernel", "recurrent_kernel")

# Containers whose sublayers only exist once built (is_prunable() on an unbuilt one).
_BUILDS_SUBLAYERS = tuple(
    cls
    for cls in (
        keras.layers.MultiHeadAttention,
        getattr(keras.layers, "GroupQueryAttention", None),
        getattr(keras.layers, "GroupedQueryAttention", None),
    )
    if cls is not None
)

# Layers whose matrices are no kernels (normalization scales, per-position slopes).
_NEVER_PRUNED = tuple(
    cls
    for cls in (
        keras.layers.BatchNormalization,
        keras.layers.LayerNormalization,
        keras.layers.GroupNormalization,
        getattr(keras.layers, "RMSNormalization", None),
        keras.layers.PReLU,
    )
    if cls is not None
)


def _has_rule(layer):
    return hasattr(layer, "get_prunable_weights") and callable(layer.get_prunable_weights)


def _attrs_for(layer):
    for classes, attrs in _KERNEL_ATTRS:
        if isinstance(layer, classes):
            return attrs
    # Any other RNN cell (ConvLSTMCell, a user's cell) with a kernel and a recurrent kernel.
    if hasattr(layer, "state_size") and all(
        isinstance(getattr(layer, name, None), keras.Variable) for name in _CELL_ATTRS
    ):
        return _CELL_ATTRS
    return None


def _is_leaf(layer):
    """True if a rule of its own names the prunable weights of `layer`."""
    return _has_rule(layer) or _attrs_for(layer) is not None


def is_container(layer) -> bool:
    """True for a layer without a rule of its own that owns prunable layers.

    A container (MultiHeadAttention, TimeDistributed, Bidirectional, an RNN layer, a custom
    block) is wrapped as a whole; nested models are not containers (they are walked into).

    Example:

    >>> is_container(keras.layers.LSTM(4)), is_container(keras.layers.Dense(4))
    (True, False)
    """
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model):
        return False
    if getattr(layer, "is_pruning_wrapper", False):  # already wrapped: nothing more to wrap
        return False
    if _is_leaf(layer):
        return False
    if isinstance(layer, _BUILDS_SUBLAYERS) and not layer.built:
        return True
    return any(_is_leaf(child) or is_container(child) for child in child_layers(layer))


def is_prunable(layer) -> bool:
    """True if kprune knows which weights of `layer` to prune.

    Example:

    >>> is_prunable(keras.layers.Conv2D(8, 3)), is_prunable(keras.layers.BatchNormalization())
    (True, False)
    >>> is_prunable(keras.layers.TimeDistributed(keras.layers.Dense(2)))
    True
    """
    return _is_leaf(layer) or is_container(layer)


def _units(layer):
    """The layers below a container that have a rule of their own, each once."""
    units = []
    for child, _ in walk(layer, opaque=_is_leaf):
        if _is_leaf(child):
            units.append(child)
    return units


def check_supported(layer):
    """Raises ValueError if `layer` is prunable in principle but in a state kprune cannot mask.

    A container is checked sublayer by sublayer.

    Example:

    >>> check_supported(keras.layers.Dense(2))  # fine: returns None
    """
    if is_container(layer):
        for unit in _units(layer):
            check_supported(unit)
        return
    if getattr(layer, "lora_enabled", False) or getattr(layer, "lora_rank", None):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has LoRA enabled: its effective "
            "kernel is kernel + lora_a @ lora_b, which a mask cannot keep sparse. Prune the "
            "model before enabling LoRA, or merge the LoRA weights into the kernel first."
        )
    mode = getattr(layer, "quantization_mode", None)
    if mode is None:
        mode = getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)
    if mode:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) is quantized "
            f"(quantization_mode={mode!r}); kprune prunes float weights. Prune the float model "
            "first and quantize after `kprune.strip()` (or export with quantize='dynamic'/'int8')."
        )


def layer_variable(layer, attr):
    """The variable `layer.<attr>` itself (not a property computed from it, as LoRA's kernel).

    Example:

    >>> dense = keras.layers.Dense(2)
    >>> dense.build((None, 3))
    >>> tuple(layer_variable(dense, "bias").shape)
    (2,)
    """
    return _variable(layer, attr)


def _variable(layer, attr):
    # Dense/Conv expose `kernel` as a property that may add LoRA terms; the variable itself is
    # stored under a leading underscore. Prefer it when present.
    names = attr if isinstance(attr, tuple) else (attr,)
    for name in names:
        for candidate in ("_" + name, name):
            value = getattr(layer, candidate, None)
            if isinstance(value, keras.Variable):
                return value
    raise ValueError(
        f"Layer '{layer.name}' ({type(layer).__name__}) has no variable "
        f"{' or '.join(f'`{n}`' for n in names)}. Is it built?"
    )


def prunable_weights(layer):
    """The variables of a built `layer` that pruning should mask (possibly empty).

    Example:

    >>> conv = keras.layers.SeparableConv2D(4, 3)
    >>> conv.build((None, 8, 8, 2))
    >>> [v.name for v in prunable_weights(conv)]
    ['depthwise_kernel', 'pointwise_kernel']
    >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    >>> mha.build((None, 5, 8), (None, 5, 8))
    >>> len(prunable_weights(mha))  # query, key, value and output kernels
    4
    """
    if not _is_leaf(layer):
        if not is_container(layer):
            return []
        weights, seen = [], set()
        for unit in _units(layer):
            for w in prunable_weights(unit):
                if id(w) not in seen:
                    seen.add(id(w))
                    weights.append(w)
        return weights
    if _has_rule(layer):
        weights = list(layer.get_prunable_weights())
        for w in weights:
            if not isinstance(w, keras.Variable):
                raise TypeError(
                    f"`{type(layer).__name__}.get_prunable_weights()` must return Keras "
                    f"variables of the layer. Received: {w!r}"
                )
        return weights
    attrs = _attrs_for(layer)
    if attrs is None:
        return []
    return [_variable(layer, attr) for attr in attrs]


def _looks_prunable(owner, variable):
    # A trainable matrix (two axes longer than 1: a (1, 1, d) class token is a vector) that is
    # no bias nor a normalization/PReLU parameter.
    return (
        variable.trainable
        and sum(1 for d in variable.shape if d is None or d > 1) >= 2
        and "bias" not in variable.name
        and not isinstance(owner, _NEVER_PRUNED)
    )


def _own_variables(layer):
    nested = {id(v) for child in child_layers(layer) for v in child.weights}
    return [v for v in layer.weights if id(v) not in nested]


def left_dense_weights(layer, pruned=None):
    """Variables of `layer` that look prunable but that kprune does not prune.

    For a layer with a rule or a container: those of its (nested) variables that look like
    kernels (trainable, two axes longer than 1, no bias) and that the rules do not name. For
    any other layer: its own such variables (its sublayers are walked on their own). `pruned`:
    the variables that are masked (default: `prunable_weights(layer)`).

    Example:

    >>> class Custom(keras.layers.Layer):  # no get_prunable_weights()
    ...     def build(self, shape):
    ...         self.w = self.add_weight(shape=(shape[-1], 4), name="w")
    ...     def call(self, x):
    ...         return x @ self.w
    >>> layer = Custom()
    >>> layer.build((None, 3))
    >>> [v.name for v in left_dense_weights(layer)]
    ['w']
    """
    if not layer.built:
        return []
    if not is_prunable(layer):
        return [v for v in _own_variables(layer) if _looks_prunable(layer, v)]
    pruned = {id(w) for w in (prunable_weights(layer) if pruned is None else pruned)}
    owners = [(layer, _own_variables(layer))]
    owners += [(child, _own_variables(child)) for child, _ in walk(layer)]
    return [
        v
        for owner, variables in owners
        for v in variables
        if id(v) not in pruned and _looks_prunable(owner, v)
    ]
