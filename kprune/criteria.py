"""Pruning criteria: which active weights a gradual schedule removes at each mask update.

A schedule says *when* and *how far* to prune; a criterion says *which* weights go. Every
`PruningWrapper` has one (default `"magnitude"`); wrappers pruned together share it.

* `Magnitude()`: the smallest |w| among the active weights (or, for schedules that allow
  regrowth, among all weights).
* `FGGP(candidate_rate=0.5)`: fixed-rate gradient-first, magnitude-next gradual pruning. Among
  the active weights A, the `floor(candidate_rate * |A|)` with the smallest |gradient| become
  candidates C; the weights to remove are the smallest |w| inside C. The gradients are
  recorded by the wrappers inside the compiled train step (see `PruningWrapper`).

Criteria are small serializable objects; `get_criterion("fggp")` returns the default one.

Example:

>>> masks = fggp_masks(
...     [tf.constant([0.1, 0.2, 0.3, 0.4])],   # |w|
...     [tf.constant([4.0, 1.0, 2.0, 3.0])],   # |g|: candidates are positions 1 and 2
...     [tf.ones(4)], sparsity=0.25, scope="global")
>>> masks[0].numpy().tolist()
[1.0, 0.0, 1.0, 1.0]
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kprune import scores as scores_lib
from kprune._internal.validate import check_choice, check_integer, check_number
from kprune.masking import SCOPES, compute_masks, prune_count, prune_lowest
from kprune.schedules import ConfigObject, PolynomialDecay

__all__ = [
    "Criterion",
    "Magnitude",
    "FGGP",
    "CRITERIA",
    "get_criterion",
    "fggp_masks",
    "fggp_schedule",
]

_GRADIENT_MODES = ("batch", "accumulated")


class Criterion(ConfigObject):
    """Base class: turns weights (and recorded gradients) into new masks at a mask update.

    Subclasses implement `masks(...)` with TensorFlow ops only (it runs inside compiled train
    steps) and `get_config()`. Set `needs_gradients = True` to have every wrapper record the
    |gradient| of its pruned weights during training: each backward pass overwrites the record,
    or, with `accumulate_gradients = True`, adds to it, and the record is zeroed after each mask
    update (a running sum since the last update).

    Example:

    >>> class Smallest(Criterion):
    ...     def masks(self, weights, old_masks, gradients, sparsity, scope, monotone):
    ...         return compute_masks([tf.abs(w) for w in weights], old_masks, sparsity, scope)
    ...     def get_config(self):
    ...         return {}
    """

    needs_gradients = False
    accumulate_gradients = False
    supports_regrowth = True

    def masks(self, weights, old_masks, gradients, sparsity, scope, monotone):
        """New float 0/1 masks for `weights` at target `sparsity` (graph-safe)."""
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="kprune")
class Magnitude(Criterion):
    """Remove the smallest |w|: gradual magnitude pruning (the default criterion).

    Example:

    >>> Magnitude().masks([tf.constant([3.0, -1.0])], [tf.ones(2)], None, 0.5, "layer", True)[
    ...     0].numpy().tolist()
    [1.0, 0.0]
    """

    def masks(self, weights, old_masks, gradients, sparsity, scope, monotone):
        return compute_masks(
            scores_lib.magnitude(weights), old_masks, sparsity, scope=scope, monotone=monotone
        )

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="kprune")
class FGGP(Criterion):
    """Fixed-rate gradient-first, magnitude-next selection (FGGP).

    At each mask update, for the target sparsity `s` of the schedule:
    `n_rm = round(s * N) - (number already pruned)`; among the active weights A, the
    `floor(candidate_rate * |A|)` with the smallest recorded |g| form the candidates C; the
    `n_rm` smallest |w| in C are pruned. If `n_rm > |C|` (a schedule that asks for more than
    `candidate_rate` of the active weights in one update), all of C is pruned and the rest are
    the smallest |w| among the other active weights, so the target is always met exactly.
    Pruning is monotone; FGGP cannot be used with schedules that allow regrowth.

    The gradient is recorded in the compiled train step, after the backward pass of every
    step, by the wrappers (no eager work); under `tf.distribute` it is the all-reduced
    gradient, identical on every replica. A mask update at step t uses the gradient of step
    t-1 and the weights after step t-1's optimizer update, i.e. "g before the optimizer step,
    |w| after it". Until a first gradient has been recorded (an update at the very first step),
    candidates are ranked by |w| instead.

    Use it with a cubic density schedule as published:
    `kprune.PolynomialDecay(s_i, s_f, 0, int(0.8 * total_steps), power=3, frequency=2000)`
    (see `fggp_schedule`), global scope, and the first convolution left dense
    (`kprune.prune(..., exclude=[first_conv_name])`). Differences from the authors' code:
    the count is `round(s * N)` like every kprune selection (the code floors; at most one
    weight apart), and the schedule also updates at its last step, so `s_f` is met exactly.
    With a loss-scaling optimizer (mixed precision) the recorded gradients carry the loss
    scale: harmless for `"batch"` (one scale per update), but `"accumulated"` sums steps with
    different scales.

    Args:
        candidate_rate: fraction of the active weights that become candidates, in (0, 1]
            (0.5 as published).
        gradient: `"batch"` (the |gradient| of the last mini-batch, as published) or
            `"accumulated"` (the sum of |gradient| over all steps since the previous mask
            update).

    Example:

    >>> import kprune
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> schedule = kprune.PolynomialDecay(0.0, 0.9, 0, 8000, power=3, frequency=2000)
    >>> pruned = kprune.prune(model, schedule, scope="global", criterion=FGGP())
    >>> kprune.api.pruning_wrappers(pruned)[0].criterion
    FGGP(candidate_rate=0.5, gradient='batch')
    """

    needs_gradients = True
    supports_regrowth = False

    def __init__(self, candidate_rate=0.5, gradient="batch"):
        self.candidate_rate = float(
            check_number("candidate_rate", candidate_rate, 0, 1, low_open=True)
        )
        self.gradient = check_choice("gradient", gradient, _GRADIENT_MODES)

    @property
    def accumulate_gradients(self):
        return self.gradient == "accumulated"

    def masks(self, weights, old_masks, gradients, sparsity, scope, monotone):
        return fggp_masks(
            scores_lib.magnitude(weights),
            [tf.abs(tf.cast(g, tf.float32)) for g in gradients],
            old_masks,
            sparsity,
            scope=scope,
            candidate_rate=self.candidate_rate,
        )

    def get_config(self):
        return {"candidate_rate": self.candidate_rate, "gradient": self.gradient}


CRITERIA = {"magnitude": Magnitude, "fggp": FGGP}


def get_criterion(identifier):
    """A `Criterion` from a name (`"magnitude"`, `"fggp"`), a config dict or an instance.

    Example:

    >>> get_criterion("fggp")
    FGGP(candidate_rate=0.5, gradient='batch')
    """
    if identifier is None:
        return Magnitude()
    if isinstance(identifier, Criterion):
        return identifier
    if isinstance(identifier, str):
        if identifier not in CRITERIA:
            raise ValueError(
                f"Unknown pruning criterion {identifier!r}. Valid names: {sorted(CRITERIA)}, "
                "or a kprune.criteria.Criterion instance."
            )
        return CRITERIA[identifier]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise ValueError(
        f"`criterion` must be one of {sorted(CRITERIA)} or a kprune.criteria.Criterion. "
        f"Received: criterion={identifier!r}"
    )


def fggp_schedule(
    total_steps, final_sparsity, initial_sparsity=0.0, frequency=2000, end_fraction=0.8
):
    """The published FGGP schedule: cubic in density, updates every `frequency` steps.

    `d_t = d_f + (d_i - d_f) * (1 - t / (end_fraction * T)) ** 3` in density is exactly
    `PolynomialDecay(1 - d_i, 1 - d_f, 0, end_fraction * T, power=3)` in sparsity. Like every
    kprune schedule it also updates at its last step, so the final sparsity is met even when
    `end_fraction * T` is not a multiple of `frequency`.

    Args:
        total_steps: training steps T.
        final_sparsity: target sparsity `1 - d_f`, in [0, 1).
        initial_sparsity: `1 - d_i` (0 for a dense start, 0.5 for a 50%-sparse start).
        frequency: steps between mask updates (2000 as published).
        end_fraction: fraction of training during which pruning happens (0.8 as published).

    Returns:
        A `kprune.PolynomialDecay`.

    Example:

    >>> fggp_schedule(100_000, 0.9).end_step
    80000
    """
    end_fraction = float(check_number("end_fraction", end_fraction, 0, 1, low_open=True))
    total_steps = check_integer("total_steps", total_steps, 1)
    end_step = int(end_fraction * total_steps)
    if end_step < 1:
        raise ValueError(
            "`end_fraction * total_steps` must be at least 1 step. Received: "
            f"total_steps={total_steps!r}, end_fraction={end_fraction!r}"
        )
    return PolynomialDecay(
        initial_sparsity,
        final_sparsity,
        begin_step=0,
        end_step=end_step,
        power=3,
        frequency=frequency,
    )


def _count(bools):
    return tf.add_n([tf.reduce_sum(tf.cast(b, tf.int64)) for b in bools])


def fggp_masks(magnitudes, gradients, old_masks, sparsity, scope="global", candidate_rate=0.5):
    """FGGP selection on plain tensors: gradient-first candidates, then magnitude.

    Args:
        magnitudes: list of |w| tensors.
        gradients: list of |g| tensors (same shapes), the gradient record of each weight.
        old_masks: current masks (nonzero = active); pruned weights stay pruned.
        sparsity: target fraction of zeros (scalar), in [0, 1).
        scope: `"global"` (one candidate set and one selection over all tensors, as published)
            or `"layer"` (the same rule applied to each tensor on its own).
        candidate_rate: fraction of the active weights that become candidates.

    Returns:
        A list of float32 0/1 masks with exactly `round(sparsity * N)` zeros per group (or the
        number already pruned, if larger).

    Example:

    >>> fggp_masks([tf.constant([1.0, 2.0, 3.0, 4.0])], [tf.constant([0.0, 0.0, 9.0, 9.0])],
    ...            [tf.ones(4)], 0.5)[0].numpy().tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    check_choice("scope", scope, SCOPES)
    magnitudes = [tf.cast(m, tf.float32) for m in magnitudes]
    gradients = [tf.cast(g, tf.float32) for g in gradients]
    active = [tf.not_equal(m, 0) for m in old_masks]
    groups = [list(range(len(magnitudes)))]
    if scope == "layer":
        groups = [[i] for i in range(len(magnitudes))]
    inf = tf.constant(float("inf"), tf.float32)
    new_masks = [None] * len(magnitudes)
    for group in groups:
        act = [active[i] for i in group]
        mag = [magnitudes[i] for i in group]
        grad = [gradients[i] for i in group]
        total = sum(int(m.shape.num_elements()) for m in mag)
        n_active = _count(act)
        n_remove = tf.maximum(prune_count(sparsity, total) - (total - n_active), 0)
        n_candidates = tf.cast(tf.floor(tf.cast(n_active, tf.float64) * candidate_rate), tf.int64)
        # Before any gradient was recorded every |g| is 0 and candidates would be picked by
        # position; rank them by |w| then.
        seen = tf.reduce_any([tf.reduce_any(tf.logical_and(a, g != 0)) for a, g in zip(act, grad)])
        rank = [tf.where(seen, g, m) for g, m in zip(grad, mag)]
        candidates = prune_lowest([tf.where(a, r, inf) for a, r in zip(act, rank)], n_candidates)
        first = tf.minimum(n_remove, n_candidates)
        from_candidates = prune_lowest(
            [tf.where(c, m, inf) for c, m in zip(candidates, mag)], first
        )
        rest = [tf.logical_and(a, tf.logical_not(c)) for a, c in zip(act, candidates)]
        from_rest = prune_lowest([tf.where(r, m, inf) for r, m in zip(rest, mag)], n_remove - first)
        for i, a, p1, p2 in zip(group, act, from_candidates, from_rest):
            keep = tf.logical_and(a, tf.logical_not(tf.logical_or(p1, p2)))
            new_masks[i] = tf.cast(keep, tf.float32)
    return new_masks
