"""Pruning at initialization: SNIP, GraSP, SynFlow, random and magnitude masks.

`prune_at_init(model, data, method=..., sparsity=...)` scores the prunable weights of a freshly
initialised model, keeps the best ones and returns a pruned copy whose masks stay fixed for the
whole training (`kprune.prune(model, None)` plus `kprune.set_masks`). `masks_at_init` returns the
masks only, e.g. to start gradual pruning from a sparse network.

How a model is scored without being changed is described in `kprune.workflows.saliency`.

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

>>> import keras, kprune
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
...                           keras.layers.Dense(3)])
>>> x = np.random.default_rng(0).random((32, 8), dtype="float32")
>>> y = np.arange(32) % 3
>>> pruned = prune_at_init(model, (x, y), method="snip", sparsity=0.75)
>>> kprune.sparsity_report(pruned)["pruned"]["sparsity"]
0.75
"""

from __future__ import annotations

import numbers
import time
import warnings

import numpy as np

from kprune._internal.validate import (
    check_choice,
    check_integer,
    check_number,
    check_sparsity,
)
from kprune.api import prune, set_masks, sparsity_report, strip
from kprune.granularity import NM_TOLERANCE, parse_granularity
from kprune.workflows.saliency import nm_specs, prunable_targets, score_masks
from kprune.workflows.training import fit_and_evaluate

__all__ = [
    "METHODS",
    "SCOPES",
    "prune_at_init",
    "masks_at_init",
    "train_at_init",
    "saliency_batches",
    "class_balanced_sample",
]

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
    check_sparsity("sparsity", sparsity)
    check_choice("scope", scope, SCOPES)
    check_integer("batches", batches, 1)
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
        check_number("temperature", merged["temperature"], 0, low_open=True)
    if method == "synflow":
        check_integer("iterations", merged["iterations"], 1)
        check_choice("dtype", merged["dtype"], ("float64", "float32"))
    if method == "random":
        seed = merged["seed"]
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    return merged


def _check_granularity(granularity, sparsity, scope):
    granularity = parse_granularity(granularity)
    if granularity.kind == "channel":
        raise ValueError(
            "Pruning at initialization chooses single weights or N:M groups "
            "(granularity='weight' or e.g. '2:4'); for channels use kprune.prune(model, "
            "schedule, granularity='channel')."
        )
    if granularity.is_nm:
        if abs(float(sparsity) - granularity.sparsity) > NM_TOLERANCE:
            raise ValueError(
                f"granularity={str(granularity)!r} keeps {granularity.n} of every "
                f"{granularity.m} weights: pass sparsity={granularity.sparsity:g}. Received: "
                f"sparsity={sparsity!r}"
            )
        if scope == "erk":
            raise ValueError(
                f"scope='erk' gives every tensor its own target; granularity="
                f"{str(granularity)!r} has one. Use scope='global' or 'layer' (at the N:M "
                "sparsity both keep the best N of every group)."
            )
    return granularity


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
    granularity="weight",
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
        granularity: `"weight"` (the default) or `"N:M"` (e.g. `"2:4"`, with
            `sparsity=1 - N/M` and scope "global" or "layer"): the method's scores choose the
            N survivors of every group of M weights along a kernel's input axis; layers
            without whole groups are left out (and dense), as in `kprune.prune`.
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
            model without prunable weights, NaN or inf scores (snip, grasp: NaN/inf in the
            scoring batches or the loss; synflow: overflow in float32, use dtype="float64";
            any method: non-finite weights). The message names the first tensor affected and
            how many of its scores are not finite; no mask is chosen from such scores.
        TypeError: an option the method does not take, data of the wrong type, a model that
            `kprune.prune` cannot handle.

    Example:

    >>> import keras, kprune
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="h"),
    ...                           keras.layers.Dense(3, name="out")])
    >>> masks = masks_at_init(model, method="random", sparsity=0.5, scope="erk", seed=3)
    >>> sorted(masks)
    ['h/kernel', 'out/kernel']
    >>> schedule = kprune.criteria.fggp_schedule(10_000, 0.9, initial_sparsity=0.5)
    >>> pruned = kprune.prune(model, schedule, scope="global", criterion="fggp")
    >>> kprune.set_masks(pruned, masks)
    """
    options = _check_args(method, sparsity, scope, batches, method_options)
    granularity = _check_granularity(granularity, sparsity, scope)
    chosen = prunable_targets(model, exclude, "masks_at_init", granularity)
    if method in _DATA_METHODS and data is None:
        raise ValueError(
            f"method={method!r} needs data: pass an (x, y) pair of arrays or a batched "
            "tf.data.Dataset of (x, y)."
        )
    masks = score_masks(
        model,
        chosen,
        data,
        method,
        sparsity,
        scope,
        loss,
        batches,
        options,
        nm=nm_specs(model, chosen, granularity),
    )
    return {path: np.asarray(m.numpy(), np.float32) for (path, _), m in zip(chosen, masks)}


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
    granularity="weight",
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

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                           keras.layers.Dense(3)])
    >>> x = np.random.default_rng(0).random((32, 8), dtype="float32")
    >>> y = np.arange(32) % 3
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
        granularity=granularity,
        **method_options,
    )
    with warnings.catch_warnings():
        # masks_at_init has already named the layers N:M leaves dense.
        warnings.filterwarnings("ignore", message="N:M granularity", category=UserWarning)
        pruned = prune(
            model,
            None,
            scope="global" if scope == "global" else "layer",
            exclude=exclude,
            granularity=granularity,
        )
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
    granularity="weight",
    **method_options,
):
    """Prunes `model` at initialization with `method`, then trains it with the masks fixed.

    Args:
        model: a built Sequential or functional model that outputs logits (unchanged).
        data: a `kprune.data.Dataset` for training and evaluation.
        training: a `kprune.workflows.training.TrainConfig`.
        method, sparsity, scope, exclude, batches, granularity, **method_options: as
            `masks_at_init`.
        saliency_data: `(x, y)` arrays (or a dataset) to score with; None for SynFlow and
            random, which need no data.
        run_dir, callbacks, verbose: as `kprune.workflows.training.fit_and_evaluate`.

    Returns:
        `(stripped_model, results)`: the trained model without wrappers, and the results of
        `fit_and_evaluate` plus `method`, `scope`, `exclude`, `saliency_seconds` (time spent
        scoring), `sparsity` (`kprune.sparsity_report` of the pruned model) and, unless
        `"weight"`, `granularity`.

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
            granularity=granularity,
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
    if str(granularity) != "weight":  # results of weight pruning stay as they were
        results["granularity"] = str(granularity)
    return strip(pruned), results
