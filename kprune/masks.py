"""The masks of a pruned model: find, read, write and apply them; bind them to an optimizer.

Paths name every pruned variable the same way before and after saving: the enclosing nested
models (or custom layers), the layer and the variable, joined by "/" (`"encoder/conv1/kernel"`).
The mask maths (scores to masks) lives in `kprune.masking`.

Example:

>>> import keras
>>> from kprune import ConstantSparsity, prune
>>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")]),
...               ConstantSparsity(0.5))
>>> {path: mask.shape for path, mask in get_masks(model).items()}
{'fc/kernel': (3, 2)}
"""

from __future__ import annotations

import keras
import numpy as np

from kprune._internal.walk import check_model, walk, weight_key
from kprune.pruning_group import NMPruningGroup, PruningGroup
from kprune.structured.engine import ChannelPruningGroup
from kprune.structured.graph import trace_channels
from kprune.targets import is_container
from kprune.wrapper import PruningWrapper

__all__ = [
    "apply_masks",
    "bind_optimizer",
    "get_masks",
    "pruned_variables",
    "pruning_wrappers",
    "set_masks",
    "walk_model",
]


def _opaque(layer):
    # A wrapper, or a layer that owns prunable layers and is wrapped as a whole.
    return isinstance(layer, PruningWrapper) or is_container(layer)


def walk_model(model, prefix=(), seen=None):
    """`(layer, names of its containers)` below `model`, each once.

    Neither wrappers nor the layers `prune()` wraps as a whole (`kprune.targets.is_container`:
    MultiHeadAttention, an RNN, ...) are entered.

    Example:

    >>> model = keras.Sequential([keras.layers.Dense(2, name="fc")])
    >>> [layer.name for layer, _ in walk_model(model)]
    ['fc']
    """
    return walk(model, _opaque, prefix, seen)


def pruned_variables(model):
    """`(path, weight variable, mask variable)` for every pruned variable, in layer order.

    Paths are those of `get_masks`, e.g. `"encoder/conv1/kernel"`.

    Example:

    >>> from kprune import prune
    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")]),
    ...               None)
    >>> [path for path, _, _ in pruned_variables(model)]
    ['fc/kernel']
    """
    for layer, prefix in walk_model(model):
        if isinstance(layer, PruningWrapper):
            for w, m in zip(layer.pruned_weights, layer.masks):
                yield weight_key(prefix, layer, w), w, m


def pruning_wrappers(model):
    """The `PruningWrapper`s of `model` (nested models included), in layer order.

    Example:

    >>> from kprune import ConstantSparsity, prune
    >>> len(pruning_wrappers(prune(
    ...     keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), ConstantSparsity(0.5))))
    1
    """
    return [layer for layer, _ in walk_model(model) if isinstance(layer, PruningWrapper)]


def optimizer_slots(optimizer, variable):
    """Optimizer variables created for `variable` (momentum, moments, accumulators, EMA).

    Example:

    >>> kernel = keras.Variable(np.ones((3, 2)), name="kernel")
    >>> optimizer = keras.optimizers.SGD(momentum=0.9)
    >>> optimizer.build([kernel])
    >>> [tuple(v.shape) for v in optimizer_slots(optimizer, kernel)]
    [(3, 2)]
    """
    prefix = variable.path.replace("/", "_") + "_"
    return [
        v
        for v in optimizer.variables
        if v.name.startswith(prefix) and tuple(v.shape) == tuple(variable.shape)
    ]


def bind_optimizer(model, optimizer):
    """Connects the pruning wrappers of `model` to `optimizer` so their schedules can advance.

    The step of every schedule is read from `optimizer.iterations` inside the train step.
    Wrappers sharing a schedule, scope, criterion and granularity form one `PruningGroup`
    (an `NMPruningGroup` at N:M granularity), updated together; all `scope="global"` wrappers
    must share one schedule, one criterion and one granularity. `PruningCallback`
    calls this at the start of `fit`; call it yourself once before a custom training loop.

    Args:
        model: a model containing `PruningWrapper`s (any kind of model, subclassed included).
        optimizer: the `keras.optimizers.Optimizer` that will train it. It is built on
            `model.trainable_variables` if it is not built yet.

    Returns:
        The list of `PruningGroup`s (empty if no wrapper has a schedule).

    Example:

    >>> from kprune import ConstantSparsity, prune
    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...               ConstantSparsity(0.5))
    >>> len(bind_optimizer(model, keras.optimizers.SGD()))
    1
    """
    check_model(model, "bind_optimizer")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "`optimizer` must be a keras.optimizers.Optimizer; compile the model first or pass "
            f"the optimizer of your training loop. Received: optimizer={optimizer!r}"
        )
    wrappers = pruning_wrappers(model)
    if not wrappers:
        raise ValueError(
            f"Model '{model.name}' has no PruningWrapper layers. Prune it first with "
            "kprune.prune(model, schedule) or wrap its layers with kprune.PruningWrapper."
        )
    unbuilt = [w.name for w in wrappers if not w.built]
    if unbuilt:
        raise ValueError(
            f"PruningWrapper layers {unbuilt} are not built yet; call the model on a batch "
            "(or build it) before binding an optimizer."
        )
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    scheduled = [w for w in wrappers if w.schedule is not None]
    global_schedules = {w.schedule for w in scheduled if w.scope == "global"}
    if len(global_schedules) > 1:
        raise ValueError(
            "All PruningWrapper layers with scope='global' in one model must share one "
            f"schedule (one threshold needs one target); found {len(global_schedules)}: "
            f"{sorted(map(repr, global_schedules))}"
        )
    global_granularities = {str(w.granularity) for w in scheduled if w.scope == "global"}
    if len(global_granularities) > 1:
        raise ValueError(
            "All PruningWrapper layers with scope='global' in one model must share one "
            f"granularity (one selection over all of them); found {sorted(global_granularities)}"
        )
    global_criteria = {w.criterion for w in scheduled if w.scope == "global"}
    if len(global_criteria) > 1:
        raise ValueError(
            "All PruningWrapper layers with scope='global' in one model must share one "
            f"criterion (one selection over all of them); found {len(global_criteria)}: "
            f"{sorted(map(repr, global_criteria))}"
        )
    groups, by_key = [], {}
    channel = [w for w in scheduled if w.channel_weights is not None]
    if channel:
        groups.append(_bind_channel_group(model, optimizer, channel))
    for wrapper in scheduled:
        if wrapper.channel_weights is not None:
            continue
        key = (wrapper.scope, wrapper.schedule, wrapper.criterion, wrapper.granularity)
        by_key.setdefault(key, []).append(wrapper)
    for (scope, schedule, _, granularity), members in by_key.items():
        slots = [
            [optimizer_slots(optimizer, w) for w in member.pruned_weights] for member in members
        ]
        kind = NMPruningGroup if granularity.is_nm else PruningGroup
        group = kind(members, schedule, scope, optimizer.iterations, slots)
        for member in members:
            member._group = group
        groups.append(group)
    return groups


def _bind_channel_group(model, optimizer, wrappers):
    """One `ChannelPruningGroup` for all channel-granularity wrappers, from a trace of `model`."""
    kinds = {(w.schedule, w.scope, w.criterion) for w in wrappers}
    if len(kinds) > 1:
        raise ValueError(
            "All channel-granularity PruningWrappers of a model are pruned together and must "
            f"share one schedule, scope and criterion; found {len(kinds)} combinations."
        )
    trace = trace_channels(model)
    traced = {id(layer) for layer in trace.traced_layers()}
    missing = [w.name for w in wrappers if id(w.layer) not in traced]
    if missing:
        raise ValueError(
            f"Channel-granularity wrappers {missing} are not on a channel path of model "
            f"'{model.name}' (the model was changed after kprune.prune?). Prune the model again."
        )
    slots = [[optimizer_slots(optimizer, v) for v in w.pruned_weights] for w in wrappers]
    first = wrappers[0]
    group = ChannelPruningGroup(
        wrappers, first.schedule, first.scope, optimizer.iterations, slots, trace
    )
    for w in wrappers:
        w._group = group
    return group


def apply_masks(model):
    """Multiplies every pruned weight of `model` by its mask, in place.

    Useful after loading weights from elsewhere into a pruned model, or after anything that
    may have written non-zero values (e.g. an EMA swap).

    Example:

    >>> from kprune import ConstantSparsity, prune
    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...               ConstantSparsity(0.5))
    >>> apply_masks(model)
    """
    for wrapper in pruning_wrappers(model):
        wrapper.apply_masks()


def get_masks(model):
    """Masks of a pruned model as numpy arrays, keyed by the path of the pruned variable.

    The path is the names of the enclosing nested models (or custom layers), the layer and the
    variable, joined by "/": `"fc/kernel"`, `"encoder/conv1/kernel"`. It is the same before and
    after saving and reloading the model.

    Args:
        model: a model containing `PruningWrapper`s.

    Returns:
        `dict[str, np.ndarray]`, in layer order.

    Example:

    >>> from kprune import ConstantSparsity, prune
    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")]),
    ...               ConstantSparsity(0.5))
    >>> list(get_masks(model))
    ['fc/kernel']
    """
    check_model(model, "get_masks")
    wrappers = pruning_wrappers(model)
    if not wrappers:
        raise ValueError(
            f"Model '{model.name}' has no PruningWrapper layers, so it has no masks. For a "
            "stripped model, the pruned weights are the zeros of its kernels."
        )
    return {path: np.asarray(m.numpy()) for path, _, m in pruned_variables(model)}


def set_masks(model, masks):
    """Assigns masks to a pruned model and zeroes the weights they remove.

    Args:
        model: a model containing `PruningWrapper`s.
        masks: `dict` from the paths of `get_masks(model)` to arrays of 0s and 1s (or bools)
            of the variable's shape. Paths not given keep their current mask.

    Raises:
        ValueError: unknown paths, wrong shapes, or values other than 0 and 1.

    Example:

    >>> from kprune import prune
    >>> model = prune(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="fc")]),
    ...               None)
    >>> set_masks(model, {"fc/kernel": np.array([[1.0], [0.0]])})
    >>> bool(model.get_layer("fc").layer.kernel.numpy()[1, 0] == 0)
    True
    """
    check_model(model, "set_masks")
    targets = {path: (w, m) for path, w, m in pruned_variables(model)}
    if not targets:
        raise ValueError(f"Model '{model.name}' has no PruningWrapper layers to set masks on.")
    unknown = sorted(set(masks) - set(targets))
    if unknown:
        raise ValueError(
            f"Unknown mask paths {unknown[:5]}; this model's paths are {list(targets)[:10]}"
        )
    checked = {}
    for path, value in masks.items():
        w, _ = targets[path]
        value = np.asarray(value)
        if tuple(value.shape) != tuple(w.shape):
            raise ValueError(
                f"Mask for '{path}' has shape {tuple(value.shape)}; the variable has shape "
                f"{tuple(w.shape)}."
            )
        if not np.isin(value, (0, 1)).all():
            raise ValueError(f"Mask for '{path}' must contain only 0 and 1 (or booleans).")
        checked[path] = value
    for path, value in checked.items():
        w, m = targets[path]
        m.assign(value.astype(m.dtype))
        w.assign(np.asarray(w.numpy()) * value.astype(w.dtype))
