"""`PruningGroup`: wrappers pruned together, and the masked reads and writes they share.

A group holds the `PruningWrapper`s that share one schedule, scope and criterion (made by
`kprune.bind_optimizer`). At the steps its schedule names it recomputes all their masks in one
`tf.cond` branch and multiplies weights and optimizer slots by the new masks; under
`tf.distribute` it does so once, in cross-replica context, for every replica's copy.

Example:

>>> import keras
>>> mask = keras.Variable([1.0, 0.0], trainable=False)
>>> apply_mask(exact_value(keras.Variable([3.0, float("nan")])), exact_value(mask)).numpy()
array([3., 0.], dtype=float32)
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops

from kprune._internal.compat import maybe_merge_call, no_autocast
from kprune.masking import compute_masks
from kprune.scores import magnitude

__all__ = ["NMPruningGroup", "PruningGroup", "apply_mask", "exact_value"]


def exact_value(variable):
    """The variable's value in its own dtype, also inside a mixed-precision layer call.

    `variable.value` is autocast to the compute dtype (e.g. float16) inside `call()`; masks and
    weight updates must be computed on the stored float32 values.
    """
    with no_autocast():
        return variable.value


def apply_mask(value, mask):
    """`value` where `mask` is non-zero, exactly 0 elsewhere (also where `value` is NaN or inf).

    A product `value * mask` would leave NaN in pruned positions of a diverged run; pruned
    weights must stay exactly zero whatever happens to the rest. `multiply_no_nan` does that
    in one op (it runs after every optimizer update, so its cost counts).
    """
    return tf.math.multiply_no_nan(value, tf.cast(mask, value.dtype))


class PruningGroup:
    """Wrappers pruned together: one schedule, one step counter, one selection per update.

    Made by `kprune.bind_optimizer()`. The first wrapper of the group (in the model's layer
    order) is the leader: its `call()` runs the update for the whole group, so a global
    threshold is computed once per update. A wrapper called before the leader in the same step
    runs that step's forward pass with its previous mask; the post-update constraint still
    leaves every pruned weight at exactly zero.

    Args:
        wrappers: built `PruningWrapper`s sharing `schedule`, `scope` and `criterion`.
        schedule: their `PruningSchedule`.
        scope: `"layer"` or `"global"`.
        step: the optimizer's `iterations` variable.
        slots: for each wrapper, for each pruned variable, the optimizer variables shaped like
            it (momentum, Adam moments, ...), zeroed where a weight is pruned.

    Example:

    >>> # normally made for you: kprune.bind_optimizer(model, model.optimizer)
    """

    def __init__(self, wrappers, schedule, scope, step, slots):
        self.wrappers = list(wrappers)
        self.leader = self.wrappers[0]
        self.criterion = self.leader.criterion
        self.schedule = schedule
        self.scope = scope
        self.step = step
        self.slots = slots

    def maybe_update(self):
        """Runs the schedule at the current step and, if it says so, updates all masks.

        Under a `tf.distribute` strategy the update runs once in cross-replica context (through
        `merge_call`, as Keras' own optimizer updates do): tf.distribute cannot assign mirrored
        variables from replica context inside a `tf.cond`. The masks are then computed from the
        mirrored weights and written to every replica, so they are identical everywhere.
        """
        if not tf.distribute.has_strategy():
            return self._maybe_update(None)
        strategy = tf.distribute.get_strategy()
        if tf.distribute.in_cross_replica_context():
            return self._maybe_update(strategy)
        return maybe_merge_call(self._maybe_update, strategy)

    def _maybe_update(self, strategy):
        step = ops.convert_to_tensor(self.step)
        # Only `should_update` is needed on ordinary steps; the target is computed inside the
        # branch, so its ops run on update steps only (unused ops outside are pruned).
        should_update, _ = self.schedule(step)

        def update():
            _, target = self.schedule(step)
            return self.update(target, strategy)

        return tf.cond(should_update, update, lambda: tf.constant(False))

    def update(self, target, strategy=None):
        """Recomputes every mask of the group for sparsity `target` (graph or eager).

        With a `strategy` (cross-replica context), every replica's copy of the masks, weights,
        slots and gradient records is written through `strategy.extended.update`.
        """
        variables, masks, slots, records = [], [], [], []
        for wrapper, wrapper_slots in zip(self.wrappers, self.slots):
            variables.extend(wrapper.pruned_weights)
            masks.extend(wrapper.masks)
            slots.extend(wrapper_slots)
            records.extend(wrapper.gradient_records)
        values = [exact_value(v) for v in variables]
        new_masks = self._new_masks(
            values,
            [exact_value(m) for m in masks],
            [exact_value(r) for r in records] if self.criterion.needs_gradients else None,
            target,
        )
        for v, value, m, v_slots, new in zip(variables, values, masks, slots, new_masks):
            if strategy is None:
                # Dtypes come from the stored values: inside a mixed-precision call, `v.dtype`
                # reports the compute dtype (e.g. bfloat16) while the variable holds float32.
                m.assign(ops.cast(new, exact_value(m).dtype))
                v.assign(apply_mask(value, new))
                for s in v_slots:
                    s.assign(apply_mask(exact_value(s), new))
            else:
                _on_every_replica(strategy, m, _assign_mask, new)
                for x in (v, *v_slots):
                    _on_every_replica(strategy, x, _multiply_by_mask, new)
        if self.criterion.accumulate_gradients:
            # Running sums restart after every update.
            for r in records:
                zeros = ops.zeros_like(exact_value(r))
                if strategy is None:
                    r.assign(zeros)
                else:
                    _on_every_replica(strategy, r, _assign_mask, zeros)
        return tf.constant(True)

    def _new_masks(self, values, masks, records, target):
        """The group's new masks, one per pruned variable (subclasses change the selection)."""
        return self.criterion.masks(
            values,
            masks,
            records,
            target,
            scope=self.scope,
            monotone=not self.schedule.allows_regrowth,
        )


class NMPruningGroup(PruningGroup):
    """A `PruningGroup` of N:M-granularity wrappers: magnitude selection capped per group.

    The schedule's target is the sparsity of the whole group (per tensor or global, as its
    scope says); an update removes the smallest |w| but never more than M - N of any M
    consecutive weights along a kernel's input axis, and at `1 - N/M` exactly N of every M
    survive (`kprune.masking.compute_masks` with `nm=`).

    Example:

    >>> # made by kprune.bind_optimizer for wrappers with granularity="2:4"
    """

    def _new_masks(self, values, masks, records, target):
        granularity = self.leader.granularity
        specs = [
            (axis, granularity.n, granularity.m)
            for wrapper in self.wrappers
            for axis in wrapper.nm_axes
        ]
        return compute_masks(
            magnitude(values),
            masks,
            target,
            scope=self.scope,
            monotone=not self.schedule.allows_regrowth,
            nm=specs,
        )


def _assign_mask(variable, mask):
    return variable.assign(tf.cast(mask, variable.dtype))


def _multiply_by_mask(variable, mask):
    return variable.assign(apply_mask(variable, mask))


def _on_every_replica(strategy, variable, fn, mask):
    """`fn(copy, mask)` for every replica's copy of a Keras variable (cross-replica context)."""
    strategy.extended.update(exact_value(variable), fn, args=(mask,), group=False)
