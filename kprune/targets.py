"""Which variables of which layer are prunable.

Rules, checked with `isinstance` so subclasses of the Keras layers work too:

| layer                                     | pruned variables                       |
|-------------------------------------------|----------------------------------------|
| Dense, EinsumDense                        | kernel                                 |
| Conv1D/2D/3D, Conv1D/2D/3DTranspose       | kernel                                 |
| DepthwiseConv1D/2D                        | depthwise kernel                       |
| SeparableConv1D/2D                        | depthwise_kernel, pointwise_kernel     |
| Embedding                                 | embeddings                             |
| any layer with `get_prunable_weights()`   | what that method returns               |

Biases and normalization weights are never pruned by default. Layers with LoRA enabled or a
quantized dtype policy are refused with an error, since their effective kernel is not a single
variable that a mask could zero.

Example:

>>> layer = keras.layers.Dense(4)
>>> layer.build((None, 3))
>>> [v.name for v in prunable_weights(layer)]
['kernel']
"""

from __future__ import annotations

import keras

__all__ = ["is_prunable", "prunable_weights", "check_supported"]

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
)


def _attrs_for(layer):
    for classes, attrs in _KERNEL_ATTRS:
        if isinstance(layer, classes):
            return attrs
    return None


def is_prunable(layer) -> bool:
    """True if kprune knows which weights of `layer` to prune.

    Example:

    >>> is_prunable(keras.layers.Conv2D(8, 3)), is_prunable(keras.layers.BatchNormalization())
    (True, False)
    """
    if hasattr(layer, "get_prunable_weights") and callable(layer.get_prunable_weights):
        return True
    return _attrs_for(layer) is not None


def check_supported(layer):
    """Raises ValueError if `layer` is prunable in principle but in a state kprune cannot mask.

    Example:

    >>> check_supported(keras.layers.Dense(2))  # fine: returns None
    """
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
    """
    if hasattr(layer, "get_prunable_weights") and callable(layer.get_prunable_weights):
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
