"""`PruningWrapper`: a Keras layer wrapper that keeps a layer's prunable weights sparse.

How a wrapped layer behaves:

* `build()` creates one mask per prunable variable (non-trainable, initialised to ones, saved
  with the model) and installs a variable constraint, so every optimizer update is followed by
  `w <- w * mask` inside the compiled train step (Keras applies constraints after
  `apply_gradients`).
* `call()` runs the inner layer with `w * mask` in place of `w` (through `keras.StatelessScope`),
  so pruned weights are zero in every forward pass and receive zero gradient.
* In training, a `PruningGroup` (made by `kprune.bind_optimizer`, which `PruningCallback` calls
  at the start of `fit`) asks the schedule, at the step read from `optimizer.iterations`, whether
  to update. If so it recomputes the masks of all its wrappers in one `tf.cond` branch: scores,
  selection (per variable or one global threshold), then masks, weights and optimizer slots are
  multiplied by the new mask. No Python runs per step.
* Which weights an update removes is the wrapper's `criterion` (`kprune.criteria`): the
  smallest |w| by default. Criteria that rank by gradient (`"fggp"`) make the wrapper record
  |dL/dw| of its pruned weights during training, in non-trainable variables updated by the
  backward pass of the compiled train step (a `tf.custom_gradient` on the masked weight).

Example:

>>> import numpy as np
>>> from kprune import LinearSparsity
>>> layer = PruningWrapper(keras.layers.Dense(4), LinearSparsity(0.0, 0.5, 0, 100))
>>> y = layer(np.ones((2, 3), "float32"))
>>> [tuple(m.shape) for m in layer.masks]
[(3, 4)]
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from kprune._internal.compat import call_has_training_arg
from kprune._internal.validate import check_choice
from kprune._internal.walk import variable_path
from kprune.criteria import Magnitude, get_criterion
from kprune.granularity import NM_TOLERANCE, nm_axis, nm_problems, parse_granularity
from kprune.masking import SCOPES
from kprune.pruning_group import PruningGroup, apply_mask, exact_value
from kprune.schedules import PruningSchedule
from kprune.targets import check_supported, is_prunable, layer_variable, prunable_weights

# PruningGroup, apply_mask and exact_value live in kprune.pruning_group; importable from here.
__all__ = ["PruningWrapper", "PruningGroup", "MaskConstraint", "apply_mask", "exact_value"]


@keras.saving.register_keras_serializable(package="kprune")
class MaskConstraint(keras.constraints.Constraint):
    """Constraint `w -> inner(w) * mask`, re-applied by the optimizer after each update.

    It is installed on variables by `PruningWrapper.build()` and never serialized in a layer
    config (Keras layer configs hold their own `kernel_constraint`, not the variable's).

    Example:

    >>> mask = keras.Variable([1.0, 0.0], trainable=False)
    >>> MaskConstraint(mask)(ops.convert_to_tensor([3.0, 4.0])).numpy().tolist()
    [3.0, 0.0]
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return apply_mask(w, self.mask)


@keras.saving.register_keras_serializable(package="kprune")
class PruningWrapper(keras.layers.Wrapper):
    """Wraps a prunable Keras layer and masks its prunable weights.

    The wrapper takes the inner layer's name, so `model.get_layer(name)` keeps working after
    `kprune.prune()`; its variables live under `<name>/<name>/...`.

    Args:
        layer: a Keras layer that `kprune.targets.is_prunable` accepts (Dense, Conv*,
            DepthwiseConv*, SeparableConv*, EinsumDense, Embedding, or a layer with
            `get_prunable_weights()`).
        schedule: a `kprune.PruningSchedule`, or None for a fixed mask that training never
            updates (masks set by pruning at initialization or lottery-ticket rounds).
        scope: `"global"` (the default, as in `kprune.prune`: one threshold over all
            global-scope wrappers of the model, which must then share one schedule) or
            `"layer"` (each variable pruned to the target on its own).
        criterion: which weights a mask update removes: `"magnitude"` (default), `"fggp"`, or
            a `kprune.criteria.Criterion` such as `kprune.FGGP(candidate_rate=0.5)`.
        channel_weights: for channel-granularity pruning (`kprune.prune(...,
            granularity="channel")` sets it): the names of the layer's weights to mask (e.g.
            `["kernel", "bias"]`, `["gamma", "beta"]`), whose masks a
            `kprune.structured.engine.ChannelPruningGroup` writes by whole channels. Any
            layer with such weights can then be wrapped (BatchNormalization too).
        granularity: `"weight"` (the default) or `"N:M"` (e.g. `"2:4"`, see
            `kprune.granularity`): every group of M consecutive weights along a kernel's input
            axis keeps N. Needs Dense or Conv1D/2D/3D kernels whose input axis is a multiple
            of M (checked in `build()`), the magnitude criterion, and a schedule that ends at
            `1 - N/M` (or None, for masks set by `kprune.prune_at_init`).
        **kwargs: passed to `keras.layers.Wrapper` (e.g. `name`).

    Example:

    >>> from kprune import ConstantSparsity
    >>> conv = PruningWrapper(keras.layers.Conv2D(8, 3), ConstantSparsity(0.5))
    >>> conv.build((None, 16, 16, 3))
    >>> [m.name for m in conv.masks]
    ['kernel_mask']
    """

    # Read by kprune._internal.walk and kprune.targets, which cannot import this module.
    is_pruning_wrapper = True

    def __init__(
        self,
        layer,
        schedule=None,
        scope="global",
        criterion="magnitude",
        channel_weights=None,
        granularity="weight",
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "PruningWrapper wraps a Keras 3 layer (keras.layers.Layer). "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        if isinstance(layer, PruningWrapper):
            raise ValueError(
                f"Layer '{layer.name}' is already a PruningWrapper; wrapping it twice would "
                "apply two masks. Pass the inner layer (`wrapper.layer`) instead."
            )
        self.channel_weights = None if channel_weights is None else list(channel_weights)
        if self.channel_weights is not None and not self.channel_weights:
            raise ValueError(
                f"`channel_weights` of the wrapper of '{layer.name}' is empty; pass None for "
                "the layer's prunable kernels."
            )
        if self.channel_weights is None and not is_prunable(layer):
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} has no weights kprune "
                "knows how to prune. Supported: Dense, EinsumDense, Conv1D/2D/3D, "
                "Conv*Transpose, DepthwiseConv1D/2D, SeparableConv1D/2D, Embedding, RNN cells, "
                "any layer that defines get_prunable_weights(), and layers that own such "
                "layers (MultiHeadAttention, TimeDistributed, Bidirectional, LSTM, ...)."
            )
        check_supported(layer)
        if schedule is not None and not isinstance(schedule, PruningSchedule):
            raise TypeError(
                "`schedule` must be a kprune.PruningSchedule (e.g. kprune.LinearSparsity) or "
                f"None. Received: schedule={schedule!r}"
            )
        check_choice("scope", scope, SCOPES)
        criterion = get_criterion(criterion)
        if schedule is not None and schedule.allows_regrowth and not criterion.supports_regrowth:
            raise ValueError(
                f"criterion={criterion!r} prunes monotonically and cannot be combined with "
                f"a schedule that lets pruned weights regrow. Received: schedule={schedule!r}"
            )
        granularity = parse_granularity(granularity)
        if granularity.kind == "channel":
            raise ValueError(
                f"PruningWrapper takes granularity 'weight' or 'N:M'; channel pruning wraps "
                "every layer of a channel group, so use kprune.prune(model, schedule, "
                f"granularity='channel'). Received: granularity={str(granularity)!r} for "
                f"layer '{layer.name}'"
            )
        if granularity.is_nm:
            if channel_weights is not None:
                raise ValueError(
                    f"`channel_weights` is for channel granularity; the wrapper of "
                    f"'{layer.name}' was given granularity={str(granularity)!r} too. Give one "
                    "of them."
                )
            check_nm_arguments(granularity, schedule, criterion)
        kwargs.setdefault("name", layer.name)
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.schedule = schedule
        self.scope = scope
        self.criterion = criterion
        self.granularity = granularity
        # The input axis of every pruned weight, at N:M granularity (set in build()).
        self.nm_axes = None
        self.masks = []
        # |dL/dw| of the pruned weights, recorded in training for gradient-based criteria.
        self.gradient_records = []
        # Set by kprune.bind_optimizer(); a plain Python object, so Keras does not track it.
        self._group = None
        self.supports_masking = getattr(layer, "supports_masking", False)

    # -- state ------------------------------------------------------------------------------
    def build(self, input_shape=None):
        super().build(input_shape)
        check_supported(self.layer)
        weights = self.pruned_weights
        if not weights:
            raise ValueError(
                f"Layer '{self.layer.name}' returned no prunable weights after build; nothing "
                "to wrap."
            )
        # Nested variables (a MultiHeadAttention's query/kernel) are named by their path.
        names = ["_".join(variable_path(self.layer, w)) for w in weights]
        masks = []
        for w, name in zip(weights, names):
            mask = self.add_weight(
                name=f"{name}_mask",
                shape=tuple(w.shape),
                initializer="ones",
                dtype=w.dtype,
                trainable=False,
                # Masks are computed from mirrored weights and are identical on every replica;
                # taking the first replica's value avoids an all-reduce on every assignment.
                aggregation="only_first_replica",
            )
            previous = w.constraint
            if isinstance(previous, MaskConstraint):  # rebuilt: keep the user's constraint
                previous = previous.inner
            w.constraint = MaskConstraint(mask, previous)
            masks.append(mask)
        self.masks = masks
        if self.granularity.is_nm:
            m = self.granularity.m
            problems = nm_problems(self.layer, weights, m)
            if problems:
                raise ValueError(
                    f"Layer '{self.layer.name}' cannot hold a {self.granularity} pattern: "
                    f"{'; '.join(problems)}. N:M groups run along the input axis of Dense and "
                    f"Conv1D/2D/3D kernels, whose length must be a multiple of {m}; leave this "
                    "layer dense (kprune.prune(..., exclude=[name]) does that)."
                )
            self.nm_axes = [nm_axis(self.layer, w) for w in weights]
        if self.criterion.needs_gradients:
            self.gradient_records = [
                self.add_weight(
                    name=f"{name}_grad",
                    shape=tuple(w.shape),
                    initializer="zeros",
                    dtype=w.dtype,
                    trainable=False,
                    # The recorded gradient is all-reduced first, so replicas hold one value.
                    aggregation="only_first_replica",
                )
                for w, name in zip(weights, names)
            ]
        self.built = True

    @property
    def pruned_weights(self):
        """The inner layer's variables that this wrapper masks, in the order of `masks`."""
        if self.channel_weights is not None:
            return [layer_variable(self.layer, name) for name in self.channel_weights]
        return prunable_weights(self.layer)

    def apply_masks(self):
        """Multiplies the pruned weights by their masks in place (eager or graph)."""
        for w, m in zip(self.pruned_weights, self.masks):
            value = exact_value(w)
            w.assign(apply_mask(value, exact_value(m)))

    # -- forward ----------------------------------------------------------------------------
    def call(self, inputs, *args, training=None, **kwargs):
        if training is True and self.schedule is not None:
            if self._group is None:
                raise RuntimeError(
                    f"PruningWrapper '{self.name}' was called with training=True but no "
                    "optimizer is bound to it, so its pruning schedule cannot advance. Pass "
                    "kprune.PruningCallback() to model.fit(callbacks=[...]), or call "
                    "kprune.bind_optimizer(model, optimizer) once before a custom training loop."
                )
            if self._group.leader is self:
                self._group.maybe_update()
        if call_has_training_arg(self.layer):
            kwargs["training"] = training
        weights = self.pruned_weights
        pruned = {id(w): m for w, m in zip(weights, self.masks)}
        records = {}
        if training is True and self.schedule is not None and self.gradient_records:
            records = {id(w): r for w, r in zip(weights, self.gradient_records)}
        mapping = []
        for v in self.layer.variables:
            value = exact_value(v)  # also resolves an enclosing StatelessScope, if any
            if id(v) in pruned:
                value = value * ops.cast(pruned[id(v)], value.dtype)
            if id(v) in records:
                value = _record_gradient(
                    value,
                    records[id(v)],
                    accumulate=self.criterion.accumulate_gradients,
                    signed=getattr(self.criterion, "signed_gradients", False),
                )
            mapping.append((v, value))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            given = {id(v): scope.get_current_value(v) for v, _ in mapping}
            outputs = self.layer(inputs, *args, **kwargs)
        # Hand on whatever the inner layer updated (e.g. a seed generator) and its losses.
        for v, _ in mapping:
            new = scope.get_current_value(v)
            if new is not given[id(v)]:
                v.assign(new)
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        # The inner layer maps its call arguments to shapes itself: a layer with several
        # inputs (MultiHeadAttention's query and value) needs all of them, not the first one.
        if not call_has_training_arg(self.layer):
            kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    # -- serialization ----------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config["schedule"] = (
            None if self.schedule is None else keras.saving.serialize_keras_object(self.schedule)
        )
        config["scope"] = self.scope
        config["criterion"] = keras.saving.serialize_keras_object(self.criterion)
        if self.channel_weights is not None:
            config["channel_weights"] = list(self.channel_weights)
        if self.granularity.kind != "weight":  # weight-granularity configs stay as they were
            config["granularity"] = str(self.granularity)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        schedule = config.pop("schedule", None)
        if schedule is not None:
            schedule = keras.saving.deserialize_keras_object(
                schedule, custom_objects=custom_objects
            )
        criterion = config.pop("criterion", None)
        if isinstance(criterion, dict):
            criterion = keras.saving.deserialize_keras_object(
                criterion, custom_objects=custom_objects
            )
        return cls(layer, schedule=schedule, criterion=criterion, **config)


def check_nm_arguments(granularity, schedule, criterion):
    """What N:M granularity needs: the magnitude criterion, a schedule ending at 1 - N/M.

    Example:

    >>> from kprune import ConstantSparsity
    >>> check_nm_arguments(parse_granularity("2:4"), ConstantSparsity(0.5), Magnitude())
    """
    if type(criterion) is not Magnitude:
        raise ValueError(
            f"granularity={str(granularity)!r} selects by magnitude within every group; "
            f"criterion={criterion!r} is not supported with it. Use criterion='magnitude'."
        )
    if schedule is None:
        return
    target = granularity.sparsity
    if abs(schedule.final_sparsity - target) > NM_TOLERANCE:
        raise ValueError(
            f"granularity={str(granularity)!r} keeps {granularity.n} of every {granularity.m} "
            f"weights, so the schedule must end at sparsity 1 - {granularity.n}/"
            f"{granularity.m} = {target:g}, e.g. LinearSparsity(0.0, {target:g}, begin_step, "
            f"end_step) or ConstantSparsity({target:g}). Received: {schedule!r} (final "
            f"sparsity {schedule.final_sparsity:g})"
        )


def _record_gradient(value, record, accumulate, signed=False):
    """Identity on `value` whose backward pass also writes |gradient| into `record`.

    Runs inside whatever train step takes the gradient (compiled or XLA-compiled): the write is
    a stateful op of that graph, so `tf.function` runs it, after this step's forward-pass reads
    of the same variable. Under
    `tf.distribute` the gradient is summed over replicas first, so the record is the gradient of
    the global batch and identical everywhere.
    """

    @tf.custom_gradient
    def identity(x):
        def grad(upstream):
            g = upstream
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                g = context.all_reduce(tf.distribute.ReduceOp.SUM, g)
            g = tf.cast(g, record.dtype)
            if not signed:  # most criteria rank by |g|; Taylor needs sum(w * g)
                g = tf.abs(g)
            if accumulate:
                record.assign_add(g)
            else:
                record.assign(g)
            return upstream

        return tf.identity(x), grad

    return identity(value)
