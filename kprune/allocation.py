"""Layer-wise budgets: how many weights each tensor keeps for a given overall sparsity.

`BUDGETS` names the per-tensor budgets of the gradual methods (`budget=` of `kprune.prune` and
`kprune.workflows.gradual.train_gradual`, `--budget` on the command line):

* "global": one magnitude threshold over all pruned tensors (`scope="global"`).
* "uniform": every tensor pruned to the same sparsity (`scope="layer"`).
* "erk": every tensor gets its own final sparsity from the ERK rule below, and its own copy of
  the schedule scaled to that target (`ScaledSparsity`, pruned with `scope="layer"`), so a
  linear schedule stays linear in every tensor and the counts at the end are exact.
* "sensitivity": the same, with targets chosen from measured sensitivity curves
  (`kprune.sensitivity`) by `sensitivity_prune_counts` below; pass the curves as
  `sensitivity=` (`kprune.prune(model, schedule, budget="sensitivity", sensitivity=curves)`).

Global and uniform budgets need no table (`kprune.masking.compute_masks` handles both);
this module holds the budgets that depend on the shapes:

* ERK (Erdos-Renyi-Kernel, from RigL): the density of a tensor is proportional to
  `(sum of its dimensions / product of its dimensions) ** power_scale`, scaled so the whole
  model keeps `(1 - s) * N` weights. Tensors whose density would exceed 1 are made dense and
  the scale is solved again for the others, until no tensor exceeds 1.

* Sensitivity: every tensor has a measured curve, loss increase against the number of its
  weights pruned (magnitude pruning of that tensor alone). Each curve is made convex (its
  lower convex hull through (0, 0) and the measured points; straight lines in between), and
  weights are pruned greedily, always from the tensor whose next weight costs the least loss
  on its convex curve. That is: all hull segments of all tensors sorted by slope (ties: first
  tensor, then first segment), taken whole until the next would exceed `round(s * N)`, which
  is taken in part. This minimizes the sum of the convexified loss increases, i.e. it assumes
  the increases of different tensors add up. No tensor goes beyond the highest sparsity that
  was measured.

Counts are exact: the kept counts add up to `N - round(s * N)` (the same rounding as every
other selection in kprune); for ERK, the fractional parts left by rounding each tensor down
go, one weight each, to the tensors with the largest fractions (ties: first tensor first).

Example:

>>> erk_keep_counts([(100, 10), (10, 10)], 0.5)
[465, 85]
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.validate import check_choice, check_number, check_sparsity
from kprune._internal.walk import weight_key
from kprune.layer_sensitivity import SensitivityCurves
from kprune.schedules import PruningSchedule
from kprune.targets import prunable_weights

__all__ = [
    "BUDGETS",
    "BUDGET_SCOPES",
    "ScaledSparsity",
    "erk_densities",
    "erk_keep_counts",
    "erk_prune_counts",
    "layer_budgets",
    "resolve_budget",
    "sensitivity_prune_counts",
]

BUDGETS = ("global", "uniform", "erk", "sensitivity")
# The `scope` each budget corresponds to ("erk" is also a scope of the at-init methods;
# "sensitivity" is a name of its own, never a `scope=` argument).
BUDGET_SCOPES = {"global": "global", "uniform": "layer", "erk": "erk", "sensitivity": "sensitivity"}


def _prune_count(sparsity, total):
    """`round(sparsity * total)` on the host, as `kprune.masking.prune_count` computes it."""
    return int(np.round(np.float64(sparsity) * np.float64(total)))


def _check_shapes(shapes):
    checked = []
    for shape in shapes:
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"`shapes` must be a list of tensor shapes with known sizes. Received: {shapes!r}"
            ) from None
        if not dims or any(d <= 0 for d in dims):
            raise ValueError(
                "Every shape in `shapes` must have at least one dimension and only positive "
                f"sizes. Received: {shape!r}"
            )
        checked.append(dims)
    if not checked:
        raise ValueError("`shapes` is empty: there is nothing to allocate a budget to.")
    return checked


def erk_densities(shapes, sparsity, power_scale=1.0):
    """ERK density (fraction kept) of every tensor, for an overall sparsity `sparsity`.

    Args:
        shapes: shapes of the pruned tensors, e.g. `[(3, 3, 16, 32), (512, 10)]`.
        sparsity: overall fraction of zeros over all the tensors, in [0, 1).
        power_scale: exponent on `sum(shape) / prod(shape)`; 1.0 is ERK, 0.0 is uniform.

    Returns:
        A list of floats in (0, 1], one per shape; `sum(d * n)` equals `(1 - sparsity) * N`.

    Example:

    >>> [round(d, 3) for d in erk_densities([(100, 10), (10, 10)], 0.2)]
    [0.78, 1.0]
    """
    shapes = _check_shapes(shapes)
    sparsity = check_sparsity("sparsity", sparsity)
    power_scale = float(check_number("power_scale", power_scale, 0))
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([(sum(s) / math.prod(s)) ** power_scale for s in shapes], dtype=np.float64)
    budget = (1.0 - sparsity) * sizes.sum()
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        free = ~dense
        if not free.any():
            break
        scale = (budget - sizes[dense].sum()) / (raw[free] * sizes[free]).sum()
        # Tensors that would need a density above 1 are kept whole; that leaves more of the
        # budget to the others, so the scale is solved again for them.
        too_dense = free & (scale * raw > 1.0)
        if not too_dense.any():
            break
        dense |= too_dense
    densities = np.where(dense, 1.0, scale * raw) if (~dense).any() else np.ones(len(shapes))
    return [float(min(d, 1.0)) for d in densities]


def erk_keep_counts(shapes, sparsity, power_scale=1.0):
    """Exact number of weights each tensor keeps under ERK; they add up to `N - round(s * N)`.

    Args:
        shapes, sparsity, power_scale: as in `erk_densities`.

    Returns:
        A list of ints, one per shape, each between 0 and the tensor's size.

    Example:

    >>> counts = erk_keep_counts([(3, 3, 3, 16), (3, 3, 16, 32), (512, 10)], 0.9)
    >>> sum(counts) == round(0.1 * (432 + 4608 + 5120))
    True
    """
    densities = erk_densities(shapes, sparsity, power_scale)
    sizes = [math.prod(int(d) for d in s) for s in shapes]
    total = sum(sizes)
    keep_total = total - _prune_count(sparsity, total)
    ideal = [d * n for d, n in zip(densities, sizes)]
    counts = [min(int(math.floor(x)), n) for x, n in zip(ideal, sizes)]
    missing = keep_total - sum(counts)
    # Largest remainders first; a stable sort keeps the first tensor first among equals.
    order = sorted(range(len(sizes)), key=lambda i: -(ideal[i] - math.floor(ideal[i])))
    while missing > 0:
        progressed = False
        for i in order:
            if missing == 0:
                break
            if counts[i] < sizes[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:  # pragma: no cover - impossible: keep_total <= total
            break
    while missing < 0:  # float error may overshoot by a weight; take it from the largest
        i = max(range(len(sizes)), key=lambda j: (counts[j], -j))
        counts[i] -= 1
        missing += 1
    return counts


def erk_prune_counts(shapes, sparsity, power_scale=1.0):
    """Number of weights each tensor loses under ERK (`size - erk_keep_counts(...)`).

    Example:

    >>> erk_prune_counts([(100, 10), (10, 10)], 0.2)
    [220, 0]
    """
    keep = erk_keep_counts(shapes, sparsity, power_scale)
    return [math.prod(int(d) for d in s) - k for s, k in zip(shapes, keep)]


def _lower_hull(points):
    """The lower convex hull of `(count, loss)` points sorted by count (first point kept)."""
    hull = []
    for point in points:
        # Drop the last hull point while it lies on or above the line from the one before it
        # to `point`: the hull's slopes then strictly increase.
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (y1 - y0) * (point[0] - x0) >= (point[1] - y0) * (x1 - x0):
                hull.pop()
            else:
                break
        hull.append(point)
    return hull


def sensitivity_prune_counts(sizes, curves, sparsity):
    """Weights each tensor loses when `round(sparsity * N)` are pruned on measured curves.

    Greedy on the convexified curves (see the module docstring): every tensor's points are
    `(0, 0)` and `(round(s_j * n), loss increase at s_j)`; their lower convex hull is cut into
    segments; all segments are taken in order of increasing slope (loss per weight; ties:
    first tensor, then first segment) until `round(sparsity * N)` weights are pruned, the last
    one in part. The counts add up to exactly `round(sparsity * N)`.

    Args:
        sizes: number of weights of every tensor.
        curves: one `(sparsities, loss_increases)` pair per tensor, sparsities increasing in
            (0, 1).
        sparsity: overall sparsity in [0, 1).

    Returns:
        A list of ints, one per tensor, between 0 and `round(max(sparsities) * n)`.

    Raises:
        ValueError: the measured sparsities cannot reach `sparsity` (measure higher ones).

    Example:

    >>> # The first tensor costs nothing up to 90%, the second a lot from the first weight.
    >>> sensitivity_prune_counts([100, 100], [((0.5, 0.9), (0.0, 0.0)),
    ...                                       ((0.5, 0.9), (1.0, 3.0))], 0.5)
    [90, 10]
    """
    sparsity = check_sparsity("sparsity", sparsity)
    if len(sizes) != len(curves) or not sizes:
        raise ValueError(
            f"`sizes` and `curves` need one entry per tensor. Received {len(sizes)} sizes and "
            f"{len(curves)} curves."
        )
    total = sum(int(n) for n in sizes)
    target = _prune_count(sparsity, total)
    segments, reach = [], 0
    for index, (size, (sparsities, increases)) in enumerate(zip(sizes, curves)):
        points = [(0, 0.0)]
        for s, increase in zip(sparsities, increases):
            count = _prune_count(s, size)
            if count > points[-1][0]:  # equal counts are the same mask: keep the first
                points.append((count, float(increase)))
        reach += points[-1][0]
        hull = _lower_hull(points)
        for j, ((x0, y0), (x1, y1)) in enumerate(zip(hull, hull[1:])):
            segments.append(((y1 - y0) / (x1 - x0), index, j, x1 - x0))
    if reach < target:
        highest = max(max(sparsities) for sparsities, _ in curves)
        raise ValueError(
            f"Sparsity {sparsity} prunes {target} of {total} weights, but the curves reach "
            f"only {reach} (no tensor is pruned beyond its highest measured sparsity, here at "
            f"most {highest}). Measure higher sparsities: kprune.sensitivity(..., "
            "sparsities=...)."
        )
    counts, left = [0] * len(sizes), target
    for _, index, _, length in sorted(segments):
        if left == 0:
            break
        take = min(length, left)
        counts[index] += take
        left -= take
    return counts


@keras.saving.register_keras_serializable(package="kprune")
class ScaledSparsity(PruningSchedule):
    """`schedule` scaled to another final sparsity: `s(t) = schedule(t) * final / s_f`.

    Updates on the same steps as `schedule`; with `final_sparsity` a tensor's own target (an
    ERK budget) every tensor follows the same shape (a linear ramp stays linear) and the
    totals over tensors follow `schedule`. The target is computed in float64, and at the end
    of the schedule it is `final_sparsity` exactly, so `round(final * n)` weights are pruned.

    Args:
        schedule: a `PruningSchedule` whose `final_sparsity` is > 0 (or a 0 `final_sparsity`).
        final_sparsity: the sparsity this copy ends at, in [0, 1).

    Example:

    >>> from kprune import LinearSparsity
    >>> scaled = ScaledSparsity(LinearSparsity(0.0, 0.8, 0, 100, frequency=10), 0.4)
    >>> [round(float(scaled(tf.constant(s, tf.int64))[1]), 3) for s in (0, 50, 100)]
    [0.0, 0.2, 0.4]
    """

    def __init__(self, schedule, final_sparsity):
        if not isinstance(schedule, PruningSchedule):
            raise TypeError(f"`schedule` must be a PruningSchedule. Received: {schedule!r}")
        self.schedule = schedule
        self.target = check_sparsity("final_sparsity", final_sparsity)
        if self.target > 0 and not schedule.final_sparsity > 0:
            raise ValueError(
                f"Cannot scale {schedule!r}, which ends at sparsity 0, to {self.target}."
            )
        self.allows_regrowth = schedule.allows_regrowth

    def __call__(self, step):
        should, sparsity = self.schedule(step)
        if self.target == 0:
            return should, tf.constant(0.0, tf.float64)
        # Divide by the end value as the schedule computes it (float32), so the ratio is
        # exactly 1.0 there and the last update prunes exactly round(target * n) weights.
        end = float(np.float32(self.schedule.final_sparsity))
        ratio = tf.cast(sparsity, tf.float64) / end
        return should, tf.clip_by_value(ratio * self.target, 0.0, self.target)

    @property
    def final_sparsity(self):
        return self.target

    @property
    def last_update_step(self):
        return self.schedule.last_update_step

    def __getattr__(self, name):
        # begin_step, end_step, frequency, ... of the schedule it scales.
        if name == "schedule":
            raise AttributeError(name)
        return getattr(self.schedule, name)

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "final_sparsity": self.target,
        }

    @classmethod
    def from_config(cls, config):
        schedule = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(schedule, config["final_sparsity"])

    def __eq__(self, other):
        return (
            type(other) is ScaledSparsity
            and self.schedule == other.schedule
            and self.target == other.target
        )

    def __hash__(self):
        return hash(("ScaledSparsity", self.schedule, self.target))

    def __repr__(self):
        return f"ScaledSparsity({self.schedule!r}, final_sparsity={self.target!r})"


def resolve_budget(budget=None, scope="global"):
    """The budget for `budget=` and `scope=` given together (`budget` wins; `scope` alone maps).

    Raises ValueError when they contradict: `scope` other than the default "global" must be
    the scope of `budget` ("layer" for "uniform", "erk" for "erk").

    Example:

    >>> resolve_budget(None, "layer"), resolve_budget("erk"), resolve_budget("uniform", "layer")
    ('uniform', 'erk', 'uniform')
    """
    scopes = {v: k for k, v in BUDGET_SCOPES.items() if k != "sensitivity"}
    check_choice("scope", scope, tuple(scopes))
    if budget is None:
        return scopes[scope]
    check_choice("budget", budget, BUDGETS)
    if scope != "global" and BUDGET_SCOPES[budget] != scope:
        raise ValueError(
            f"budget={budget!r} contradicts scope={scope!r} (budget {budget!r} is scope "
            f"{BUDGET_SCOPES[budget]!r}); give one of them."
        )
    return budget


def _no_curves_error():
    return ValueError(
        "budget='sensitivity' needs measured curves: call curves = kprune.sensitivity(model, "
        "held_out_data) first, then pass sensitivity=curves."
    )


def _sensitivity_counts(curves, names, shapes, sparsity):
    """`sensitivity_prune_counts` for the tensors `names`, read from `SensitivityCurves`."""
    if not isinstance(curves, SensitivityCurves):
        raise TypeError(
            "`sensitivity` must be the SensitivityCurves that kprune.sensitivity() returns "
            f"(or SensitivityCurves.from_json(...)). Received: {type(curves).__name__}"
        )
    missing = [name for name in names if name not in curves.tensors]
    if missing:
        raise ValueError(
            f"The sensitivity curves have no curve for {missing} (they have {curves.names}); "
            "measure the model you prune, with the same `exclude` or fewer."
        )
    for name, shape in zip(names, shapes):
        if list(curves.tensors[name]["shape"]) != [int(d) for d in shape]:
            raise ValueError(
                f"The sensitivity curve of {name!r} is for shape {curves.tensors[name]['shape']}, "
                f"but the tensor has shape {list(shape)}: the curves are of another model."
            )
    sizes = [math.prod(int(d) for d in shape) for shape in shapes]
    pairs = [(curves.sparsities, curves.loss_increase(name)) for name in names]
    return sensitivity_prune_counts(sizes, pairs, sparsity)


def layer_budgets(layers, schedule, budget, *, sensitivity=None, prefixes=None):
    """The `(schedule, scope)` of each layer to wrap, for a per-tensor budget.

    Args:
        layers: built prunable Keras layers, in model order (one pruned tensor each for "erk"
            and "sensitivity").
        schedule: the model-wide `PruningSchedule` (or None: fixed masks, no budget to apply).
        budget: one of `BUDGETS`.
        sensitivity: for "sensitivity", the `SensitivityCurves` of `kprune.sensitivity`.
        prefixes: names of the containers of each layer (as `kprune.masks.walk_model` gives
            them), to name its tensor as the curves do; default: none (top-level layers).

    Returns:
        A list of `(schedule, scope)` pairs, one per layer: the shared schedule with scope
        "global" or "layer", or (for "erk" and "sensitivity") a `ScaledSparsity` to the
        tensor's own target (`erk_prune_counts` or `sensitivity_prune_counts` at
        `schedule.final_sparsity`, as an exact fraction) with "layer".

    Raises:
        ValueError: "erk" or "sensitivity" for a layer with more than one pruned tensor (e.g.
            SeparableConv2D), whose tensors would need different targets within one wrapper;
            "sensitivity" without curves, or with curves of another model.

    Example:

    >>> from kprune import LinearSparsity
    >>> dense = keras.layers.Dense(10)
    >>> dense.build((None, 100))
    >>> [(round(s.final_sparsity, 3), scope)
    ...  for s, scope in layer_budgets([dense], LinearSparsity(0.0, 0.5, 0, 9), "erk")]
    [(0.5, 'layer')]
    """
    check_choice("budget", budget, BUDGETS)
    if budget == "sensitivity" and schedule is not None and sensitivity is None:
        raise _no_curves_error()
    if schedule is None or budget not in ("erk", "sensitivity"):
        scope = "layer" if budget in ("erk", "sensitivity") else BUDGET_SCOPES[budget]
        return [(schedule, scope)] * len(layers)
    prefixes = [()] * len(layers) if prefixes is None else list(prefixes)
    shapes, names = [], []
    for layer, prefix in zip(layers, prefixes):
        weights = prunable_weights(layer)
        if len(weights) != 1:
            raise ValueError(
                f"budget={budget!r} gives every pruned tensor its own target, but layer "
                f"'{layer.name}' has {len(weights)} pruned tensors in one wrapper. Keep it "
                "dense (exclude) or use budget='global' or 'uniform'."
            )
        shapes.append(tuple(weights[0].shape))
        names.append(weight_key(tuple(prefix), layer, weights[0]))
    if budget == "erk":
        counts = erk_prune_counts(shapes, schedule.final_sparsity)
    else:
        counts = _sensitivity_counts(sensitivity, names, shapes, schedule.final_sparsity)
    return [
        (ScaledSparsity(schedule, count / math.prod(shape)), "layer")
        for shape, count in zip(shapes, counts)
    ]
