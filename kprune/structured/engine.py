"""Channel-granularity training: whole channel classes masked, updated in the train step.

`prune(model, schedule, granularity="channel")` wraps every layer that owns a slice of a
prunable channel class (`kprune.structured.graph`) in a `PruningWrapper` that masks its channel
weights (kernel and bias; BatchNorm gamma and beta; depthwise and pointwise kernels). At the
schedule's updates one `ChannelPruningGroup` scores every class, removes the lowest-scoring
ones and writes masks that zero the whole class everywhere: the producer's output slice, the
per-channel layers after it and every consumer's input slice. The masked model then computes
exactly what the smaller model of `kprune.shrink()` computes.

Importance of a class (`CHANNEL_CRITERIA`), summed over all its members:

* "l1" (the default): sum of |w| of every kernel slice of the class (Li et al. 2017, for the
  whole coupled group);
* "l2": the square root of the sum of w**2 over the same slices;
* "bn_gamma": sum of |gamma| of the BatchNormalization layers on the class (network
  slimming); classes without BatchNorm fall back to "l1";
* "taylor": first-order Taylor |sum(w * g)| over every weight of the class, with g the
  gradient summed since the previous update (recorded in the train step);
* "random": uniform random scores, a new draw at every update (seeded by the step).

Selection (monotone: a removed class never returns):

* scope "layer" (the default at channel granularity): every group (one layer's channels, or
  a residual stage) loses `round(s * size)` of its classes;
* scope "global": one ranking over all classes, each class's score divided by the mean score
  of the active classes of its group (so layers of different scales compare).

Every producing layer keeps at least its best channel, so no tensor becomes empty.

Example:

>>> import keras
>>> from kprune import ConstantSparsity, prune
>>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="h"),
...                           keras.layers.Dense(2, name="out")])
>>> pruned = prune(model, ConstantSparsity(0.5), granularity="channel")
>>> [type(layer).__name__ for layer in pruned.layers]
['PruningWrapper', 'PruningWrapper']
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.validate import check_choice
from kprune.criteria import Criterion
from kprune.masking import prune_count, prune_lowest
from kprune.pruning_group import PruningGroup
from kprune.schedules import PruningSchedule
from kprune.structured.graph import trace_channels

__all__ = [
    "CHANNEL_CRITERIA",
    "CHANNEL_TARGETS",
    "ChannelImportance",
    "ChannelPruningGroup",
    "MacsTargetSchedule",
    "channel_weight_names",
    "macs_of",
]

CHANNEL_CRITERIA = ("l1", "l2", "bn_gamma", "taylor", "random")
CHANNEL_TARGETS = ("channels", "macs")
_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
_TRAINABLE = ("kernel", "bias", "depthwise_kernel", "pointwise_kernel", "gamma", "beta")


@keras.saving.register_keras_serializable(package="kprune")
class ChannelImportance(Criterion):
    """The importance criterion of channel-granularity pruning (see the module docstring).

    Used through a `ChannelPruningGroup`, which ranks whole channel classes; it has no
    per-tensor `masks()`.

    Example:

    >>> ChannelImportance("taylor").needs_gradients, ChannelImportance("l1").needs_gradients
    (True, False)
    """

    supports_regrowth = False

    def __init__(self, name="l1"):
        if name == "magnitude":
            name = "l1"
        self.name = check_choice("criterion", name, CHANNEL_CRITERIA)

    @property
    def needs_gradients(self):
        return self.name == "taylor"

    @property
    def accumulate_gradients(self):
        return self.name == "taylor"

    # Taylor needs the sign of the gradient: sum(w * g) over a channel.
    @property
    def signed_gradients(self):
        return self.name == "taylor"

    def masks(self, weights, old_masks, gradients, sparsity, scope, monotone):
        raise TypeError(
            "ChannelImportance ranks channel classes across layers; it is applied by a "
            "ChannelPruningGroup (kprune.prune(..., granularity='channel')), not per tensor."
        )

    def get_config(self):
        return {"name": self.name}


def channel_weight_names(trace, layer):
    """The trainable weights of `layer` with a slice of some prunable class, by name."""
    return [
        w
        for w in trace.weights_of(layer)
        if w in _TRAINABLE and any((idx >= 0).any() for _, idx in trace.axis_maps(layer, w))
    ]


# -- MACs ---------------------------------------------------------------------------------------
def _layer_macs(layer, spatial, kept):
    """Multiply-accumulates of one traced layer for one example, given kept channel counts.

    `kept(weight, axis)` is the number of slices kept along `axis` of `weight`.
    """
    kernel = getattr(layer, "kernel", None)
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        k = math.prod(layer.depthwise_kernel.shape[:-2])
        mult = int(layer.depth_multiplier)
        cin = kept("depthwise_kernel", -2)
        return spatial * (k * cin * mult + cin * mult * kept("pointwise_kernel", -1))
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        k = math.prod(kernel.shape[:-2])
        return spatial * k * kept("kernel", -2) * int(layer.depth_multiplier)
    if isinstance(layer, keras.layers.Dense):
        return spatial * kept("kernel", 0) * kept("kernel", 1)
    if kernel is not None and len(kernel.shape) >= 3:  # Conv / ConvTranspose
        k = math.prod(kernel.shape[:-2])
        return spatial * k * kept("kernel", -2) * kept("kernel", -1)
    return 0


def macs_of(trace, class_keep=None):
    """MACs per example of the traced layers, with classes removed where `class_keep` is 0.

    `class_keep` may hold fractions (expected kept share of each class), which makes the
    count a smooth function of per-group pruning fractions. Layers outside the trace
    (pooling, elementwise) count 0.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4),
    ...                           keras.layers.Dense(2)])
    >>> trace = trace_channels(model)
    >>> macs_of(trace), macs_of(trace, np.array([1, 1, 0, 0]))
    (32, 16)
    """
    keep = np.ones(trace.num_classes + 1) if class_keep is None else np.append(class_keep, 1.0)
    total = 0.0
    for layer in trace.traced_layers():
        maps = {w: dict(trace.axis_maps(layer, w)) for w in trace.weights_of(layer)}

        def kept(weight, axis, maps=maps, layer=layer):
            variable = getattr(layer, weight)
            rank = len(variable.shape)
            for a, idx in maps.get(weight, {}).items():
                if a % rank == axis % rank:
                    return float(keep[idx].sum())
            return float(variable.shape[axis])

        total += _layer_macs(layer, trace.spatial.get(id(layer), 1), kept)
    return int(round(total))


def _uniform_keep(trace, fraction):
    """Expected kept share of every class when each group loses `fraction` of its classes."""
    keep = np.ones(trace.num_classes)
    for group in trace.groups:
        removed = min(int(np.round(fraction * group.size)), group.size - 1)
        keep[group.classes] = 1.0 - removed / group.size
    return keep


@keras.saving.register_keras_serializable(package="kprune")
class MacsTargetSchedule(PruningSchedule):
    """A schedule read as the fraction of MACs removed, turned into a channel fraction.

    `schedule(t)` gives the MACs fraction to remove; a table measured on the model (MACs
    removed when every group loses a fraction f of its channels, for f on a grid) maps it to
    the per-group channel fraction, by linear interpolation, inside the train step.

    Args:
        schedule: the `PruningSchedule` in MACs fractions.
        macs_removed: increasing MACs fractions of the table (first 0).
        channels_removed: the channel fraction for each entry of `macs_removed`.

    Example:

    >>> from kprune import ConstantSparsity
    >>> s = MacsTargetSchedule(ConstantSparsity(0.75), [0.0, 0.75, 1.0], [0.0, 0.5, 1.0])
    >>> round(float(s(tf.constant(0, tf.int64))[1]), 3)
    0.5
    """

    def __init__(self, schedule, macs_removed, channels_removed):
        if not isinstance(schedule, PruningSchedule):
            raise TypeError(f"`schedule` must be a PruningSchedule. Received: {schedule!r}")
        self.schedule = schedule
        self.macs_removed = [float(x) for x in macs_removed]
        self.channels_removed = [float(x) for x in channels_removed]
        self.allows_regrowth = False

    def __call__(self, step):
        should, target = self.schedule(step)
        x = tf.constant(self.macs_removed, tf.float64)
        y = tf.constant(self.channels_removed, tf.float64)
        t = tf.clip_by_value(tf.cast(target, tf.float64), x[0], x[-1])
        i = tf.clip_by_value(
            tf.searchsorted(x, tf.reshape(t, [1]))[0], 1, len(self.macs_removed) - 1
        )
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        share = tf.where(x1 > x0, (t - x0) / tf.maximum(x1 - x0, 1e-12), 0.0)
        return should, y0 + share * (y1 - y0)

    @property
    def final_sparsity(self):
        return float(
            np.interp(self.schedule.final_sparsity, self.macs_removed, self.channels_removed)
        )

    @property
    def last_update_step(self):
        return self.schedule.last_update_step

    def __getattr__(self, name):
        if name == "schedule":
            raise AttributeError(name)
        return getattr(self.schedule, name)

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "macs_removed": self.macs_removed,
            "channels_removed": self.channels_removed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

    def __eq__(self, other):
        return type(other) is MacsTargetSchedule and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(("MacsTargetSchedule", self.schedule, tuple(self.macs_removed)))

    def __repr__(self):
        return f"MacsTargetSchedule({self.schedule!r}, final channels {self.final_sparsity:.3f})"


def macs_schedule(trace, schedule, points=101):
    """`schedule` in MACs fractions as a `MacsTargetSchedule` for the traced model.

    Raises ValueError when the schedule asks for more MACs than channel pruning of the traced
    groups can remove (the rest of the model is dense).
    """
    dense = macs_of(trace)
    fractions = np.linspace(0.0, 1.0, points)
    removed = [1.0 - macs_of(trace, _uniform_keep(trace, f)) / dense for f in fractions]
    removed = np.maximum.accumulate(np.asarray(removed))
    if schedule.final_sparsity > removed[-1] + 1e-9:
        raise ValueError(
            f"A MACs target of {schedule.final_sparsity} cannot be reached: removing channels "
            f"from every traceable group removes at most {removed[-1]:.3f} of the MACs "
            "(untraceable layers and the first and last layers stay dense)."
        )
    # Keep the table strictly increasing in MACs for the interpolation.
    xs, ys = [0.0], [0.0]
    for x, y in zip(removed[1:], fractions[1:]):
        if x > xs[-1]:
            xs.append(float(x))
            ys.append(float(y))
    return MacsTargetSchedule(schedule, xs, ys)


# -- the group --------------------------------------------------------------------------------
class ChannelPruningGroup(PruningGroup):
    """The channel-granularity wrappers of one model, pruned together by channel class.

    Made by `kprune.bind_optimizer` from a trace of the model. It reuses `PruningGroup`'s
    update (schedule, `tf.cond`, cross-replica writes of masks, weights and slots) and
    replaces the selection: class scores, per-group or normalized global ranking, and masks
    broadcast from a per-class keep vector.
    """

    def __init__(self, wrappers, schedule, scope, step, slots, trace):
        super().__init__(wrappers, schedule, scope, step, slots)
        self.trace = trace
        k = trace.num_classes
        self.num_classes = k
        # For each pruned variable (in the order of update()): [(axis, class ids)] with -1
        # mapped to k, the "always kept" slot.
        self.maps = []
        self.kinds = []
        for wrapper in self.wrappers:
            names = wrapper.channel_weights
            for name in names:
                maps = [
                    (axis, np.where(idx < 0, k, idx).astype(np.int32))
                    for axis, idx in trace.axis_maps(wrapper.layer, name)
                ]
                self.maps.append(maps)
                self.kinds.append(name)
        groups = trace.groups
        self.group_classes = [g.classes.astype(np.int32) for g in groups]
        self.producer_classes = [
            ids[ids >= 0].astype(np.int32) for ids in trace.producers.values() if (ids >= 0).any()
        ]

    # Class-level quantities -------------------------------------------------------------------
    def _segment(self, values, reduce_fn, op):
        """Per-class `op` (sum or max) of `reduce_fn(value)` reduced to each mapped axis."""
        k = self.num_classes
        total = tf.zeros([k + 1], tf.float32)
        for value, maps in zip(values, self.maps):
            if value is None:
                continue
            value = tf.cast(value, tf.float32)
            rank = len(value.shape)
            for axis, idx in maps:
                axis = axis % rank
                others = [a for a in range(rank) if a != axis]
                per_slice = reduce_fn(value, others)
                part = op(per_slice, tf.constant(idx), num_segments=k + 1)
                total = (
                    tf.maximum(total, part) if op is tf.math.unsorted_segment_max else total + part
                )
        return total

    def _scores(self, values, gradients):
        name = self.criterion.name
        kernels = [v if kind in _KERNELS else None for v, kind in zip(values, self.kinds)]

        def l1(x, axes):
            return tf.reduce_sum(tf.abs(x), axis=axes)

        def l2(x, axes):
            return tf.reduce_sum(tf.square(x), axis=axes)

        if name == "l1":
            return self._segment(kernels, l1, tf.math.unsorted_segment_sum)
        if name == "l2":
            return tf.sqrt(self._segment(kernels, l2, tf.math.unsorted_segment_sum))
        if name == "bn_gamma":
            gammas = [v if kind == "gamma" else None for v, kind in zip(values, self.kinds)]
            gamma = self._segment(gammas, l1, tf.math.unsorted_segment_sum)
            has_bn = self._segment(
                [tf.ones_like(v) if v is not None else None for v in gammas],
                l1,
                tf.math.unsorted_segment_sum,
            )
            return tf.where(
                has_bn > 0, gamma, self._segment(kernels, l1, tf.math.unsorted_segment_sum)
            )
        if name == "taylor":
            products = [
                tf.cast(v, tf.float32) * tf.cast(g, tf.float32) for v, g in zip(values, gradients)
            ]

            def signed_sum(x, axes):
                return tf.reduce_sum(x, axis=axes)

            return tf.abs(self._segment(products, signed_sum, tf.math.unsorted_segment_sum))
        seed = tf.stack([tf.cast(self.step, tf.int64), tf.constant(7, tf.int64)])
        return tf.random.stateless_uniform([self.num_classes + 1], seed=seed)

    def _alive(self, masks):
        def any_nonzero(x, axes):
            return tf.reduce_max(tf.cast(tf.not_equal(x, 0), tf.float32), axis=axes)

        return (
            self._segment(masks, any_nonzero, tf.math.unsorted_segment_max)[: self.num_classes] > 0
        )

    def _new_masks(self, values, masks, records, target):
        k = self.num_classes
        scores = self._scores(values, records)[:k]
        alive = self._alive(masks)
        inf = tf.constant(float("inf"), tf.float32)
        # Monotone: removed classes rank below every active one and stay removed.
        ranked = tf.where(alive, scores, -inf)
        if self.scope == "global":
            ranked = self._normalized(ranked, alive)
        # Every producer keeps its best active class.
        protected = tf.zeros([k], tf.bool)
        for ids in self.producer_classes:
            best = tf.gather(ids, tf.argmax(tf.gather(ranked, ids), output_type=tf.int32))
            protected = tf.logical_or(protected, tf.equal(tf.range(k), best))
        ranked = tf.where(protected, inf, ranked)
        prunable = tf.logical_not(protected)
        if self.scope == "global":
            selections = [(np.arange(k, dtype=np.int32), k)]
        else:
            selections = [(ids, len(ids)) for ids in self.group_classes]
        remove = tf.zeros([k], tf.bool)
        for ids, size in selections:
            ids_t = tf.constant(ids)
            n_dead = tf.reduce_sum(tf.cast(tf.logical_not(tf.gather(alive, ids_t)), tf.int64))
            n_free = tf.reduce_sum(tf.cast(tf.gather(prunable, ids_t), tf.int64))
            count = tf.minimum(tf.maximum(prune_count(target, size), n_dead), n_free)
            (chosen,) = prune_lowest([tf.gather(ranked, ids_t)], count)
            remove = tf.tensor_scatter_nd_update(
                remove, tf.reshape(ids_t, [-1, 1]), tf.logical_or(tf.gather(remove, ids_t), chosen)
            )
        keep = tf.concat([tf.cast(tf.logical_not(remove), tf.float32), tf.ones([1])], 0)
        new = []
        for value, maps in zip(values, self.maps):
            rank = len(value.shape)
            mask = tf.ones(value.shape, tf.float32)
            for axis, idx in maps:
                axis = axis % rank
                shape = [1] * rank
                shape[axis] = -1
                mask = mask * tf.reshape(tf.gather(keep, tf.constant(idx)), shape)
            new.append(mask)
        return new

    def _normalized(self, ranked, alive):
        """Scores divided by the mean active score of their group (global ranking)."""
        k = self.num_classes
        group_of = tf.constant(self.trace.class_group.astype(np.int32))
        n = len(self.group_classes)
        live = tf.cast(alive, tf.float32)
        sums = tf.math.unsorted_segment_sum(tf.where(alive, ranked, 0.0), group_of, n)
        counts = tf.math.unsorted_segment_sum(live, group_of, n)
        mean = tf.gather(sums / tf.maximum(counts, 1.0), group_of)
        del k
        return tf.where(alive, ranked / tf.maximum(mean, 1e-30), ranked)


def trace_for(model):
    """The channel trace of a (pruned) model, for the engine and shrink()."""
    return trace_channels(model)


def _check_schedule(schedule):
    if schedule is not None and schedule.allows_regrowth:
        raise ValueError(
            "Channel pruning is monotone (removed channels never return); "
            f"{schedule!r} lets pruned weights regrow. Use LinearSparsity, PolynomialDecay or "
            "ConstantSparsity."
        )


def keep_counts(trace, keep):
    """Number of channels each producing layer keeps under a class keep vector."""
    keep = np.append(np.asarray(keep, bool), True)
    return {
        name: int(keep[np.where(ids < 0, len(keep) - 1, ids)].sum())
        for name, ids in trace.producers.items()
    }
