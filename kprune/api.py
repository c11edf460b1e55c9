"""Public API: prune a model, bind it to an optimizer, read its masks, strip the wrappers.

Example:

>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
>>> pruned = prune(model, LinearSparsity(0.0, 0.5, begin_step=0, end_step=10))
>>> [type(layer).__name__ for layer in pruned.layers]
['PruningWrapper', 'PruningWrapper']
>>> [type(layer).__name__ for layer in strip(pruned).layers]
['Dense', 'Dense']
"""

from __future__ import annotations

import keras
import numpy as np
from keras.src.models.functional import Functional

from kprune.criteria import get_criterion
from kprune.masking import SCOPES
from kprune.schedules import PruningSchedule
from kprune.targets import check_supported, is_prunable, prunable_weights
from kprune.wrapper import PruningGroup, PruningWrapper

__all__ = [
    "prune",
    "strip",
    "bind_optimizer",
    "apply_masks",
    "get_masks",
    "set_masks",
    "sparsity_report",
    "format_sparsity_report",
    "pruned_variables",
    "pruning_wrappers",
]


# -- walking models -------------------------------------------------------------------------
def _walk(layer, prefix=(), seen=None):
    """Yields `(sublayer, names of its containers)` below `layer`, each layer once.

    Nested models and custom layers are entered; a PruningWrapper is yielded but not entered,
    so its inner layer is not listed twice.
    """
    seen = set() if seen is None else seen
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if id(child) in seen or isinstance(child, keras.layers.InputLayer):
            continue
        seen.add(id(child))
        yield child, prefix
        if not isinstance(child, PruningWrapper):
            yield from _walk(child, prefix + (child.name,), seen)


def _all_layers(model):
    """Every layer below `model` (nested models and custom layers included), each once."""
    return [layer for layer, _ in _walk(model)]


def _weight_key(prefix, layer, variable):
    """Stable name of a pruned variable: containers / layer / variable, e.g. `block/fc/kernel`.

    Keras variable paths depend on the name scopes active when a layer was built, which differ
    between `prune()` and `keras.models.load_model()`; this key does not.
    """
    return "/".join((*prefix, layer.name, variable.name))


def pruned_variables(model):
    """`(path, weight variable, mask variable)` for every pruned variable, in layer order.

    Paths are those of `get_masks`, e.g. `"encoder/conv1/kernel"`.

    Example:

    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")]),
    ...               None)
    >>> [path for path, _, _ in pruned_variables(model)]
    ['fc/kernel']
    """
    for layer, prefix in _walk(model):
        if isinstance(layer, PruningWrapper):
            for w, m in zip(layer.pruned_weights, layer.masks):
                yield _weight_key(prefix, layer, w), w, m


def pruning_wrappers(model):
    """The `PruningWrapper`s of `model` (nested models included), in layer order.

    Example:

    >>> len(pruning_wrappers(prune(
    ...     keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), ConstantSparsity(0.5))))
    1
    """
    return [layer for layer in _all_layers(model) if isinstance(layer, PruningWrapper)]


def _check_model(model, what):
    if isinstance(model, keras.Model):
        return
    module = type(model).__module__
    if module.startswith(("tf_keras", "keras.engine", "keras.src.engine", "tensorflow.python")):
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


def _is_graph_model(model):
    return isinstance(model, (keras.Sequential, Functional))


def _subclassed_error(model, what):
    return TypeError(
        f"{what}() clones Sequential and functional models, but '{model.name}' is a subclassed "
        f"model ({type(model).__name__}), whose structure lives in Python code that cannot be "
        "cloned. Wrap the prunable layers where you create them instead, e.g. "
        "`self.fc = kprune.PruningWrapper(keras.layers.Dense(128), schedule)` in __init__, and "
        "train with kprune.PruningCallback() as usual."
    )


def _fresh_copy(layer):
    """A new, unbuilt layer with the same config (weights are copied after cloning)."""
    if isinstance(layer, keras.Model) and not _is_graph_model(layer):
        raise _subclassed_error(layer, "prune")
    return layer.__class__.from_config(layer.get_config())


def _clone(model, make_layer, compiled=True):
    """`keras.models.clone_model` with `make_layer(layer)`, then weights copied over.

    `make_layer` returns `(new_layer, copy_weights)` where `copy_weights()` runs once the
    clone is built. With `compiled=False` the copy is not compiled even if `model` is
    (`clone_model` copies the compile config of a compiled model).
    """
    copies = []

    def clone_function(layer):
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


# -- prune ----------------------------------------------------------------------------------
def _layers_to_wrap(model, exclude, what):
    """The layers `prune()` wraps, as `(layer, names of its containers)` in layer order.

    Checks the model (Keras 3, Sequential/functional, built, not pruned yet) and `exclude`.
    """
    _check_model(model, what)
    if not _is_graph_model(model):
        raise _subclassed_error(model, what)
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Start it with keras.Input(shape) or call it on "
            "a batch before pruning, so that its weights exist."
        )
    walked = list(_walk(model))
    layers = [layer for layer, _ in walked]
    if any(isinstance(layer, PruningWrapper) for layer in layers):
        raise ValueError(
            f"Model '{model.name}' already contains PruningWrapper layers. Prune the original "
            "model, or call kprune.strip() first to start again from the current weights."
        )
    if isinstance(exclude, str):
        exclude = [exclude]
    exclude = set(exclude or ())
    names = {layer.name for layer in layers}
    unknown = sorted(exclude - names)
    if unknown:
        candidates = sorted(layer.name for layer in layers if is_prunable(layer))
        raise ValueError(
            f"`exclude` names layers that are not in model '{model.name}': {unknown}. "
            f"Prunable layers are: {candidates}"
        )
    to_wrap = [
        (layer, prefix)
        for layer, prefix in walked
        if is_prunable(layer) and not isinstance(layer, keras.Model) and layer.name not in exclude
    ]
    if not to_wrap:
        raise ValueError(
            f"Model '{model.name}' has no prunable layer"
            + (f" outside `exclude`={sorted(exclude)}" if exclude else "")
            + ". kprune prunes Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv* and "
            "Embedding kernels, and layers that define get_prunable_weights()."
        )
    for layer, _ in to_wrap:
        check_supported(layer)
    return to_wrap


def prune(model, schedule, *, scope="layer", exclude=None, criterion="magnitude"):
    """Returns a copy of `model` whose prunable layers are wrapped in `PruningWrapper`.

    The copy has the same architecture and weights (nested models are cloned too); it is not
    compiled. Train it with `kprune.PruningCallback()` in `fit`, then call `kprune.strip()`.

    Args:
        model: a built Sequential or functional `keras.Model` (e.g. any `keras.applications`
            model). Subclassed models: wrap layers with `kprune.PruningWrapper` where they are
            created.
        schedule: a `kprune.PruningSchedule`, e.g. `LinearSparsity(0.0, 0.9, 0, 10_000)`, or
            None for masks that training never changes (set them with `kprune.set_masks`).
        scope: `"layer"` (each weight tensor reaches the target sparsity) or `"global"` (one
            magnitude threshold over all pruned tensors).
        exclude: names of layers to leave dense (a string or an iterable of strings).
        criterion: which weights the schedule's updates remove: `"magnitude"` (smallest |w|,
            the default), `"fggp"` (gradient-first, magnitude-next), or a
            `kprune.criteria.Criterion` such as `kprune.FGGP(candidate_rate=0.5)`.

    Returns:
        A new `keras.Model`.

    Raises:
        TypeError: `model` is not a Keras 3 model, is subclassed, or `schedule` is not a
            schedule.
        ValueError: bad `scope` or `criterion`, unknown names in `exclude`, no prunable layer,
            a layer with LoRA or quantization, or a model that is already pruned.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="hidden"),
    ...                           keras.layers.Dense(2, name="logits")])
    >>> pruned = prune(model, ConstantSparsity(0.5), exclude=["logits"])
    >>> [type(layer).__name__ for layer in pruned.layers]
    ['PruningWrapper', 'Dense']
    """
    _check_model(model, "prune")
    if schedule is not None and not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "`schedule` must be a kprune.PruningSchedule, e.g. kprune.LinearSparsity(0.0, 0.9, "
            f"begin_step=0, end_step=1000), or None for fixed masks. Received: "
            f"schedule={schedule!r}"
        )
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}. Received: scope={scope!r}")
    criterion = get_criterion(criterion)
    wrap_ids = {id(layer) for layer, _ in _layers_to_wrap(model, exclude, "prune")}

    def make_layer(layer):
        new_layer = _fresh_copy(layer)
        if id(layer) in wrap_ids:
            wrapper = PruningWrapper(new_layer, schedule=schedule, scope=scope, criterion=criterion)
            return wrapper, lambda: new_layer.set_weights(layer.get_weights())
        return new_layer, lambda: new_layer.set_weights(layer.get_weights())

    return _clone(model, make_layer, compiled=False)


# -- strip ----------------------------------------------------------------------------------
def _masked_weights(wrapper):
    """The inner layer's weights as numpy arrays, pruned ones multiplied by their masks."""
    masks = {id(w): m for w, m in zip(wrapper.pruned_weights, wrapper.masks)}
    values = []
    for v in wrapper.layer.weights:
        value = np.array(v.numpy())
        if id(v) in masks:
            value = np.where(np.asarray(masks[id(v)].numpy()) != 0, value, 0).astype(value.dtype)
        values.append(value)
    return values


def strip(model):
    """Returns a plain Keras copy of a pruned model: wrappers removed, zeros baked in.

    The result has no kprune layers, the same predictions, exactly the zeros of the masks, and
    is not compiled (the training set-up, e.g. a kprune learning-rate schedule, stays with the
    pruned model), so its `.keras` file loads anywhere without kprune. Compile it to evaluate.

    Args:
        model: a Sequential or functional model, pruned or not.

    Returns:
        A new `keras.Model`.

    Example:

    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...               ConstantSparsity(0.5))
    >>> type(strip(model).layers[0]).__name__
    'Dense'
    """
    _check_model(model, "strip")
    if not _is_graph_model(model):
        raise TypeError(
            f"strip() clones Sequential and functional models; '{model.name}' is subclassed "
            f"({type(model).__name__}). Its pruned weights are already exactly zero, so you can "
            "save it as is, or copy `wrapper.layer` weights into a wrapper-free instance of "
            "your model class."
        )

    def make_layer(layer):
        if isinstance(layer, PruningWrapper):
            inner = _fresh_copy(layer.layer)
            return inner, lambda: inner.set_weights(_masked_weights(layer))
        new_layer = _fresh_copy(layer)
        return new_layer, lambda: new_layer.set_weights(layer.get_weights())

    return _clone(model, make_layer, compiled=False)


# -- training glue --------------------------------------------------------------------------
def _optimizer_slots(optimizer, variable):
    """Optimizer variables created for `variable` (momentum, moments, accumulators, EMA)."""
    prefix = variable.path.replace("/", "_") + "_"
    return [
        v
        for v in optimizer.variables
        if v.name.startswith(prefix) and tuple(v.shape) == tuple(variable.shape)
    ]


def bind_optimizer(model, optimizer):
    """Connects the pruning wrappers of `model` to `optimizer` so their schedules can advance.

    The step of every schedule is read from `optimizer.iterations` inside the train step.
    Wrappers sharing a schedule, scope and criterion form one `PruningGroup`, updated together;
    all `scope="global"` wrappers must share one schedule and one criterion. `PruningCallback`
    calls this at the start of `fit`; call it yourself once before a custom training loop.

    Args:
        model: a model containing `PruningWrapper`s (any kind of model, subclassed included).
        optimizer: the `keras.optimizers.Optimizer` that will train it. It is built on
            `model.trainable_variables` if it is not built yet.

    Returns:
        The list of `PruningGroup`s (empty if no wrapper has a schedule).

    Example:

    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...               ConstantSparsity(0.5))
    >>> len(bind_optimizer(model, keras.optimizers.SGD()))
    1
    """
    _check_model(model, "bind_optimizer")
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
    global_criteria = {w.criterion for w in scheduled if w.scope == "global"}
    if len(global_criteria) > 1:
        raise ValueError(
            "All PruningWrapper layers with scope='global' in one model must share one "
            f"criterion (one selection over all of them); found {len(global_criteria)}: "
            f"{sorted(map(repr, global_criteria))}"
        )
    groups, by_key = [], {}
    for wrapper in scheduled:
        key = (wrapper.scope, wrapper.schedule, wrapper.criterion)
        by_key.setdefault(key, []).append(wrapper)
    for (scope, schedule, _), members in by_key.items():
        slots = [
            [_optimizer_slots(optimizer, w) for w in member.pruned_weights] for member in members
        ]
        group = PruningGroup(members, schedule, scope, optimizer.iterations, slots)
        for member in members:
            member._group = group
        groups.append(group)
    return groups


def apply_masks(model):
    """Multiplies every pruned weight of `model` by its mask, in place.

    Useful after loading weights from elsewhere into a pruned model, or after anything that
    may have written non-zero values (e.g. an EMA swap).

    Example:

    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...               ConstantSparsity(0.5))
    >>> apply_masks(model)
    """
    for wrapper in pruning_wrappers(model):
        wrapper.apply_masks()


# -- reading masks --------------------------------------------------------------------------
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

    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")]),
    ...               ConstantSparsity(0.5))
    >>> list(get_masks(model))
    ['fc/kernel']
    """
    _check_model(model, "get_masks")
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

    >>> model = prune(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="fc")]),
    ...               None)
    >>> set_masks(model, {"fc/kernel": np.array([[1.0], [0.0]])})
    >>> model.get_layer("fc").layer.kernel.numpy()[1, 0]
    0.0
    """
    _check_model(model, "set_masks")
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


def _totals(rows):
    total = int(sum(r["total"] for r in rows))
    nonzero = int(sum(r["nonzero"] for r in rows))
    return {
        "total": total,
        "nonzero": nonzero,
        "sparsity": (1.0 - nonzero / total) if total else 0.0,
    }


def sparsity_report(model):
    """Counts of zero and non-zero weights, per prunable variable and in total.

    Works on pruned models (effective weights `w * mask`) and on stripped or plain models
    alike, so a report before and after `strip()` is the same.

    Returns:
        A dict with
        * `"layers"`: one row per prunable variable: `layer`, `weight` (path as in
          `get_masks`),
          `shape`, `total`, `nonzero`, `sparsity`, `wrapped` (pruned by kprune?);
        * `"pruned"`: totals over wrapped variables (None if the model has no wrapper);
        * `"prunable"`: totals over all prunable variables, wrapped or not;
        * `"all_params"`: totals over every model weight (masks excluded).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False)])
    >>> model.layers[0].kernel.assign(np.zeros((4, 2)))
    >>> sparsity_report(model)["prunable"]
    {'total': 8, 'nonzero': 0, 'sparsity': 1.0}
    """
    _check_model(model, "sparsity_report")
    rows, effective = [], {}
    for layer, prefix in _walk(model):
        if isinstance(layer, PruningWrapper):
            pairs = [
                (w, np.where(np.asarray(m.numpy()) != 0, np.asarray(w.numpy()), 0), True)
                for w, m in zip(layer.pruned_weights, layer.masks)
            ]
        elif is_prunable(layer) and not isinstance(layer, keras.Model) and layer.built:
            pairs = [(w, np.asarray(w.numpy()), False) for w in prunable_weights(layer)]
        else:
            continue
        for w, value, wrapped in pairs:
            effective[id(w)] = value
            nonzero = int(np.count_nonzero(value))
            rows.append(
                {
                    "layer": "/".join((*prefix, layer.name)),
                    "weight": _weight_key(prefix, layer, w),
                    "shape": [int(d) for d in w.shape],
                    "total": int(value.size),
                    "nonzero": nonzero,
                    "sparsity": 1.0 - nonzero / value.size if value.size else 0.0,
                    "wrapped": wrapped,
                }
            )
    # Masks and gradient records are bookkeeping of the wrappers, not model parameters.
    mask_ids = {
        id(v)
        for wrapper in pruning_wrappers(model)
        for v in (*wrapper.masks, *wrapper.gradient_records)
    }
    all_rows = []
    for w in model.weights:
        if id(w) in mask_ids:
            continue
        value = effective.get(id(w))
        if value is None:
            value = np.asarray(w.numpy())
        all_rows.append({"total": value.size, "nonzero": np.count_nonzero(value)})
    wrapped_rows = [r for r in rows if r["wrapped"]]
    return {
        "layers": rows,
        "pruned": _totals(wrapped_rows) if wrapped_rows else None,
        "prunable": _totals(rows),
        "all_params": _totals(all_rows),
    }


def format_sparsity_report(report):
    """Renders `sparsity_report(model)` as a fixed-width table (a string).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> print(format_sparsity_report(sparsity_report(model)).splitlines()[0])
    weight                                    shape            nonzero        total  sparsity
    """
    lines = [f"{'weight':<40}  {'shape':<14} {'nonzero':>9} {'total':>12}  sparsity"]
    for row in report["layers"]:
        shape = "x".join(str(d) for d in row["shape"])
        # In a pruned model, say which prunable tensors were left dense (e.g. `exclude`).
        mark = "  (not pruned)" if report["pruned"] is not None and not row["wrapped"] else ""
        lines.append(
            f"{row['weight'][:40]:<40}  {shape:<14} {row['nonzero']:>9} {row['total']:>12}"
            f"  {row['sparsity']:>7.2%}{mark}"
        )
    for key, label in (
        ("pruned", "pruned layers"),
        ("prunable", "prunable"),
        ("all_params", "all parameters"),
    ):
        totals = report[key]
        if totals is None:
            continue
        lines.append(
            f"{'= ' + label:<40}  {'':<14} {totals['nonzero']:>9} {totals['total']:>12}"
            f"  {totals['sparsity']:>7.2%}"
        )
    return "\n".join(lines)
