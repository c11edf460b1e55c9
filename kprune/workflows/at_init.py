"""Pruning at initialization: SNIP, GraSP, SynFlow, random and magnitude masks.

`prune_at_init(model, data, method=..., sparsity=...)` scores the prunable weights of a freshly
initialised model, keeps the best ones and returns a pruned copy whose masks stay fixed for the
whole training (`kprune.prune(model, None)` plus `kprune.set_masks`). `masks_at_init` returns the
masks only, e.g. to start gradual pruning from a sparse network.

How the model is scored without being changed: the prunable weights are read once into
tensors, and the model is run inside a `keras.StatelessScope` that maps each prunable variable
to such a tensor (SynFlow also maps every other parameter to its absolute value, in a float64
copy of the model). Variable writes made during the forward pass (BatchNorm moving statistics,
dropout seed state) go to the scope and are dropped, so every weight of `model`, moving
statistics included, is bit-identical afterwards. Gradients are taken with `tf.GradientTape`
(`kprune.scores`), one batch at a time inside a `tf.function`, so no more than one batch of
activations is alive at any moment (GraSP: one batch with its graph kept for the second
backward pass).

| method      | needs         | score, selection                                      | mode     |
|-------------|---------------|-------------------------------------------------------|----------|
| `snip`      | (x, y)        | `|g * w|`, g averaged over `batches`; keep the highest | inference |
| `grasp`     | (x, y)        | `-w * Hg`, logits / `temperature`; remove the highest | training |
| `synflow`   | input shape   | `|w * dR/dw|`, `iterations` rounds, density `D^(k/n)` | inference |
| `random`    | nothing       | uniform scores from `seed`                            |          |
| `magnitude` | nothing       | `|w|`                                                 |          |

"mode" is the default of the `training` option: whether BatchNorm uses batch statistics (and
dropout is on) in the scoring passes. SNIP's reference code scores in inference mode, GraSP's in
training mode (batch statistics, never committed), SynFlow in evaluation mode.

Example:

>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
...                           keras.layers.Dense(3)])
>>> x = np.random.default_rng(0).random((32, 8), dtype="float32")
>>> y = np.arange(32) % 3
>>> pruned = prune_at_init(model, (x, y), method="snip", sparsity=0.75)
>>> kprune.sparsity_report(pruned)["pruned"]["sparsity"]
0.75
"""

from __future__ import annotations

import math
import numbers
import time

import keras
import numpy as np
import tensorflow as tf

from kprune import scores as scores_lib
from kprune.allocation import erk_prune_counts
from kprune.api import (
    _clone,
    _layers_to_wrap,
    _weight_key,
    prune,
    set_masks,
    sparsity_report,
    strip,
)
from kprune.masking import compute_masks
from kprune.targets import prunable_weights
from kprune.workflows.training import fit_and_evaluate

__all__ = ["METHODS", "SCOPES", "prune_at_init", "masks_at_init"]

SCOPES = ("global", "layer", "erk")

# Options each method accepts, with their defaults.
_OPTIONS = {
    "snip": {"training": False},
    "grasp": {"temperature": 200.0, "training": True},
    "synflow": {"iterations": 100, "dtype": "float64", "input_shape": None, "training": False},
    "random": {"seed": 0},
    "magnitude": {},
}
METHODS = tuple(_OPTIONS)
_DATA_METHODS = ("snip", "grasp")


# -- argument checks ------------------------------------------------------------------------
def _check_args(method, sparsity, scope, batches, options):
    if not isinstance(method, str) or method not in _OPTIONS:
        raise ValueError(f"Unknown method {method!r}. Valid methods: {list(METHODS)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ValueError(f"`sparsity` must be a number in [0, 1). Received: sparsity={sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1). Received: sparsity={sparsity!r}")
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}. Received: scope={scope!r}")
    if isinstance(batches, bool) or not isinstance(batches, numbers.Integral) or batches < 1:
        raise ValueError(f"`batches` must be an integer >= 1. Received: batches={batches!r}")
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise TypeError(
            f"method={method!r} does not take option(s) {unknown}. Its options are: "
            f"{_OPTIONS[method] or 'none'}"
        )
    merged = {**_OPTIONS[method], **options}
    if "training" in merged and not isinstance(merged["training"], bool):
        raise ValueError(
            f"`training` must be True or False. Received: training={merged['training']!r}"
        )
    if method == "grasp":
        t = merged["temperature"]
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not t > 0:
            raise ValueError(f"`temperature` must be a number > 0. Received: temperature={t!r}")
    if method == "synflow":
        n = merged["iterations"]
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"`iterations` must be an integer >= 1. Received: iterations={n!r}")
        if merged["dtype"] not in ("float64", "float32"):
            raise ValueError(
                f"`dtype` must be 'float64' or 'float32'. Received: dtype={merged['dtype']!r}"
            )
    if method == "random":
        seed = merged["seed"]
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    return merged


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
def _targets(model, exclude, what):
    """`[(path, variable)]` of the weights `prune()` would mask, in `get_masks` order."""
    targets = []
    for layer, prefix in _layers_to_wrap(model, exclude, what):
        for w in prunable_weights(layer):
            targets.append((_weight_key(prefix, layer, w), w))
    return targets


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

    return _clone(model, make_layer)


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


# -- selection ------------------------------------------------------------------------------
def _target(sparsity, scope, shapes):
    """The selection target as a float64 tensor: one sparsity, or one per tensor for ERK.

    ERK fractions are `count / size`, which `compute_masks` turns back into exactly `count`.
    """
    if scope != "erk":
        return tf.constant(float(sparsity), tf.float64)
    counts = erk_prune_counts(shapes, float(sparsity))
    return tf.constant([c / math.prod(s) for c, s in zip(counts, shapes)], tf.float64)


def _select(scores, old_masks, target, scope):
    """Masks keeping the highest scores: exact counts, ties by position (kprune.masking)."""
    if scope != "erk":
        return compute_masks(scores, old_masks, target, scope=scope, monotone=True)
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


def _synflow_masks(model, targets, sparsity, scope, iterations, dtype, input_shape, training):
    scoring_model = _float64_copy(model) if dtype == "float64" else model
    if scoring_model is model:
        variables = [v for _, v in targets]
    else:
        copies = dict(_targets(scoring_model, None, "masks_at_init"))
        variables = [copies[path] for path, _ in targets]
    compute_dtype = tf.float64 if dtype == "float64" else tf.as_dtype(variables[0].dtype)
    forward = _forward(scoring_model, variables, training, absolute=True)
    inputs = _synflow_inputs(model, input_shape, compute_dtype)
    weights = [tf.cast(v.value, compute_dtype) for v in variables]
    shapes = [tuple(v.shape) for v in variables]

    @tf.function
    def step(masks, target):
        masked = [w * tf.cast(m, compute_dtype) for w, m in zip(weights, masks)]
        scores = scores_lib.synflow(forward, masked, inputs)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(s)) for s in scores])
        # Selection works on float32 keys: divide by the largest score first (in the compute
        # dtype) so huge float64 scores keep their order instead of all becoming inf.
        if scope == "global":
            peak = tf.reduce_max([tf.reduce_max(s) for s in scores])
            scaled = [s / tf.where(peak > 0, peak, 1) for s in scores]
        else:
            scaled = [s / tf.where(tf.reduce_max(s) > 0, tf.reduce_max(s), 1) for s in scores]
        scaled = [tf.cast(s, tf.float32) for s in scaled]
        return _select(scaled, masks, target, scope), finite

    masks = [tf.ones(shape, tf.float32) for shape in shapes]
    density = 1.0 - float(sparsity)
    for k in range(1, iterations + 1):
        # Exponential schedule: density D^(k/n), ending exactly at the target.
        sparsity_k = float(sparsity) if k == iterations else 1.0 - density ** (k / iterations)
        masks, finite = step(masks, _target(sparsity_k, scope, shapes))
        if not bool(finite):
            raise ValueError(
                f"SynFlow scores overflowed in {compute_dtype.name} at iteration {k} (the network "
                "is too deep or its weights too large for this precision)."
                + (" Use dtype='float64'." if compute_dtype != tf.float64 else "")
            )
    return masks


def _score_masks(model, targets, data, method, sparsity, scope, loss, batches, options):
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
    return _select(scores, ones, _target(sparsity, scope, shapes), scope)


# -- public API -----------------------------------------------------------------------------
def masks_at_init(
    model,
    data=None,
    *,
    method,
    sparsity,
    loss=None,
    batches=1,
    scope="global",
    exclude=None,
    **method_options,
):
    """Masks chosen at initialization by a saliency method, keyed like `kprune.get_masks`.

    The model is not changed (its variables are only read). Use the result with
    `kprune.set_masks` on `kprune.prune(model, ...)` with the same `exclude`, e.g. to start
    gradual pruning (FGGP) from a 50%-sparse random ERK mask.

    Args:
        model: a built Sequential or functional Keras model (as for `kprune.prune`).
        data: `(x, y)` arrays (split into `batches` equal consecutive slices) or a batched
            `tf.data.Dataset` of `(x, y)` / `(x, y, sample_weight)` (its first `batches`
            elements are used). Needed by `snip` and `grasp`; ignored by the others.
        method: one of `"snip"`, `"grasp"`, `"synflow"`, `"random"`, `"magnitude"`.
        sparsity: fraction of the prunable weights to remove, in [0, 1).
        loss: loss to score with; defaults to the model's compiled loss, else sparse
            categorical cross-entropy from logits.
        batches: number of batches to score on (SNIP averages their gradients; GraSP sums them).
        scope: `"global"` (one ranking over all pruned weights, as published), `"layer"`
            (every tensor keeps `1 - sparsity` of itself) or `"erk"` (per-tensor budgets from
            `kprune.allocation.erk_keep_counts`, each tensor ranked on its own).
        exclude: names of layers to leave dense, as in `kprune.prune`.
        **method_options: per method:
            * snip: `training=False` (BatchNorm/dropout mode of the scoring pass).
            * grasp: `temperature=200.0` (logits are divided by it), `training=True`.
            * synflow: `iterations=100`, `dtype="float64"` (`"float32"`: the model's own
              precision; may overflow on deep nets, which raises), `input_shape=None`
              (defaults to the model's input shape), `training=False`.
            * random: `seed=0`.

    Returns:
        `dict[str, np.ndarray]` of float32 0/1 arrays. Exactly `round(sparsity * N)` zeros in
        total for `"global"` and `"erk"` scope, `round(sparsity * n_i)` per tensor for
        `"layer"` scope; ties are broken by position, so the same inputs give the same masks.

    Raises:
        ValueError: unknown method (the message lists the valid ones), sparsity outside
            [0, 1), bad scope or batches, missing/empty/unlabelled data for snip and grasp, a
            model without prunable weights, non-finite SynFlow scores.
        TypeError: an option the method does not take, data of the wrong type, a model that
            `kprune.prune` cannot handle.

    Example:

    >>> masks = masks_at_init(model, method="random", sparsity=0.5, scope="erk", seed=3)
    >>> pruned = kprune.prune(model, kprune.fggp_schedule(10_000, 0.9, initial_sparsity=0.5),
    ...                       scope="global", criterion="fggp")
    >>> kprune.set_masks(pruned, masks)
    """
    options = _check_args(method, sparsity, scope, batches, method_options)
    targets = _targets(model, exclude, "masks_at_init")
    if method in _DATA_METHODS and data is None:
        raise ValueError(
            f"method={method!r} needs data: pass an (x, y) pair of arrays or a batched "
            "tf.data.Dataset of (x, y)."
        )
    masks = _score_masks(model, targets, data, method, sparsity, scope, loss, batches, options)
    return {path: np.asarray(m.numpy(), np.float32) for (path, _), m in zip(targets, masks)}


def prune_at_init(
    model,
    data=None,
    *,
    method,
    sparsity,
    loss=None,
    batches=1,
    scope="global",
    exclude=None,
    **method_options,
):
    """Prunes `model` at initialization and returns a copy whose masks never change.

    Scores the prunable weights with `method` (see `masks_at_init` for the arguments), then
    returns `kprune.prune(model, None, exclude=exclude)` with those masks set: pruned weights
    are zero, and training (`fit` with or without `kprune.PruningCallback`) keeps them zero.
    The original model is not changed.

    Returns:
        A new, uncompiled `keras.Model` with `PruningWrapper`s (schedule None).

    Example:

    >>> pruned = prune_at_init(model, (x, y), method="grasp", sparsity=0.9, batches=2)
    >>> pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> pruned.fit(x, y, epochs=1, verbose=0)  # doctest: +SKIP
    """
    masks = masks_at_init(
        model,
        data,
        method=method,
        sparsity=sparsity,
        loss=loss,
        batches=batches,
        scope=scope,
        exclude=exclude,
        **method_options,
    )
    pruned = prune(model, None, scope="global" if scope == "global" else "layer", exclude=exclude)
    set_masks(pruned, masks)
    return pruned


# -- workflow: prune at initialization, then train with the masks fixed ------------------------
def saliency_batches(dataset, batches):
    """The first `batches` batches of a batched `(x, y)` dataset, concatenated into arrays.

    Example:

    >>> x, y = saliency_batches(data.train, 1)  # doctest: +SKIP
    """
    xs, ys = [], []
    for x, y in dataset.take(batches):
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    if len(xs) < batches:
        raise ValueError(
            f"The training data has only {len(xs)} batches; scoring asked for {batches}."
        )
    return np.concatenate(xs), np.concatenate(ys)


def class_balanced_sample(dataset, per_class, num_classes):
    """`per_class` examples of every class from a batched `(x, y)` dataset (GraSP's sample).

    Reads batches until every class is full, keeping examples in the order they come, then
    returns them sorted by class so that two halves hold the same classes in turn.

    Raises:
        ValueError: a class has fewer than `per_class` examples in the whole dataset.

    Example:

    >>> x, y = class_balanced_sample(data.train, 10, 10)  # doctest: +SKIP
    >>> np.bincount(y).tolist()  # doctest: +SKIP
    [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    """
    taken = {c: [] for c in range(num_classes)}
    for x, y in dataset:
        for xi, yi in zip(np.asarray(x), np.asarray(y).reshape(-1)):
            bucket = taken.get(int(yi))
            if bucket is not None and len(bucket) < per_class:
                bucket.append(xi)
        if all(len(b) == per_class for b in taken.values()):
            break
    short = {c: len(b) for c, b in taken.items() if len(b) < per_class}
    if short:
        raise ValueError(
            f"A class-balanced sample of {per_class} per class needs more data: classes "
            f"{sorted(short)} have only {sorted(short.values())} examples."
        )
    # Interleave classes (0, 1, ..., 0, 1, ...) so equal halves are class-balanced too.
    order = [(i, c) for i in range(per_class) for c in range(num_classes)]
    x = np.stack([taken[c][i] for i, c in order])
    y = np.array([c for _, c in order], dtype=np.int64)
    return x, y


def train_at_init(
    model,
    data,
    training,
    *,
    method,
    sparsity,
    scope="global",
    exclude=(),
    saliency_data=None,
    batches=1,
    run_dir=None,
    callbacks=(),
    verbose=1,
    **method_options,
):
    """Prunes `model` at initialization with `method`, then trains it with the masks fixed.

    Args:
        model: a built Sequential or functional model that outputs logits (unchanged).
        data: a `kprune.data.Dataset` for training and evaluation.
        training: a `kprune.workflows.training.TrainConfig`.
        method, sparsity, scope, exclude, batches, **method_options: as `masks_at_init`.
        saliency_data: `(x, y)` arrays (or a dataset) to score with; None for SynFlow and
            random, which need no data.
        run_dir, callbacks, verbose: as `kprune.workflows.training.fit_and_evaluate`.

    Returns:
        `(stripped_model, results)`: the trained model without wrappers, and the results of
        `fit_and_evaluate` plus `method`, `scope`, `exclude`, `saliency_seconds` (time spent
        scoring) and `sparsity` (`kprune.sparsity_report` of the pruned model).

    Example:

    >>> stripped, results = train_at_init(
    ...     model, data, TrainConfig(epochs=5), method="snip", sparsity=0.9,
    ...     saliency_data=saliency_batches(data.train, 1))  # doctest: +SKIP
    """
    start = time.perf_counter()
    # Under a tf.distribute strategy the scores are computed once, in cross-replica context, on
    # the whole (global) scoring batch -- the all-reduced score by construction -- and the
    # chosen masks are assigned to every replica of the pruned copy made in the same scope.
    with model.distribute_strategy.scope():
        pruned = prune_at_init(
            model,
            saliency_data,
            method=method,
            sparsity=sparsity,
            batches=batches,
            scope=scope,
            exclude=list(exclude or ()),
            **method_options,
        )
    saliency_seconds = time.perf_counter() - start
    results = fit_and_evaluate(
        pruned, data, training, run_dir=run_dir, callbacks=callbacks, verbose=verbose
    )
    results.update(
        method=method,
        scope=scope,
        exclude=list(exclude or ()),
        saliency_seconds=round(saliency_seconds, 3),
        method_options=dict(method_options),
        sparsity=sparsity_report(pruned),
    )
    return strip(pruned), results
