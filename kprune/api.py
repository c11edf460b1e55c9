"""Public API: prune a model, strip the wrappers; masks and reports, re-exported.

`prune()` and `strip()` live here; the functions that read, write and bind masks are in
`kprune.masks` and the sparsity report in `kprune.reporting`, all importable from here.

Example:

>>> import keras
>>> from kprune import LinearSparsity
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
>>> pruned = prune(model, LinearSparsity(0.0, 0.5, begin_step=0, end_step=10))
>>> [type(layer).__name__ for layer in pruned.layers]
['PruningWrapper', 'PruningWrapper']
>>> [type(layer).__name__ for layer in strip(pruned).layers]
['Dense', 'Dense']
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from kprune._internal.validate import check_choice
from kprune._internal.walk import check_model, clone, fresh_copy, is_graph_model, subclassed_error
from kprune.allocation import layer_budgets, resolve_budget
from kprune.criteria import get_criterion
from kprune.granularity import nm_problems, parse_granularity
from kprune.masking import SCOPES
from kprune.masks import (
    apply_masks,
    bind_optimizer,
    get_masks,
    pruned_variables,
    pruning_wrappers,
    set_masks,
    walk_model,
)
from kprune.reporting import format_sparsity_report, left_dense, sparsity_report
from kprune.schedules import PruningSchedule
from kprune.structured.engine import (
    CHANNEL_CRITERIA,
    CHANNEL_TARGETS,
    ChannelImportance,
    channel_weight_names,
    macs_schedule,
)
from kprune.structured.graph import trace_channels
from kprune.targets import check_supported, is_prunable, prunable_weights
from kprune.wrapper import PruningWrapper, check_nm_arguments

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


# -- prune ----------------------------------------------------------------------------------
def _layers_to_wrap(model, exclude, what):
    """The layers `prune()` wraps, as `(layer, names of its containers)` in layer order.

    Checks the model (Keras 3, Sequential/functional, built, not pruned yet) and `exclude`.
    """
    check_model(model, what)
    if not is_graph_model(model):
        raise subclassed_error(model, what)
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Start it with keras.Input(shape) or call it on "
            "a batch before pruning, so that its weights exist."
        )
    walked = list(walk_model(model))
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
            "Embedding kernels, RNN cell kernels, layers that define get_prunable_weights(), "
            "and the layers that own such layers (MultiHeadAttention, TimeDistributed, ...)."
        )
    for layer, _ in to_wrap:
        check_supported(layer)
    return to_wrap


def _nm_layers(model, to_wrap, granularity, stacklevel):
    """The layers of `to_wrap` whose every pruned weight can hold `granularity` (N:M).

    The others are left dense with one warning naming each weight and why; none left is an
    error.
    """
    kept, skipped = [], []
    for item in to_wrap:
        layer = item[0]
        problems = nm_problems(layer, prunable_weights(layer), granularity.m)
        if problems:
            skipped.extend(problems)
        else:
            kept.append(item)
    if not kept:
        raise ValueError(
            f"No layer of model '{model.name}' can hold a {granularity} pattern: "
            f"{'; '.join(skipped)}. N:M groups run along the input axis of Dense and "
            f"Conv1D/2D/3D kernels, whose length must be a multiple of {granularity.m}; use "
            "granularity='weight' for this model, or a smaller M."
        )
    if skipped:
        warnings.warn(
            f"N:M granularity {granularity} leaves {len(skipped)} weight(s) of model "
            f"'{model.name}' dense, their layers unwrapped: {'; '.join(skipped)}. Pass their "
            "layers in `exclude` to silence this.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    return kept


def prune(
    model,
    schedule,
    *,
    scope=None,
    exclude=None,
    criterion="magnitude",
    budget=None,
    granularity="weight",
    target="channels",
    sensitivity=None,
):
    """Returns a copy of `model` whose prunable layers are wrapped in `PruningWrapper`.

    The copy has the same architecture and weights (nested models are cloned too); it is not
    compiled. Train it with `kprune.PruningCallback()` in `fit`, then call `kprune.strip()`.

    Args:
        model: a built Sequential or functional `keras.Model` (e.g. any `keras.applications`
            model). Subclassed models: wrap layers with `kprune.PruningWrapper` where they are
            created.
        schedule: a `kprune.PruningSchedule`, e.g. `LinearSparsity(0.0, 0.9, 0, 10_000)`, or
            None for masks that training never changes (set them with `kprune.set_masks`).
        scope: `"global"` (the default for weights: one threshold over all pruned tensors,
            so each layer gets the sparsity its weights call for) or `"layer"` (each weight
            tensor reaches the target sparsity on its own; at channel granularity, the
            default: each channel group loses the target fraction of its channels).
        exclude: names of layers to leave dense (a string or an iterable of strings).
        criterion: which weights the schedule's updates remove: `"magnitude"` (smallest |w|,
            the default), `"fggp"` (gradient-first, magnitude-next), or a
            `kprune.criteria.Criterion` such as `kprune.FGGP(candidate_rate=0.5)`.
        budget: per-tensor budget instead of `scope` (`kprune.allocation.BUDGETS`): "global",
            "uniform" (= scope "layer"), "erk" (each tensor on the schedule scaled to its ERK
            target) or "sensitivity" (the same, targets chosen on measured curves, given as
            `sensitivity`); a `scope` other than "global" must agree with it.
        granularity: `"weight"` (single weights, the default), `"channel"` (whole output
            channels with every slice coupled to them, traced through the graph by
            `kprune.structured.graph`; the schedule is then the fraction of channels removed,
            `criterion` one of `kprune.structured.engine.CHANNEL_CRITERIA`, "l1" by default;
            `kprune.shrink()` then builds the smaller model) or `"N:M"` such as `"2:4"`
            (semi-structured: in every group of M consecutive weights along a kernel's input
            axis N survive, see `kprune.granularity`; the schedule must end at `1 - N/M`,
            each update removes the smallest |w| but never more than M - N of a group;
            `criterion` "magnitude", `budget` "global" or "uniform"; layers without whole
            groups, e.g. an RGB stem, are left dense with a warning).
        target: at channel granularity, what the schedule's sparsity measures: `"channels"`
            (the fraction of channels removed) or `"macs"` (the fraction of the MACs
            removed; every group loses the channel fraction that gives it).
        sensitivity: for `budget="sensitivity"`, the `SensitivityCurves` that
            `kprune.sensitivity(model, held_out_data)` measured on this model.

    Returns:
        A new `keras.Model`.

    Raises:
        TypeError: `model` is not a Keras 3 model, is subclassed, or `schedule` is not a
            schedule.
        ValueError: bad `scope` or `criterion`, unknown names in `exclude`, no prunable layer,
            a layer with LoRA or quantization, or a model that is already pruned.

    Example:

    >>> from kprune import ConstantSparsity
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="hidden"),
    ...                           keras.layers.Dense(2, name="logits")])
    >>> pruned = prune(model, ConstantSparsity(0.5), exclude=["logits"])
    >>> [type(layer).__name__ for layer in pruned.layers]
    ['PruningWrapper', 'Dense']
    """
    check_model(model, "prune")
    if schedule is not None and not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "`schedule` must be a kprune.PruningSchedule, e.g. kprune.LinearSparsity(0.0, 0.9, "
            f"begin_step=0, end_step=1000), or None for fixed masks. Received: "
            f"schedule={schedule!r}"
        )
    granularity = parse_granularity(granularity)
    if sensitivity is not None and budget != "sensitivity":
        raise ValueError(
            f"`sensitivity` curves are used by budget='sensitivity' only. Received: "
            f"budget={budget!r}; pass budget='sensitivity' or drop `sensitivity`."
        )
    if granularity.kind == "channel":
        return _prune_channels(model, schedule, scope, exclude, criterion, budget, target)
    if target != "channels":
        raise ValueError(
            f"target={target!r} applies to granularity='channel' only; weight pruning's "
            "schedule is always the fraction of weights removed."
        )
    scope = "global" if scope is None else scope
    if budget is None:
        check_choice("scope", scope, SCOPES)
    budget = resolve_budget(budget, scope)
    criterion = get_criterion(criterion)
    walked = _layers_to_wrap(model, exclude, "prune")
    if granularity.is_nm:
        if budget == "erk":
            raise ValueError(
                f"budget='erk' gives every tensor its own target; granularity="
                f"{str(granularity)!r} has one, {granularity.sparsity:g} in every tensor. Use "
                "budget='uniform' (every tensor ramps to the pattern on its own) or 'global' "
                "(one threshold until then)."
            )
        check_nm_arguments(granularity, schedule, criterion)
        walked = _nm_layers(model, walked, granularity, stacklevel=2)
    to_wrap = [layer for layer, _ in walked]
    budgets = layer_budgets(
        to_wrap, schedule, budget, sensitivity=sensitivity, prefixes=[p for _, p in walked]
    )
    plan = dict(zip(map(id, to_wrap), budgets))

    dense = left_dense(model)
    if dense:
        # One warning per call, naming every weight, so no weight is left dense silently.
        warnings.warn(
            f"prune() leaves {len(dense)} weight(s) of model '{model.name}' dense that look "
            f"prunable but that no kprune rule covers: {dense}. Give their layer a "
            "`get_prunable_weights()` method returning them to prune them; "
            "`sparsity_report(model)['left_dense']` lists them.",
            UserWarning,
            stacklevel=2,
        )

    def make_layer(layer):
        new_layer = fresh_copy(layer)
        if id(layer) in plan:
            # Build the copy as the original was built: a layer whose build takes several
            # shapes (MultiHeadAttention: query and value) cannot be built by the wrapper from
            # the shape of its first input alone.
            build_config = layer.get_build_config()
            if build_config and not new_layer.built:  # some build in __init__ from config
                new_layer.build_from_config(build_config)
            layer_schedule, layer_scope = plan[id(layer)]
            wrapper = PruningWrapper(
                new_layer,
                schedule=layer_schedule,
                scope=layer_scope,
                criterion=criterion,
                granularity=granularity,
            )
            return wrapper, lambda: new_layer.set_weights(layer.get_weights())
        return new_layer, lambda: new_layer.set_weights(layer.get_weights())

    return clone(model, make_layer, compiled=False)


def _prune_channels(model, schedule, scope, exclude, criterion, budget, target):
    """`prune(..., granularity="channel")`: wrap every layer on a prunable channel path."""
    _layers_to_wrap(model, exclude, "prune")  # the same checks of model and `exclude`
    if budget is not None:
        raise ValueError(
            f"budget={budget!r} applies to weight pruning; at granularity='channel' use "
            "scope='layer' (every channel group loses the same fraction) or scope='global'."
        )
    scope = "layer" if scope is None else check_choice("scope", scope, SCOPES)
    check_choice("target", target, CHANNEL_TARGETS)
    if isinstance(criterion, str) or criterion is None:
        criterion = ChannelImportance(criterion or "l1")
    elif not isinstance(criterion, ChannelImportance):
        raise ValueError(
            f"At granularity='channel' the criterion is one of {list(CHANNEL_CRITERIA)}. "
            f"Received: criterion={criterion!r}"
        )
    if schedule is not None and schedule.allows_regrowth:
        raise ValueError(
            "Channel pruning is monotone (removed channels do not return), so it cannot follow "
            f"{schedule!r}, which lets weights regrow. Use LinearSparsity, PolynomialDecay or "
            "ConstantSparsity."
        )
    trace = trace_channels(model, exclude)
    if trace.num_classes == 0:
        blocked = [f"{b.layer} ({b.type}: {b.reason})" for b in trace.blocked]
        raise ValueError(
            f"Model '{model.name}' has no channel that can be removed: every channel reaches "
            "the model's inputs or outputs, an excluded layer, or a layer the channel tracer "
            f"cannot follow{': ' + ', '.join(blocked) if blocked else ''}. Use "
            "granularity='weight' for this model."
        )
    if trace.blocked:
        warnings.warn(
            f"Channel pruning leaves the channels that reach {len(trace.blocked)} layer(s) of "
            f"model '{model.name}' dense, because the tracer cannot follow them: "
            + "; ".join(f"{b.layer} ({b.type}: {b.reason})" for b in trace.blocked),
            UserWarning,
            stacklevel=3,
        )
    if schedule is not None and target == "macs":
        schedule = macs_schedule(trace, schedule)
    wrap = {id(layer): channel_weight_names(trace, layer) for layer in trace.layers()}

    def make_layer(layer):
        new_layer = fresh_copy(layer)
        if wrap.get(id(layer)):
            build_config = layer.get_build_config()
            if build_config and not new_layer.built:
                new_layer.build_from_config(build_config)
            wrapper = PruningWrapper(
                new_layer,
                schedule=schedule,
                scope=scope,
                criterion=criterion,
                channel_weights=wrap[id(layer)],
            )
            return wrapper, lambda: new_layer.set_weights(layer.get_weights())
        return new_layer, lambda: new_layer.set_weights(layer.get_weights())

    return clone(model, make_layer, compiled=False)


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

    >>> from kprune import ConstantSparsity
    >>> model = prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...               ConstantSparsity(0.5))
    >>> type(strip(model).layers[0]).__name__
    'Dense'
    """
    check_model(model, "strip")
    if not is_graph_model(model):
        raise TypeError(
            f"strip() clones Sequential and functional models; '{model.name}' is subclassed "
            f"({type(model).__name__}). Its pruned weights are already exactly zero, so you can "
            "save it as is, or copy `wrapper.layer` weights into a wrapper-free instance of "
            "your model class."
        )

    def make_layer(layer):
        if isinstance(layer, PruningWrapper):
            inner = fresh_copy(layer.layer)
            return inner, lambda: inner.set_weights(_masked_weights(layer))
        new_layer = fresh_copy(layer)
        return new_layer, lambda: new_layer.set_weights(layer.get_weights())

    return clone(model, make_layer, compiled=False)
