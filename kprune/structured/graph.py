"""Channel groups traced through the Keras graph: which weight slices go when a channel goes.

`trace_channels(model)` follows every tensor's channel (last) axis from layer to layer. Each
output channel of a Conv/Dense is an *element*; layers that combine tensors elementwise
(`Add`, `Multiply`, `Subtract`, ... and operator nodes such as `x + y`) join the elements they
combine, so channel c of every branch of a residual stage becomes one *channel class*: the unit
that channel pruning removes. Removing a class removes, in every layer it reaches:

* the output slice of each Conv/Dense that produces it (kernel and bias),
* the slice of each per-channel layer it passes through (BatchNorm's gamma, beta and moving
  statistics; a depthwise conv's kernel and bias),
* the input slice of every consumer's kernel (a `Flatten` before a Dense maps one channel to
  H*W input rows; `Concatenate` offsets the index; global pooling maps 1:1).

Classes whose channel cannot be removed are *pinned* and stay dense: the model's input
channels, the channels of its outputs, and every channel that reaches a layer the tracer
cannot follow (a `Lambda`, a `Reshape` across the channel axis, LayerNormalization, which mixes
channels, a custom layer...). Those layers are listed in `ChannelTrace.blocked`.

A *group* is the set of classes that share producing layers (one layer's channels, or a whole
residual stage); per-group pruning ("layer" scope) prunes the same fraction of every group.

Example:

>>> import keras
>>> x = keras.Input((8, 8, 3))
>>> h = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
>>> y = h + keras.layers.Conv2D(4, 3, padding="same", name="b")(h)
>>> out = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(y))
>>> trace = trace_channels(keras.Model(x, out))
>>> trace.num_classes, [(g.name, g.producers, g.size) for g in trace.groups]
(4, [('a', ('a', 'b'), 4)])
>>> trace.axis_maps(trace.layer("logits"), "kernel")  # inputs prunable, outputs pinned
[(0, array([0, 1, 2, 3])), (1, array([-1, -1]))]
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from kprune._internal.compat import graph_nodes

__all__ = ["Blocked", "ChannelGroup", "ChannelTrace", "trace_channels", "CHANNEL_WEIGHTS"]

L = keras.layers

# The weights of each layer type that carry a channel axis (sliced by shrink(), masked in
# channel-granularity training). Order matters only for reports.
CHANNEL_WEIGHTS = {
    "Conv": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "Depthwise": ("kernel", "bias"),
    "Separable": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}

_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_TRANSPOSE = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
# Layers that act on each channel on its own and keep the channel axis last.
_PER_CHANNEL = (
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
)
_ELEMENTWISE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Operator nodes (`x + y`, `keras.ops.relu(h)`), by the class name of the Keras operation.
_OP_ELEMENTWISE = {"Add", "Subtract", "Multiply", "Maximum", "Minimum"}
_OP_PER_CHANNEL = {
    "Relu",
    "Relu6",
    "Sigmoid",
    "HardSigmoid",
    "Silu",
    "HardSilu",
    "Gelu",
    "Elu",
    "Selu",
    "LeakyRelu",
    "Softplus",
    "Softsign",
    "Tanh",
    "Abs",
    "Negative",
    "Square",
    "Identity",
}
_CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}


@dataclasses.dataclass(frozen=True)
class Blocked:
    """A layer the tracer cannot follow: the channels that reach it stay dense."""

    layer: str
    type: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Channel classes that share their producing layers (one layer, or a residual stage).

    Attributes:
        name: the first producing layer's name.
        producers: names of the Conv/Dense layers whose output channels the classes are.
        classes: the class ids (indices into the trace's classes), in channel order.
    """

    name: str
    producers: tuple
    classes: np.ndarray

    @property
    def size(self):
        return int(len(self.classes))


@dataclasses.dataclass
class ChannelTrace:
    """The result of `trace_channels`: channel classes, their groups and the weight slices.

    Attributes:
        num_classes: number of prunable channel classes.
        groups: the `ChannelGroup`s, in the order of their first producer in the graph.
        class_group: for every class id, the index of its group in `groups`.
        blocked: the `Blocked` layers, in graph order.
        producers: for every producing layer's name, the class ids of its output channels
            (-1 for pinned ones).
    """

    num_classes: int
    groups: list
    class_group: np.ndarray
    blocked: list
    producers: dict
    _maps: dict
    _layers: dict
    spatial: dict = dataclasses.field(default_factory=dict)
    reshapes: list = dataclasses.field(default_factory=list)

    def layers(self):
        """The layers that own a weight slice of some prunable class, in graph order."""
        return [
            self._layers[key]
            for key in self._layers
            if any((idx >= 0).any() for ms in self._maps[key].values() for _, idx in ms)
        ]

    def traced_layers(self):
        """Every layer with a channel weight the tracer recorded (prunable or pinned)."""
        return list(self._layers.values())

    def layer(self, name):
        """The traced layer called `name`."""
        for layer in self._layers.values():
            if layer.name == name:
                return layer
        raise KeyError(f"No traced layer named {name!r}.")

    def weights_of(self, layer):
        """Names of the weights of `layer` that carry channel slices (e.g. kernel, bias)."""
        return list(self._maps.get(id(layer), {}))

    def axis_maps(self, layer, weight):
        """`[(axis, index)]` of one weight: along `axis`, slice i belongs to class index[i].

        -1 means the slice belongs to no prunable class and is always kept. A kernel has up to
        two maps (its input and output axes).
        """
        return [(axis, idx.copy()) for axis, idx in self._maps.get(id(layer), {}).get(weight, [])]

    def summary(self):
        """One line per group and per blocked layer (for logs and reports)."""
        lines = [f"{len(self.groups)} channel group(s), {self.num_classes} prunable channels"]
        for g in self.groups:
            lines.append(f"  {g.name}: {g.size} channels, produced by {', '.join(g.producers)}")
        for b in self.blocked:
            lines.append(f"  dense (not traceable): {b.layer} ({b.type}): {b.reason}")
        return "\n".join(lines)


class _Untraceable(Exception):
    pass


def _unwrap(layer):
    return layer.layer if getattr(layer, "is_pruning_wrapper", False) else layer


def _last_dim(tensor):
    shape = tuple(tensor.shape)
    if len(shape) < 2 or shape[-1] is None:
        return None
    return int(shape[-1])


class _Tracer:
    def __init__(self):
        self.parent = []
        self.pinned = []
        self.producer = []  # the producing layer's id for every element, or None
        self.tmap = {}  # id(KerasTensor) -> np.ndarray of element ids, or None
        self.maps = {}  # id(layer) -> {weight name: [[axis, elements]]}
        self.layers = {}  # id(layer) -> layer, in graph order
        self.produced = {}  # id(layer) -> elements of its output channels
        self.producer_names = {}  # id(layer) -> name, in graph order
        self.blocked = []
        self.keep_alive = []  # tensors whose ids key tmap must outlive the trace
        self.reshapes = {}  # id(layer) -> (Reshape layer, elements of its channel axis)
        self.spatial = {}  # id(layer) -> output positions per example (MACs per channel pair)

    # -- elements ---------------------------------------------------------------------------
    def new(self, n, pinned=False, producer=None):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.pinned.extend([pinned] * n)
        self.producer.extend([producer] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, e):
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:
            self.parent[e], e = root, self.parent[e]
        return root

    def union(self, a, b):
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                lo, hi = min(rx, ry), max(rx, ry)
                self.parent[hi] = lo
                self.pinned[lo] = self.pinned[lo] or self.pinned[hi]

    def pin(self, elements):
        for e in np.asarray(elements).tolist():
            self.pinned[self.find(e)] = True

    def produce(self, layer, n):
        if id(layer) not in self.produced:
            self.produced[id(layer)] = self.new(n, producer=id(layer))
            self.producer_names[id(layer)] = layer.name
            activation = getattr(getattr(layer, "activation", None), "__name__", "")
            if activation in _CHANNEL_MIXING_ACTIVATIONS:  # a removed channel would change the rest
                self.pin(self.produced[id(layer)])
        return self.produced[id(layer)]

    def record(self, layer, weight, axis, elements):
        if getattr(layer, weight, None) is None:
            return
        self.layers.setdefault(id(layer), layer)
        axes = self.maps.setdefault(id(layer), {}).setdefault(weight, [])
        for entry in axes:
            if entry[0] == axis:  # a shared layer called again: the calls must agree
                self.union(entry[1], elements)
                return
        axes.append([axis, np.asarray(elements, dtype=np.int64)])

    # -- graph ------------------------------------------------------------------------------
    def trace_graph(self, model, input_maps=None):
        nodes = graph_nodes(model)
        if nodes is None:
            raise TypeError(
                f"Model '{model.name}' has no Keras graph to follow (a subclassed model, or a "
                "Sequential model never built from keras.Input). Channel pruning needs a "
                "Sequential or functional model."
            )
        if input_maps is not None:
            for t, m in zip(model.inputs, input_maps):
                self.tmap[id(t)] = m
                self.keep_alive.append(t)
        for node in nodes:
            op = node.operation
            outs = list(node.output_tensors)
            self.keep_alive.extend(outs)
            if isinstance(op, L.InputLayer):
                for t in outs:
                    if id(t) not in self.tmap:
                        n = _last_dim(t)
                        self.tmap[id(t)] = None if n is None else self.new(n, pinned=True)
                continue
            ins = [self.tmap.get(id(t)) for t in node.input_tensors]
            try:
                results = self.follow(op, node, ins, outs)
            except _Untraceable as why:
                inner = _unwrap(op)
                # Listed when it costs prunable channels (a softmax after the logits costs
                # nothing: the logits' channels are pinned anyway).
                if any(not self.pinned[self.find(e)] for m in ins if m is not None for e in m):
                    self.blocked.append(Blocked(inner.name, type(inner).__name__, str(why)))
                for m in ins:
                    if m is not None:
                        self.pin(m)
                results = [
                    None if _last_dim(t) is None else self.new(_last_dim(t), pinned=True)
                    for t in outs
                ]
            for t, m in zip(outs, results):
                self.tmap[id(t)] = m
        return [self.tmap.get(id(t)) for t in model.outputs]

    def follow(self, op, node, ins, outs):
        layer = _unwrap(op)
        if isinstance(layer, keras.Model):
            return self.trace_graph(layer, ins)
        if not isinstance(layer, L.Layer):
            return self.follow_operator(layer, node, ins, outs)
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _Untraceable("channels_first data format")
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise _Untraceable("LoRA or quantized weights")
        x = ins[0] if ins else None
        shape = tuple((node.input_tensors if isinstance(layer, _TRANSPOSE) else outs)[0].shape)
        self.spatial.setdefault(id(layer), math.prod(d or 1 for d in shape[1:-1]))
        if x is None and not isinstance(layer, L.Concatenate):
            raise _Untraceable("its input has no static channel axis")
        if isinstance(layer, _SEPARABLE):
            mult = int(layer.depth_multiplier)
            out = self.produce(layer, int(layer.filters))
            self.record(layer, "depthwise_kernel", -2, x)
            self.record(layer, "pointwise_kernel", -2, np.repeat(x, mult))
            self.record(layer, "pointwise_kernel", -1, out)
            self.record(layer, "bias", 0, out)
            return [out]
        if isinstance(layer, _DEPTHWISE):
            out = np.repeat(x, int(layer.depth_multiplier))
            self.record(layer, "kernel", -2, x)
            self.record(layer, "bias", 0, out)
            return [out]
        if isinstance(layer, _TRANSPOSE + _CONV):
            if int(getattr(layer, "groups", 1)) != 1:
                raise _Untraceable("grouped convolution")
            out = self.produce(layer, int(layer.filters))
            in_axis, out_axis = (-1, -2) if isinstance(layer, _TRANSPOSE) else (-2, -1)
            self.record(layer, "kernel", in_axis, x)
            self.record(layer, "kernel", out_axis, out)
            self.record(layer, "bias", 0, out)
            return [out]
        if isinstance(layer, L.Dense):
            out = self.produce(layer, int(layer.units))
            self.record(layer, "kernel", 0, x)
            self.record(layer, "kernel", 1, out)
            self.record(layer, "bias", 0, out)
            return [out]
        if isinstance(layer, L.BatchNormalization):
            rank = len(outs[0].shape)
            if int(layer.axis) not in (-1, rank - 1):
                raise _Untraceable(f"normalizes axis {layer.axis}, not the channel axis")
            for weight in CHANNEL_WEIGHTS["BatchNormalization"]:
                self.record(layer, weight, 0, x)
            return [x]
        if isinstance(layer, L.Activation):
            name = getattr(layer.activation, "__name__", "")
            if name in _CHANNEL_MIXING_ACTIVATIONS:
                raise _Untraceable(f"{name} mixes the channels")
            return [x]
        if isinstance(layer, L.Softmax):
            raise _Untraceable("softmax mixes the channels")
        if isinstance(layer, _PER_CHANNEL):
            return [x]
        if isinstance(layer, L.Flatten):
            shape = tuple(node.input_tensors[0].shape)[1:]
            if any(d is None for d in shape):
                raise _Untraceable("Flatten of a tensor without static spatial size")
            return [np.tile(x, math.prod(shape[:-1]))]
        if isinstance(layer, L.Reshape):
            if _last_dim(outs[0]) != len(x):
                raise _Untraceable("reshapes across the channel axis")
            self.reshapes.setdefault(id(layer), (layer, x))
            return [x]
        if isinstance(layer, L.Concatenate):
            return [self.concatenate(node, ins, int(layer.axis), outs[0])]
        if isinstance(layer, _ELEMENTWISE):
            return [self.elementwise(ins, outs[0])]
        raise _Untraceable("not a layer the channel tracer follows")

    def follow_operator(self, op, node, ins, outs):
        name = type(op).__name__
        constants = [
            a
            for a in list(node.arguments.args) + list(node.arguments.kwargs.values())
            if not isinstance(a, keras.KerasTensor)
        ]
        if any(np.ndim(c) > 0 for c in constants if not isinstance(c, (str, bool, type(None)))):
            raise _Untraceable(f"operator {name} with a non-scalar constant")
        if name == "Concatenate" and len(outs) == 1:
            return [self.concatenate(node, ins, int(getattr(op, "axis", 0)), outs[0])]
        if name in _OP_ELEMENTWISE and ins:
            return [self.elementwise(ins, outs[0])]
        if name in _OP_PER_CHANNEL and len(ins) == 1 and ins[0] is not None:
            return [ins[0]]
        raise _Untraceable(f"operator {name} is not one the channel tracer follows")

    def concatenate(self, node, ins, axis, out):
        rank = len(out.shape)
        if any(m is None for m in ins):
            raise _Untraceable("an input has no static channel axis")
        if axis in (-1, rank - 1):
            return np.concatenate(ins)
        return self.elementwise(ins, out)  # along another axis: channels line up

    def elementwise(self, ins, out):
        n = _last_dim(out)
        if n is None or any(m is None for m in ins):
            raise _Untraceable("an input has no static channel axis")
        full = [m for m in ins if len(m) == n]
        for m in ins:
            if len(m) != n:  # broadcast along the channel axis (size 1): keep it whole
                self.pin(m)
        for m in full[1:]:
            self.union(full[0], m)
        return full[0] if full else self.new(n, pinned=True)

    # -- result -----------------------------------------------------------------------------
    def finish(self, outputs, exclude):
        for m in outputs:
            if m is not None:
                self.pin(m)
        for key, layer in self.layers.items():
            if layer.name in exclude:
                for axes in self.maps[key].values():
                    for _, elements in axes:
                        self.pin(elements)
        for key in self.produced:
            if self.producer_names[key] in exclude:
                self.pin(self.produced[key])
        class_of_root, producers_of_class = {}, []
        for e in range(len(self.parent)):
            root = self.find(e)
            if self.pinned[root] or self.producer[e] is None:
                continue
            if root not in class_of_root:
                class_of_root[root] = len(producers_of_class)
                producers_of_class.append([])
            cls = class_of_root[root]
            if self.producer[e] not in producers_of_class[cls]:
                producers_of_class[cls].append(self.producer[e])

        def class_ids(elements):
            roots = [self.find(e) for e in np.asarray(elements).tolist()]
            return np.array([class_of_root.get(r, -1) for r in roots], dtype=np.int64)

        # Groups: classes linked by a shared producer.
        order = list(self.producer_names)
        group_of_producer = {}
        groups_producers, groups_classes = [], []
        for cls, prods in enumerate(producers_of_class):
            hits = sorted({group_of_producer[p] for p in prods if p in group_of_producer})
            if not hits:
                gid = len(groups_producers)
                groups_producers.append(set())
                groups_classes.append([])
            else:
                gid = hits[0]
                for other in hits[1:]:  # merge groups joined by this class
                    groups_producers[gid] |= groups_producers[other]
                    groups_classes[gid] += groups_classes[other]
                    for p in groups_producers[other]:
                        group_of_producer[p] = gid
                    groups_producers[other], groups_classes[other] = set(), []
            groups_producers[gid] |= set(prods)
            groups_classes[gid].append(cls)
            for p in prods:
                group_of_producer[p] = gid
        groups = []
        class_group = np.full(len(producers_of_class), -1, dtype=np.int64)
        live = [g for g in range(len(groups_producers)) if groups_classes[g]]
        live.sort(key=lambda g: min(order.index(p) for p in groups_producers[g]))
        for gi, g in enumerate(live):
            prods = sorted(groups_producers[g], key=order.index)
            classes = np.array(sorted(groups_classes[g]), dtype=np.int64)
            class_group[classes] = gi
            names = tuple(self.producer_names[p] for p in prods)
            groups.append(ChannelGroup(names[0], names, classes))
        maps = {
            key: {
                weight: [(axis, class_ids(elements)) for axis, elements in axes]
                for weight, axes in by_weight.items()
            }
            for key, by_weight in self.maps.items()
        }
        producers = {self.producer_names[k]: class_ids(v) for k, v in self.produced.items()}
        return ChannelTrace(
            num_classes=len(producers_of_class),
            groups=groups,
            class_group=class_group,
            blocked=self.blocked,
            producers=producers,
            _maps=maps,
            _layers=self.layers,
            spatial=self.spatial,
            reshapes=[(layer, class_ids(x)) for layer, x in self.reshapes.values()],
        )


def trace_channels(model, exclude=()):
    """Traces the channel classes of a built Sequential or functional model.

    Works on plain models and on models pruned by kprune (it looks through `PruningWrapper`).

    Args:
        model: a built `keras.Model` (Sequential or functional; nested models are followed).
        exclude: names of layers whose channels must stay (their classes are pinned).

    Returns:
        A `ChannelTrace`.

    Raises:
        TypeError: a subclassed model, or a Sequential model without a graph.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="h"),
    ...                           keras.layers.BatchNormalization(name="bn"),
    ...                           keras.layers.Dense(3, name="out")])
    >>> trace = trace_channels(model)
    >>> trace.producers["h"], trace.producers["out"]  # the logits are never pruned
    (array([0, 1, 2, 3, 4]), array([-1, -1, -1]))
    >>> trace.weights_of(trace.layer("bn"))
    ['gamma', 'beta', 'moving_mean', 'moving_variance']
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"trace_channels() takes a keras.Model. Received: {model!r}")
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Start it with keras.Input(shape) so that its "
            "weights and shapes exist."
        )
    if isinstance(exclude, str):
        exclude = [exclude]
    tracer = _Tracer()
    outputs = tracer.trace_graph(model)
    return tracer.finish(outputs, set(exclude or ()))
