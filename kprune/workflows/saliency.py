"""Scoring a model's prunable weights at initialization without changing it (SNIP, GraSP, SynFlow).

The model-level half of `kprune.workflows.at_init`: the pure scores are in `kprune.scores`;
here they are computed on a Keras model and turned into masks.

The prunable weights are read once into
tensors, and the model is run inside a `keras.StatelessScope` that maps each prunable variable
to such a tensor (SynFlow also maps every other parameter to its absolute value, in a float64
copy of the model). Variable writes made during the forward pass (BatchNorm moving statistics,
dropout seed state) go to the scope and are dropped, so every weight of `model`, moving
statistics included, is bit-identical afterwards. Gradients are taken with `tf.GradientTape`
(`kprune.scores`), one batch at a time inside a `tf.function`, so no more than one batch of
activations is alive at any moment (GraSP: one batch with its graph kept for the second
backward pass).

Example:

>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
>>> [path for path, _ in prunable_targets(model, None, "example")]
['fc/kernel']
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from kprune import scores as scores_lib
from kprune._internal.walk import clone, weight_key
from kprune.allocation import erk_prune_counts
from kprune.api import _layers_to_wrap, _nm_layers
from kprune.granularity import nm_axis
from kprune.masking import compute_masks
from kprune.targets import prunable_weights

__all__ = ["prunable_targets", "score_masks"]


def _resolve_loss(model, loss):
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                f"Model '{model.name}' was compiled with one loss per output ({loss!r}); pass the "
                "loss to score with, e.g. loss=keras.losses.SparseCategoricalCrossentropy("
                "from_logits=True)."
            )
    if isinstance(loss, str):
        return keras.losses.get(loss)
    if not callable(loss):
        raise TypeError(
            f"`loss` must be a Keras loss, a loss name or a callable(y_true, y_pred). "
            f"Received: loss={loss!r}"
        )
    return loss


# -- data -----------------------------------------------------------------------------------
def _leading_size(x):
    return int(tf.nest.flatten(x)[0].shape[0])


def _labelled(element, method):
    """`(x, y, sample_weight)` from a dataset element or an `(x, y[, w])` pair."""
    if isinstance(element, (tuple, list)) and len(element) in (2, 3) and element[1] is not None:
        return element[0], element[1], element[2] if len(element) == 3 else None
    raise ValueError(
        f"method={method!r} needs labelled data: `data` must be an (x, y) pair or a batched "
        "tf.data.Dataset whose elements are (x, y) or (x, y, sample_weight). Received elements "
        f"of the form {type(element).__name__}"
        + (f" of length {len(element)}" if isinstance(element, (tuple, list)) else "")
        + ". SynFlow, random and magnitude need no data."
    )


def _check_batched(model, x):
    inputs = getattr(model, "inputs", None) or []
    flat = tf.nest.flatten(x)
    if len(inputs) == 1 and len(flat) == 1 and len(flat[0].shape) == len(inputs[0].shape) - 1:
        raise ValueError(
            f"The data's inputs have shape {tuple(flat[0].shape)}, one dimension fewer than the "
            f"model's input {tuple(inputs[0].shape)}: batch the dataset first, e.g. "
            "dataset.batch(128)."
        )


def _batches(model, data, batches, method):
    """Yields `batches` labelled batches `(x, y, sample_weight)` from `data`."""
    if data is None:
        raise ValueError(
            f"method={method!r} needs data: pass an (x, y) pair of arrays or a batched "
            "tf.data.Dataset of (x, y)."
        )
    if isinstance(data, tf.data.Dataset):
        count = 0
        for element in data.take(batches):
            x, y, w = _labelled(element, method)
            if _leading_size(x) == 0:
                continue
            _check_batched(model, x)
            count += 1
            yield x, y, w
        if count == 0:
            raise ValueError(
                f"`data` is empty: the dataset yielded no batch for method={method!r}."
            )
        if count < batches:
            raise ValueError(
                f"`data` yielded only {count} batch(es), but batches={batches} were requested."
            )
        return
    if isinstance(data, (np.ndarray, tf.Tensor, dict)):
        _labelled(data, method)  # raises: inputs alone, no labels
    if not isinstance(data, (tuple, list)):
        raise TypeError(
            "`data` must be an (x, y) pair of arrays or a tf.data.Dataset. "
            f"Received: data of type {type(data).__name__}"
        )
    x, y, w = _labelled(tuple(data), method)
    size = _leading_size(x)
    if size == 0:
        raise ValueError(f"`data` is empty: x has 0 examples (method={method!r}).")
    if size < batches:
        raise ValueError(
            f"`data` has {size} examples, too few to split into batches={batches} batches."
        )
    bounds = np.linspace(0, size, batches + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = [tf.nest.map_structure(lambda a, lo=lo, hi=hi: a[lo:hi], a) for a in (x, y)]
        yield part[0], part[1], None if w is None else w[lo:hi]


# -- model plumbing -------------------------------------------------------------------------
def prunable_targets(model, exclude, what, granularity=None):
    """`[(path, variable)]` of the weights `prune()` would mask, in `get_masks` order.

    With an N:M `granularity` (a `kprune.granularity.Granularity`), only those of the layers
    `prune(..., granularity=...)` wraps (a warning lists the others).
    """
    layers = _layers_to_wrap(model, exclude, what)
    if granularity is not None and granularity.is_nm:
        layers = _nm_layers(model, layers, granularity, stacklevel=4)
    found = []
    for layer, prefix in layers:
        for w in prunable_weights(layer):
            found.append((weight_key(prefix, layer, w), w))
    return found


def nm_specs(model, targets, granularity):
    """`(axis, n, m)` of every target for `compute_masks(nm=...)`, or None for weight pruning."""
    if granularity is None or not granularity.is_nm:
        return None
    owners = {
        id(w): layer
        for layer, _ in _layers_to_wrap(model, None, "masks_at_init")
        for w in prunable_weights(layer)
    }
    return [(nm_axis(owners[id(v)], v), granularity.n, granularity.m) for _, v in targets]


def _forward(model, variables, training, absolute=False):
    """`forward(weights, x)`: `model(x)` with `variables` replaced by `weights`, statelessly.

    With `absolute=True` every other floating-point variable is replaced by its absolute value
    (SynFlow's linearised network).
    """
    replaced = {id(v) for v in variables}
    others = []
    if absolute:
        others = [
            v for v in model.variables if id(v) not in replaced and tf.as_dtype(v.dtype).is_floating
        ]

    def forward(weights, x):
        mapping = list(zip(variables, weights))
        mapping += [(v, tf.abs(v.value)) for v in others]
        with keras.StatelessScope(state_mapping=mapping):
            return model(x, training=training)

    return forward


def _float64_copy(model):
    """A float64 clone of `model` with the same weights (for SynFlow, which overflows float32)."""

    def make_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float64"
        try:
            new_layer = layer.__class__.from_config(config)
        except Exception as error:  # the layer's own from_config decides what it accepts
            raise ValueError(
                f"SynFlow could not make a float64 copy of layer '{layer.name}' "
                f"({type(layer).__name__}): {error}. Pass dtype='float32' to score in the model's "
                "own precision."
            ) from error

        def copy_weights():
            values = [
                np.asarray(v, np.float64) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
                for v in layer.get_weights()
            ]
            new_layer.set_weights(values)

        return new_layer, copy_weights

    return clone(model, make_layer)


def _synflow_inputs(model, input_shape, dtype):
    inputs = getattr(model, "inputs", None) or []
    if input_shape is not None:
        shapes = [tuple(input_shape)]
        dtypes = [inputs[0].dtype if inputs else "float32"]
    else:
        shapes = [tuple(t.shape[1:]) for t in inputs]
        dtypes = [t.dtype for t in inputs]
    if not shapes or any(d is None for s in shapes for d in s):
        raise ValueError(
            f"SynFlow feeds an input of ones and needs the input shape of model '{model.name}', "
            f"which is not fully known ({[tuple(t.shape) for t in inputs]}). Pass "
            "input_shape=(...) without the batch dimension."
        )
    ones = []
    for shape, input_dtype in zip(shapes, dtypes):
        cast = dtype if tf.as_dtype(input_dtype).is_floating else input_dtype
        ones.append(tf.ones((1, *shape), dtype=cast))
    return ones[0] if len(ones) == 1 else ones


# -- scores must be finite before anything is selected ----------------------------------------
_LABELS = {"snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "magnitude": "Magnitude"}
_DATA_HINT = (
    "Check the inputs of the scoring batches (NaN or inf values: missing data, a bad "
    "preprocessing step), their labels, and the loss, which must be finite on those batches"
)


def _nonfinite_counts(scores):
    """NaN/inf entries per score tensor: one reduction each, fetched as one vector."""
    return tf.stack(
        [
            tf.math.count_nonzero(tf.logical_not(tf.math.is_finite(s)), dtype=tf.int64)
            for s in scores
        ]
    )


def _check_finite(method, targets, scores, counts=None, hint=""):
    """Raises ValueError naming the first tensor with NaN/inf scores; selection never sees them.

    Ranking NaN is meaningless (a NaN key sorts as if it were lowest, so the first weights by
    position would be pruned), hence the refusal instead of masks.
    """
    counts = np.asarray(_nonfinite_counts(scores) if counts is None else counts)
    bad = np.flatnonzero(counts)
    if not bad.size:
        return
    i = int(bad[0])
    path, variable = targets[i]
    others = f"; {bad.size} of the {len(targets)} scored tensors have some" if bad.size > 1 else ""
    # Only now, on the way to an error: a non-finite weight is the likeliest cause (and in
    # SynFlow it spoils the scores of every other tensor on its paths), so name the first.
    weights = _nonfinite_counts([v.value for _, v in targets]).numpy()
    broken = np.flatnonzero(weights)
    weight_note = (
        f" The weights themselves are not finite: '{targets[broken[0]][0]}' holds "
        f"{int(weights[broken[0]])} NaN/inf value(s)."
        if broken.size
        else ""
    )
    raise ValueError(
        f"{_LABELS[method]} scores are not finite, so no mask can be chosen: {int(counts[i])} of "
        f"the {int(np.prod(variable.shape))} scores of '{path}' are NaN or inf{others}."
        f"{weight_note} {hint}"
    )


# -- selection ------------------------------------------------------------------------------
def _target(sparsity, scope, shapes):
    """The selection target as a float64 tensor: one sparsity, or one per tensor for ERK.

    ERK fractions are `count / size`, which `compute_masks` turns back into exactly `count`.
    """
    if scope != "erk":
        return tf.constant(float(sparsity), tf.float64)
    counts = erk_prune_counts(shapes, float(sparsity))
    return tf.constant([c / math.prod(s) for c, s in zip(counts, shapes)], tf.float64)


def _select(scores, old_masks, target, scope, nm=None):
    """Masks keeping the highest scores: exact counts, ties by position (kprune.masking)."""
    if scope != "erk":
        return compute_masks(scores, old_masks, target, scope=scope, monotone=True, nm=nm)
    return [
        compute_masks([s], [m], target[i], scope="layer", monotone=True)[0]
        for i, (s, m) in enumerate(zip(scores, old_masks))
    ]


def _accumulate(total, grads):
    return list(grads) if total is None else [t + g for t, g in zip(total, grads)]


def _snip_scores(model, variables, data, loss, batches, training):
    forward = _forward(model, variables, training)
    weights = [tf.convert_to_tensor(v.value) for v in variables]
    step = tf.function(
        lambda w, x, y, sw: scores_lib.loss_gradients(forward, loss, w, x, y, sw),
        reduce_retracing=True,
    )
    total, count = None, 0
    for x, y, sw in _batches(model, data, batches, "snip"):
        total = _accumulate(total, step(weights, x, y, sw))
        count += 1
    return scores_lib.snip(weights, [g / count for g in total])


def _grasp_scores(model, variables, data, loss, batches, training, temperature):
    forward = _forward(model, variables, training)
    weights = [tf.convert_to_tensor(v.value) for v in variables]
    # Two passes over the same batches: keep the (small) scoring set, not its activations.
    batch_list = list(_batches(model, data, batches, "grasp"))
    grad_step = tf.function(
        lambda w, x, y, sw: scores_lib.loss_gradients(
            forward, loss, w, x, y, sw, temperature=temperature
        ),
        reduce_retracing=True,
    )
    hvp_step = tf.function(
        lambda w, v, x, y, sw: scores_lib.hessian_gradient_product(
            forward, loss, w, v, x, y, sw, temperature=temperature
        ),
        reduce_retracing=True,
    )
    g = None
    for x, y, sw in batch_list:
        g = _accumulate(g, grad_step(weights, x, y, sw))
    hg = None
    for x, y, sw in batch_list:
        hg = _accumulate(hg, hvp_step(weights, g, x, y, sw))
    return scores_lib.grasp(weights, hg)


def _synflow_hint(compute_dtype, k):
    if compute_dtype != tf.float64:
        return (
            f"The flow overflowed in {compute_dtype.name} at iteration {k} (it grows like a "
            "product over the layers): use dtype='float64', the default, which scores a float64 "
            "copy of the model."
        )
    return (
        f"At iteration {k} even float64 overflowed, or the model's weights are not finite: "
        "check the weights (SynFlow uses no data)."
    )


def _synflow_masks(
    model, targets, sparsity, scope, iterations, dtype, input_shape, training, nm=None
):
    scoring_model = _float64_copy(model) if dtype == "float64" else model
    if scoring_model is model:
        variables = [v for _, v in targets]
    else:
        copies = dict(prunable_targets(scoring_model, None, "masks_at_init"))
        variables = [copies[path] for path, _ in targets]
    compute_dtype = tf.float64 if dtype == "float64" else tf.as_dtype(variables[0].dtype)
    forward = _forward(scoring_model, variables, training, absolute=True)
    inputs = _synflow_inputs(model, input_shape, compute_dtype)
    weights = [tf.cast(v.value, compute_dtype) for v in variables]
    shapes = [tuple(v.shape) for v in variables]

    @tf.function
    def score(masks):
        masked = [w * tf.cast(m, compute_dtype) for w, m in zip(weights, masks)]
        scores = scores_lib.synflow(forward, masked, inputs)
        return scores, _nonfinite_counts(scores)

    @tf.function
    def select(scores, masks, target):
        # Selection works on float32 keys: divide by the largest score first (in the compute
        # dtype) so huge float64 scores keep their order instead of all becoming inf.
        if scope == "global":
            peak = tf.reduce_max([tf.reduce_max(s) for s in scores])
            scaled = [s / tf.where(peak > 0, peak, 1) for s in scores]
        else:
            scaled = [s / tf.where(tf.reduce_max(s) > 0, tf.reduce_max(s), 1) for s in scores]
        scaled = [tf.cast(s, tf.float32) for s in scaled]
        return _select(scaled, masks, target, scope, nm)

    masks = [tf.ones(shape, tf.float32) for shape in shapes]
    density = 1.0 - float(sparsity)
    for k in range(1, iterations + 1):
        # Exponential schedule: density D^(k/n), ending exactly at the target.
        sparsity_k = float(sparsity) if k == iterations else 1.0 - density ** (k / iterations)
        scores, counts = score(masks)
        if np.any(counts):
            _check_finite("synflow", targets, scores, counts, _synflow_hint(compute_dtype, k))
        masks = select(scores, masks, _target(sparsity_k, scope, shapes))
    return masks


def score_masks(model, targets, data, method, sparsity, scope, loss, batches, options, nm=None):
    variables = [v for _, v in targets]
    shapes = [tuple(v.shape) for v in variables]
    ones = [tf.ones(shape, tf.float32) for shape in shapes]
    if method == "synflow":
        return _synflow_masks(
            model,
            targets,
            sparsity,
            scope,
            options["iterations"],
            options["dtype"],
            options["input_shape"],
            options["training"],
            nm,
        )
    if method == "random":
        scores = scores_lib.random(variables, seed=options["seed"])
    elif method == "magnitude":
        scores = scores_lib.magnitude([v.value for v in variables])
    elif method == "snip":
        scores = _snip_scores(
            model, variables, data, _resolve_loss(model, loss), batches, options["training"]
        )
    else:  # grasp: remove the highest scores = keep the highest of -score
        grasp = _grasp_scores(
            model,
            variables,
            data,
            _resolve_loss(model, loss),
            batches,
            options["training"],
            options["temperature"],
        )
        scores = [-s for s in grasp]
    hint = (
        "Check the model's weights."
        if method == "magnitude"
        else _DATA_HINT
        + ("." if method == "snip" else " (and `temperature`, which divides the logits).")
    )
    if method != "random":
        _check_finite(method, targets, scores, hint=hint)
    return _select(scores, ones, _target(sparsity, scope, shapes), scope, nm)
