"""`shrink(model)`: a plain, smaller Keras model with the pruned channels removed.

A model pruned with `granularity="channel"` computes with whole channels masked to zero.
`shrink()` rebuilds it without them: every Conv/Dense gets fewer filters/units, every
BatchNorm, depthwise conv and consumer kernel loses the matching slices, a `Reshape` that
keeps the channel axis last gets the new channel count. The result has no kprune layers, loads
without kprune, and its outputs equal the masked model's to float tolerance.

Example:

>>> import keras
>>> import numpy as np
>>> import kprune
>>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="h"),
...                           keras.layers.Dense(2, name="out")])
>>> pruned = kprune.prune(model, None, granularity="channel")
>>> kprune.set_masks(pruned, {"h/kernel": np.repeat([[1, 0, 1, 0]], 6, 0),
...                           "h/bias": np.array([1, 0, 1, 0]),
...                           "out/kernel": np.array([[1, 1], [0, 0], [1, 1], [0, 0]])})
>>> small = shrink(pruned)
>>> small.get_layer("h").units, type(small.get_layer("out")).__name__
(2, 'Dense')
"""

from __future__ import annotations

import keras
import numpy as np

from kprune._internal.walk import check_model, clone, fresh_copy, is_graph_model
from kprune.api import strip
from kprune.masks import pruning_wrappers
from kprune.structured.engine import channel_weight_names
from kprune.structured.graph import trace_channels
from kprune.targets import layer_variable

__all__ = ["shrink", "channel_keep", "zero_channel_keep"]

_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


def channel_keep(model, trace=None):
    """For every channel class of a channel-pruned `model`, True if it is kept.

    A class is removed when every mask slice of it is zero.

    Example:

    >>> import keras, kprune
    >>> pruned = kprune.prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
    ...                                         keras.layers.Dense(1)]), None,
    ...                       granularity="channel")
    >>> channel_keep(pruned).tolist()
    [True, True]
    """
    trace = trace_channels(model) if trace is None else trace
    alive = np.zeros(trace.num_classes + 1, bool)
    for wrapper in pruning_wrappers(model):
        if wrapper.channel_weights is None:
            continue
        for name, mask in zip(wrapper.channel_weights, wrapper.masks):
            value = np.asarray(mask.numpy()) != 0
            for axis, idx in trace.axis_maps(wrapper.layer, name):
                axis = axis % value.ndim
                others = tuple(a for a in range(value.ndim) if a != axis)
                per_slice = value.any(axis=others) if others else value
                np.logical_or.at(alive, np.where(idx < 0, trace.num_classes, idx), per_slice)
    return alive[: trace.num_classes]


def _kept(idx, keep):
    return np.array([i for i, c in enumerate(idx.tolist()) if c < 0 or keep[c]], dtype=np.int64)


def shrink(model):
    """Returns a plain Keras model without the channels a channel-pruned `model` removed.

    Args:
        model: a Sequential or functional model pruned with
            `kprune.prune(..., granularity="channel")` (wrappers still in place, e.g. right
            after `fit`).

    Returns:
        A new, uncompiled `keras.Model` of plain Keras layers, with the same inputs and
        outputs and the same predictions (to float tolerance), fewer parameters and MACs.

    Raises:
        TypeError: `model` is not a Keras 3 Sequential/functional model.
        ValueError: `model` has no channel masks (not pruned by channel).
    """
    check_model(model, "shrink")
    if not is_graph_model(model):
        raise TypeError(
            f"shrink() rebuilds Sequential and functional models; '{model.name}' is "
            f"subclassed ({type(model).__name__})."
        )
    wrappers = [w for w in pruning_wrappers(model) if w.channel_weights is not None]
    if not wrappers:
        raise ValueError(
            f"Model '{model.name}' has no channel masks: shrink() removes the channels of a "
            "model pruned with kprune.prune(model, schedule, granularity='channel'). For "
            "weight pruning use kprune.strip() (the zeros stay in dense kernels)."
        )
    keep = channel_keep(model)
    plain = strip(model)
    trace = trace_channels(plain)
    if trace.num_classes != len(keep):  # pragma: no cover - strip() keeps the graph
        raise RuntimeError("The stripped model traces differently from the pruned model.")
    return _rebuild(plain, trace, keep)


def zero_channel_keep(model, trace=None):
    """For every channel class of a plain `model`, True unless all its trainable slices are 0.

    This is what `kprune.strip()` leaves of a channel-pruned model: the masks are gone, the
    removed channels are zero in every kernel, bias and BatchNorm gamma/beta they touch. A
    class whose weights are all zero contributes nothing to the outputs, so removing it keeps
    them (to float tolerance) whatever pruned it. Every producing layer keeps at least one
    channel (its first, if all are zero), so no tensor becomes empty.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="h"),
    ...                           keras.layers.Dense(1, name="out")])
    >>> kernel, bias = model.get_layer("h").get_weights()
    >>> kernel[:, 1] = 0
    >>> model.get_layer("h").set_weights([kernel, bias])  # the bias starts at zero
    >>> out_kernel, out_bias = model.get_layer("out").get_weights()
    >>> model.get_layer("out").set_weights([out_kernel * [[1], [0]], out_bias])
    >>> zero_channel_keep(model).tolist()
    [True, False]
    """
    trace = trace_channels(model) if trace is None else trace
    alive = np.zeros(trace.num_classes + 1, bool)
    for layer in trace.traced_layers():
        for name in channel_weight_names(trace, layer):
            value = np.asarray(layer_variable(layer, name).numpy()) != 0
            for axis, idx in trace.axis_maps(layer, name):
                axis = axis % value.ndim
                others = tuple(a for a in range(value.ndim) if a != axis)
                per_slice = value.any(axis=others) if others else value
                np.logical_or.at(alive, np.where(idx < 0, trace.num_classes, idx), per_slice)
    alive = alive[: trace.num_classes]
    for ids in trace.producers.values():
        ids = ids[ids >= 0]
        if len(ids) and not alive[ids].any():
            alive[ids[0]] = True
    return alive


def _rebuild(plain, trace, keep):
    """`plain` (no wrappers) rebuilt without the classes where `keep` is False."""
    traced = {id(layer): layer for layer in trace.traced_layers()}
    reshapes = {id(layer): idx for layer, idx in trace.reshapes}

    def make_layer(layer):
        if id(layer) in reshapes:
            config = layer.get_config()
            target = list(config["target_shape"])
            target[-1] = len(_kept(reshapes[id(layer)], keep))
            config["target_shape"] = tuple(target)
            new = layer.__class__.from_config(config)
            return new, lambda: None
        if id(layer) not in traced:
            new = fresh_copy(layer)
            return new, lambda: new.set_weights(layer.get_weights())
        config = layer.get_config()
        out_weight, out_axis, key = "kernel", -1, None
        if isinstance(layer, _SEPARABLE):
            out_weight, key = "pointwise_kernel", "filters"
        elif isinstance(layer, _TRANSPOSE):
            out_axis, key = -2, "filters"
        elif isinstance(layer, keras.layers.Dense):
            out_axis, key = 1, "units"
        elif "filters" in config and not isinstance(
            layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
        ):
            key = "filters"
        if key is not None:
            for axis, idx in trace.axis_maps(layer, out_weight):
                rank = len(getattr(layer, out_weight).shape)
                if axis % rank == out_axis % rank:
                    config[key] = len(_kept(idx, keep))
        new = layer.__class__.from_config(config)
        return new, lambda: new.set_weights(_sliced_weights(layer, trace, keep))

    return clone(plain, make_layer, compiled=False)


def _sliced_weights(layer, trace, keep):
    by_id = {}
    for name in trace.weights_of(layer):
        value = np.asarray(layer_variable(layer, name).numpy())
        for axis, idx in trace.axis_maps(layer, name):
            value = np.take(value, _kept(idx, keep), axis=axis)
        by_id[id(layer_variable(layer, name))] = value
    return [by_id.get(id(v), np.asarray(v.numpy())) for v in layer.weights]
