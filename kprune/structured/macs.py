"""Multiply-accumulates (MACs) and parameters of a Keras model, per layer, from its shapes.

`count_macs(model)` walks a built Sequential or functional model (nested models entered,
`PruningWrapper`s looked through to the layer they wrap) and computes, for every layer, the
multiply-accumulates of one forward pass from the layer's input and output shapes:

| layer                                | MACs                                             |
|--------------------------------------|--------------------------------------------------|
| Conv1D/2D/3D (strides, dilation)     | out positions x filters x kernel x in / groups   |
| Conv1D/2D/3DTranspose                | in positions x in channels x kernel x filters    |
| DepthwiseConv1D/2D                   | out positions x in x multiplier x kernel         |
| SeparableConv1D/2D                   | out positions x in x multiplier x (kernel + filters) |
| Dense (inputs of any rank)           | prod(input shape[:-1]) x in features x units     |
| EinsumDense                          | product of the sizes of all equation indices     |
| everything else                      | 0                                                |

Positions include the batch. Conventions, chosen to match the published figures (e.g.
ResNet-18 on CIFAR 0.56 GMACs, MobileNetV2-1.0 at 224x224 0.30 GMACs): only the products of
weights and activations count, so bias additions, activations, pooling, `Add`/`Concatenate`
and reshapes are 0 MACs; BatchNormalization is 0 MACs because inference runtimes (TFLite's
converter included) fold it into the convolution or dense layer before it. A transposed
convolution counts every input pixel times the whole kernel, cropped borders included.
Layers that hold weights or multiply activations but have no rule here (RNNs,
MultiHeadAttention, `Dot`, custom layers) count 0 and are listed in `MacsReport.uncounted`,
never silently skipped.

A layer called n times in one model (a shared layer, a nested model used twice) counts n times
its first call. Shapes must be fully known apart from the batch: build the model on a fixed
input shape.

Example:

>>> import keras
>>> model = keras.Sequential(
...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
...      keras.layers.Flatten(name="flatten"), keras.layers.Dense(10, name="fc")]
... )
>>> report = count_macs(model)
>>> [(row.name, row.macs) for row in report.rows]
[('conv', 3888), ('flatten', 0), ('fc', 1440)]
>>> report.macs, report.params == model.count_params()
(5328, True)
"""

from __future__ import annotations

import dataclasses
import math
import string

import keras

from kprune._internal.validate import check_integer
from kprune._internal.walk import check_model, is_graph_model

__all__ = ["MacsRow", "MacsReport", "count_macs"]

_L = keras.layers
_CONV_TRANSPOSE = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_CONV = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
# Layers that multiply activations by weights or by each other without a rule here: 0 MACs,
# listed in `uncounted` even when they hold no weights.
_UNRULED = (_L.Dot, _L.Attention, _L.AdditiveAttention, _L.MultiHeadAttention, _L.RNN)
# Hold weights but do no weight x activation products at inference (BatchNorm folds into the
# layer before it; normalizations are elementwise; an embedding is a lookup).
_NO_PRODUCTS = (
    _L.BatchNormalization,
    _L.LayerNormalization,
    _L.GroupNormalization,
    _L.UnitNormalization,
    _L.Embedding,
    _L.Normalization,
    _L.PReLU,
)


@dataclasses.dataclass(frozen=True)
class MacsRow:
    """One layer of a `MacsReport`.

    Attributes:
        name: the layer's path, containers first (`"block/conv"`).
        type: the class name of the layer (of the wrapped layer for a `PruningWrapper`).
        output_shape: the output shape of its first call, the batch dimension set to the
            report's batch (a tuple of tuples for layers with several outputs).
        params: number of scalars in the layer's weights (masks of a `PruningWrapper` not
            included).
        macs: multiply-accumulates of all its calls for the report's batch.
        calls: how many times the model calls the layer.
    """

    name: str
    type: str
    output_shape: tuple
    params: int
    macs: int
    calls: int = 1


@dataclasses.dataclass(frozen=True)
class MacsReport:
    """Per-layer rows and totals of `count_macs`.

    Attributes:
        rows: one `MacsRow` per layer, in the model's order, nested layers after their
            container's name.
        batch: the batch size the MACs are computed for.
        uncounted: names of layers that may do products kprune has no rule for (counted 0).
    """

    rows: tuple
    batch: int
    uncounted: tuple = ()

    @property
    def macs(self) -> int:
        """Total multiply-accumulates of one forward pass of `batch` examples."""
        return sum(row.macs for row in self.rows)

    @property
    def params(self) -> int:
        """Total number of weight scalars (every weight, trainable or not, masks excluded)."""
        return sum(row.params for row in self.rows)

    def to_dict(self) -> dict:
        """Plain-Python form for JSON: totals, batch, uncounted layers and the rows.

        Example:

        >>> sorted(MacsReport(rows=(), batch=1).to_dict())
        ['batch', 'layers', 'macs', 'params', 'uncounted']
        """
        return {
            "batch": self.batch,
            "macs": self.macs,
            "params": self.params,
            "uncounted": list(self.uncounted),
            "layers": [
                {**dataclasses.asdict(row), "output_shape": _listify(row.output_shape)}
                for row in self.rows
            ],
        }

    def format(self, *, all_layers=False) -> str:
        """A text table: layers with parameters or MACs (every layer with `all_layers`), totals.

        Example:

        >>> row = MacsRow("fc", "Dense", (1, 2), 8, 6)
        >>> print(MacsReport(rows=(row,), batch=1).format())
        layer  type   output shape  params  MACs
        fc     Dense  (1, 2)             8     6
        total                            8     6
        """
        shown = [r for r in self.rows if all_layers or r.params or r.macs]
        table = [("layer", "type", "output shape", "params", "MACs")]
        for r in shown:
            name = r.name if r.calls == 1 else f"{r.name} (x{r.calls})"
            table.append((name, r.type, str(r.output_shape), f"{r.params:,}", f"{r.macs:,}"))
        table.append(("total", "", "", f"{self.params:,}", f"{self.macs:,}"))
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        lines = [
            "  ".join(
                cell.rjust(w) if i >= 3 else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths))
            ).rstrip()
            for line in table
        ]
        if self.uncounted:
            lines.append(f"not counted (no MACs rule): {', '.join(self.uncounted)}")
        return "\n".join(lines)


def _listify(shape):
    return [_listify(s) for s in shape] if isinstance(shape, tuple) else shape


def _shapes(tensors):
    """Shapes of a layer's input or output: a tuple of dims, or a tuple of such tuples."""
    if isinstance(tensors, (list, tuple)):
        return tuple(tuple(t.shape) for t in tensors)
    if isinstance(tensors, dict):
        return tuple(tuple(t.shape) for t in tensors.values())
    return (tuple(tensors.shape),)


def _with_batch(shapes, batch):
    return tuple(
        tuple(batch if i == 0 and d is None else d for i, d in enumerate(s)) for s in shapes
    )


def _known(shape, layer_name):
    """`shape` if every dimension is known; else the ValueError that says how to fix it."""
    if any(d is None for d in shape):
        raise ValueError(
            f"count_macs() needs fully known shapes, but layer '{layer_name}' has a shape with "
            f"unknown dimensions beyond the batch: {shape}. Build the model on a fixed input "
            "shape, e.g. keras.Input(shape=(32, 32, 3))."
        )
    return shape


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def _split(shape, layer):
    """(positions incl. batch, channels) of an image-like shape under the layer's data format."""
    if _channels_last(layer):
        return math.prod(shape[:-1]), shape[-1]
    return shape[0] * math.prod(shape[2:]), shape[1]


def _einsum_macs(layer, shape):
    """Product of the sizes of every index of the equation (the ellipsis: its input dims)."""
    inputs, _ = layer.equation.split("->")
    x_sub, k_sub = (s.strip() for s in inputs.split(","))
    sizes = dict(zip(k_sub, tuple(layer.kernel.shape)))
    ellipsis = 1
    if "..." in x_sub:
        head, tail = x_sub.split("...")
        middle = shape[len(head) : len(shape) - len(tail)]
        ellipsis = math.prod(middle)
        sizes.update(zip(head, shape[: len(head)]))
        sizes.update(zip(tail, shape[len(shape) - len(tail) :]))
    else:
        sizes.update(zip(x_sub, shape))
    return ellipsis * math.prod(sizes[c] for c in sizes if c in string.ascii_letters)


def _layer_macs(layer, in_shapes, out_shapes, name):
    """(MACs, ruled) of one call of a plain layer with these (batch-filled) shapes."""
    products = (_CONV_TRANSPOSE, _SEPARABLE, _DEPTHWISE, _CONV, _L.Dense, _L.EinsumDense)
    if not isinstance(layer, products):
        ruled = not isinstance(layer, _UNRULED) and (
            isinstance(layer, _NO_PRODUCTS) or not layer.weights
        )
        return 0, ruled
    x = _known(in_shapes[0], name)
    if isinstance(layer, _L.Dense):
        return math.prod(x[:-1]) * x[-1] * layer.units, True
    if isinstance(layer, _L.EinsumDense):
        return _einsum_macs(layer, x), True
    kernel = math.prod(layer.kernel_size)
    _, channels = _split(x, layer)
    if isinstance(layer, _CONV_TRANSPOSE):
        positions, _ = _split(x, layer)
        return positions * channels * kernel * layer.filters, True
    positions, out_channels = _split(_known(out_shapes[0], name), layer)
    if isinstance(layer, _SEPARABLE):
        return positions * channels * layer.depth_multiplier * (kernel + layer.filters), True
    if isinstance(layer, _DEPTHWISE):
        return positions * out_channels * kernel, True
    return positions * out_channels * kernel * (channels // layer.groups), True


def _calls(model):
    """Times each layer (by name) is called in `model`'s own graph, from its public config."""
    if isinstance(model, keras.Sequential):
        return {}
    try:
        layers = model.get_config()["layers"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return {}  # a layer without a config: assume one call each
    return {
        entry["config"]["name"]: max(1, len(entry.get("inbound_nodes", ()))) for entry in layers
    }


def _walk(model, batch, prefix, repeat, rows, uncounted):
    calls = _calls(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        n = repeat * calls.get(layer.name, 1)
        name = "/".join((*prefix, layer.name))
        if isinstance(layer, keras.Model):
            if not is_graph_model(layer):
                raise TypeError(
                    f"count_macs() reads shapes from Sequential and functional graphs, but the "
                    f"nested model '{name}' is subclassed ({type(layer).__name__}). Count its "
                    "MACs on a functional version of it."
                )
            _walk(layer, batch, (*prefix, layer.name), n, rows, uncounted)
            continue
        try:
            in_shapes = _with_batch(_shapes(layer.input), batch)
            out_shapes = _with_batch(_shapes(layer.output), batch)
        except (AttributeError, ValueError) as err:
            raise ValueError(
                f"count_macs() reads shapes from the model's graph, but layer '{name}' has no "
                f"recorded call ({err}). Build the model on a keras.Input first."
            ) from err
        inner = layer.layer if getattr(layer, "is_pruning_wrapper", False) else layer
        if isinstance(inner, _L.TimeDistributed):
            inner = inner.layer
            in_shapes = tuple((s[0] * s[1], *s[2:]) for s in in_shapes)
            out_shapes = tuple((s[0] * s[1], *s[2:]) for s in out_shapes)
        macs, ruled = _layer_macs(inner, in_shapes, out_shapes, name)
        if not ruled:
            uncounted.append(name)
        out = out_shapes[0] if len(out_shapes) == 1 else out_shapes
        params = sum(math.prod(w.shape) for w in inner.weights)
        rows.append(MacsRow(name, type(inner).__name__, out, int(params), int(n * macs), n))


def count_macs(model, batch=1) -> MacsReport:
    """Multiply-accumulates and parameters of `model`, per layer, for a batch of `batch`.

    Args:
        model: a built Sequential or functional `keras.Model` (nested models and
            `PruningWrapper`s are looked into), with every shape known but the batch.
        batch: the batch size to count for (the MACs scale linearly with it).

    Returns:
        A `MacsReport`: `.rows`, `.macs`, `.params`, `.uncounted`, `.format()`, `.to_dict()`.

    Raises:
        TypeError: not a Keras 3 model, or a subclassed model.
        ValueError: `batch` below 1, an unbuilt model, or shapes with unknown dimensions.

    Example:

    >>> import keras
    >>> inputs = keras.Input((7, 5))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    >>> count_macs(model, batch=4).macs  # 4 x 7 positions x 5 inputs x 3 units
    420
    """
    check_model(model, "count_macs")
    batch = check_integer("batch", batch, 1)
    if not is_graph_model(model):
        raise TypeError(
            f"count_macs() reads shapes from Sequential and functional graphs, but "
            f"'{model.name}' is a subclassed model ({type(model).__name__}). Count the MACs "
            "of a functional version of it."
        )
    rows, uncounted = [], []
    _walk(model, batch, (), 1, rows, uncounted)
    return MacsReport(rows=tuple(rows), batch=batch, uncounted=tuple(uncounted))
