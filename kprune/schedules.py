"""Pruning schedules: training step -> (update the masks now?, target sparsity).

A schedule is a small, pure object. Called with the optimizer step (a scalar integer tensor) it
returns two tensors, `should_update` (bool) and `target_sparsity` (float32), the same call
contract as TensorFlow Model Optimization's `PruningSchedule`, so it works inside `tf.function`
and XLA-compiled train steps. Schedules never touch weights; the wrapper decides what to do with
the answer.

Every schedule forces an update at `end_step` even when `end_step - begin_step` is not a
multiple of `frequency`; otherwise the final sparsity would silently be missed.

Example:

>>> schedule = LinearSparsity(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
>>> should_update, sparsity = schedule(tf.constant(500, tf.int64))
>>> bool(should_update), round(float(sparsity), 2)
(True, 0.45)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kprune._internal.validate import check_choice, check_integer, check_number, check_sparsity

__all__ = [
    "ConfigObject",
    "PruningSchedule",
    "ConstantSparsity",
    "LinearSparsity",
    "PolynomialDecay",
    "CyclicalSparsity",
]

_RAMPS = ("linear", "cubic")


def _check_required(cls, **arguments):
    """TypeError naming the first required argument that was left out.

    The arguments after `initial_sparsity` have a default (None) only so that
    `initial_sparsity` can default to 0 and still come first.
    """
    for name, value in arguments.items():
        if value is None:
            raise TypeError(f"{cls.__name__}() missing required argument: '{name}'")


def _check_span(begin_step, end_step):
    if end_step <= begin_step:
        raise ValueError(
            "`end_step` must be greater than `begin_step`. "
            f"Received: begin_step={begin_step}, end_step={end_step}"
        )


class ConfigObject:
    """A small value object defined by its `get_config()`: equal configs are equal objects.

    Schedules and pruning criteria are compared and hashed this way, so wrappers that share
    them can be grouped (`kprune.bind_optimizer`), and rebuilt with `from_config(config)`.

    Example:

    >>> LinearSparsity(0.0, 0.5, 0, 10) == LinearSparsity(0.0, 0.5, 0, 10)
    True
    """

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class PruningSchedule(ConfigObject):
    """Base class: maps a training step to `(should_update, target_sparsity)`.

    Subclasses implement `__call__(step)` with TensorFlow ops only (it runs inside compiled
    train steps) and `get_config()`. Set the class attribute `allows_regrowth = True` when the
    schedule may *lower* the target, so masks are recomputed over the whole tensor and pruned
    weights can come back (cyclical pruning); otherwise pruning is monotone: a pruned weight stays
    pruned.

    Example:

    >>> class EveryStep(PruningSchedule):
    ...     def __call__(self, step):
    ...         return tf.constant(True), tf.constant(0.5, tf.float32)
    ...     def get_config(self):
    ...         return {}
    """

    allows_regrowth = False

    def __call__(self, step):
        raise NotImplementedError

    @property
    def final_sparsity(self) -> float:
        """The sparsity reached once the schedule has run its course."""
        raise NotImplementedError

    @property
    def last_update_step(self) -> int:
        """The last step at which this schedule may ask for an update."""
        raise NotImplementedError


def _in_window(step, begin_step, end_step, frequency):
    """True on begin_step, every `frequency` steps after it, and always on end_step."""
    step = tf.cast(step, tf.int64)
    inside = tf.logical_and(step >= begin_step, step <= end_step)
    on_grid = tf.equal(tf.math.floormod(step - begin_step, frequency), 0)
    return tf.logical_and(inside, tf.logical_or(on_grid, tf.equal(step, end_step)))


def _progress(step, begin_step, end_step):
    """Fraction of the way from begin_step to end_step, clipped to [0, 1], as float64."""
    step = tf.cast(step, tf.float64)
    p = (step - float(begin_step)) / float(end_step - begin_step)
    return tf.clip_by_value(p, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="kprune")
class ConstantSparsity(PruningSchedule):
    """Prune to one fixed sparsity at `begin_step` (and re-check every `frequency` steps until
    `end_step`, if given).

    Args:
        target_sparsity: fraction of prunable weights set to zero, in [0, 1).
        begin_step: step of the (first) update.
        end_step: last step of re-checks; defaults to `begin_step` (a single update).
        frequency: steps between re-checks when `end_step > begin_step`.

    Example:

    >>> schedule = ConstantSparsity(0.8, begin_step=10)
    >>> [bool(schedule(tf.constant(s, tf.int64))[0]) for s in (9, 10, 11)]
    [False, True, False]
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=None, frequency=100):
        self.target_sparsity = check_sparsity("target_sparsity", target_sparsity)
        self.begin_step = check_integer("begin_step", begin_step, 0)
        if end_step is None:
            end_step = self.begin_step
        self.end_step = check_integer("end_step", end_step, 0)
        if self.end_step < self.begin_step:
            raise ValueError(
                "`end_step` must be >= `begin_step`. "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
        self.frequency = check_integer("frequency", frequency, 1)

    def __call__(self, step):
        should = _in_window(step, self.begin_step, self.end_step, self.frequency)
        return should, tf.constant(self.target_sparsity, tf.float32)

    @property
    def final_sparsity(self):
        return self.target_sparsity

    @property
    def last_update_step(self):
        return self.end_step

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


class _RampSchedule(PruningSchedule):
    """Shared constructor and config of schedules that go from an initial to a final sparsity.

    `initial_sparsity` comes first (as in tfmot) and defaults to 0, so both
    `LinearSparsity(0.0, 0.9, 0, 1000)` and `LinearSparsity(final_sparsity=0.9, begin_step=0,
    end_step=1000)` work; the arguments after it are required all the same.
    """

    def __init__(
        self,
        initial_sparsity=0.0,
        final_sparsity=None,
        begin_step=None,
        end_step=None,
        frequency=100,
    ):
        _check_required(
            type(self), final_sparsity=final_sparsity, begin_step=begin_step, end_step=end_step
        )
        self.initial_sparsity = check_sparsity("initial_sparsity", initial_sparsity)
        self._final_sparsity = check_sparsity("final_sparsity", final_sparsity)
        if self._final_sparsity < self.initial_sparsity and not self.allows_regrowth:
            # Monotone pruning never unprunes a weight: the masks would stay at the initial
            # sparsity while the schedule reports a lower one.
            raise ValueError(
                f"{type(self).__name__} cannot lower the sparsity: pruned weights stay pruned, "
                "so `final_sparsity` must be >= `initial_sparsity` (use CyclicalSparsity for "
                "pruning that lets weights regrow). Received: "
                f"initial_sparsity={initial_sparsity!r}, final_sparsity={final_sparsity!r}"
            )
        self.begin_step = check_integer("begin_step", begin_step, 0)
        self.end_step = check_integer("end_step", end_step, 0)
        _check_span(self.begin_step, self.end_step)
        self.frequency = check_integer("frequency", frequency, 1)

    @property
    def final_sparsity(self):
        return self._final_sparsity

    @property
    def last_update_step(self):
        return self.end_step

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self._final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="kprune")
class LinearSparsity(_RampSchedule):
    """Progressive pruning with a linear ramp: the headline schedule.

    `s(t) = s_i + (s_f - s_i) * clip((t - begin_step) / (end_step - begin_step), 0, 1)`, with
    an update every `frequency` steps in `[begin_step, end_step]` and always at `end_step`.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1); default 0 (a dense start).
        final_sparsity: sparsity from `end_step` on, in [0, 1). Required.
        begin_step: first step of pruning. Required.
        end_step: step at which `final_sparsity` is reached; must exceed `begin_step`.
            Required.
        frequency: steps between mask updates.

    Example:

    >>> schedule = LinearSparsity(0.0, 0.8, begin_step=100, end_step=500, frequency=50)
    >>> round(float(schedule(tf.constant(300, tf.int64))[1]), 3)
    0.4
    >>> LinearSparsity(final_sparsity=0.9, begin_step=0, end_step=1000).initial_sparsity
    0.0
    """

    def __call__(self, step):
        p = _progress(step, self.begin_step, self.end_step)
        s = self.initial_sparsity + (self._final_sparsity - self.initial_sparsity) * p
        should = _in_window(step, self.begin_step, self.end_step, self.frequency)
        return should, tf.cast(s, tf.float32)


@keras.saving.register_keras_serializable(package="kprune")
class PolynomialDecay(_RampSchedule):
    """Gradual pruning (Zhu & Gupta, 2017): fast at first, slowing towards the end.

    `s(t) = s_f + (s_i - s_f) * (1 - p) ** power` with `p` the clipped progress from
    `begin_step` to `end_step`; updates every `frequency` steps and always at `end_step`.

    Args:
        initial_sparsity, final_sparsity, begin_step, end_step, frequency: as `LinearSparsity`
            (`initial_sparsity` defaults to 0; the other three are required).
        power: exponent of the decay, > 0 (3 as published).

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, power=3)
    >>> round(float(schedule(tf.constant(50, tf.int64))[1]), 4)
    0.7875
    """

    def __init__(
        self,
        initial_sparsity=0.0,
        final_sparsity=None,
        begin_step=None,
        end_step=None,
        power=3,
        frequency=100,
    ):
        super().__init__(initial_sparsity, final_sparsity, begin_step, end_step, frequency)
        self.power = float(check_number("power", power, 0, low_open=True))

    def __call__(self, step):
        p = _progress(step, self.begin_step, self.end_step)
        s = self._final_sparsity + (self.initial_sparsity - self._final_sparsity) * tf.pow(
            1.0 - p, self.power
        )
        should = _in_window(step, self.begin_step, self.end_step, self.frequency)
        return should, tf.cast(s, tf.float32)

    def get_config(self):
        return {**super().get_config(), "power": self.power}


@keras.saving.register_keras_serializable(package="kprune")
class CyclicalSparsity(PruningSchedule):
    """Cyclical pruning: the target ramps up within each cycle and restarts low at the next.

    The span `[begin_step, end_step]` is cut into `cycles` cycles of (nearly) equal length. In
    cycle `c` the target rises from a start value (`initial_sparsity` in the first cycle,
    `cycle_start_sparsity` in later ones) to `final_sparsity` on the cycle's last step, along a
    `"linear"` ramp or a `"cubic"` one (`1 - (1 - u) ** 3`, fast first). Masks are recomputed over
    the whole tensor (`allows_regrowth`), so when a new cycle starts lower some pruned weights are
    unmasked and can grow back under the gradient. After `end_step` the mask stays fixed.

    Updates happen on the first and last step of every cycle and every `frequency` steps within.

    Args:
        final_sparsity: sparsity at the end of every cycle, in [0, 1).
        begin_step: first step of the first cycle.
        end_step: last step of the last cycle.
        cycles: number of cycles, >= 1.
        ramp: `"linear"` or `"cubic"`.
        initial_sparsity: start of the first cycle, in [0, 1).
        cycle_start_sparsity: start of every later cycle, in [0, 1).
        frequency: steps between updates within a cycle.

    Example:

    >>> schedule = CyclicalSparsity(0.9, begin_step=0, end_step=199, cycles=2, frequency=10)
    >>> [round(float(schedule(tf.constant(s, tf.int64))[1]), 2) for s in (0, 99, 100, 199)]
    [0.0, 0.9, 0.0, 0.9]
    """

    allows_regrowth = True

    def __init__(
        self,
        final_sparsity,
        begin_step,
        end_step,
        cycles=3,
        ramp="linear",
        initial_sparsity=0.0,
        cycle_start_sparsity=0.0,
        frequency=100,
    ):
        self._final_sparsity = check_sparsity("final_sparsity", final_sparsity)
        self.initial_sparsity = check_sparsity("initial_sparsity", initial_sparsity)
        self.cycle_start_sparsity = check_sparsity("cycle_start_sparsity", cycle_start_sparsity)
        self.begin_step = check_integer("begin_step", begin_step, 0)
        self.end_step = check_integer("end_step", end_step, 0)
        _check_span(self.begin_step, self.end_step)
        self.cycles = check_integer("cycles", cycles, 1)
        if self.end_step - self.begin_step + 1 < 2 * self.cycles:
            raise ValueError(
                "Each cycle needs at least 2 steps: `end_step - begin_step + 1` must be >= "
                f"2 * cycles. Received: begin_step={begin_step}, end_step={end_step}, "
                f"cycles={cycles}"
            )
        self.ramp = check_choice("ramp", ramp, _RAMPS)
        self.frequency = check_integer("frequency", frequency, 1)

    def cycle_bounds(self):
        """First step of every cycle, plus `end_step + 1`: a list of `cycles + 1` integers."""
        span = self.end_step - self.begin_step + 1
        return [self.begin_step + (c * span) // self.cycles for c in range(self.cycles)] + [
            self.end_step + 1
        ]

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        bounds = tf.constant(self.cycle_bounds(), tf.int64)
        # Index of the cycle containing `step` (clipped, so steps outside the span use the
        # first or last cycle).
        cycle = tf.clip_by_value(
            tf.searchsorted(bounds, tf.reshape(step, [1]), side="right")[0] - 1,
            0,
            self.cycles - 1,
        )
        first = tf.gather(bounds, cycle)
        last = tf.gather(bounds, cycle + 1) - 1
        u = tf.clip_by_value(
            tf.cast(step - first, tf.float64) / tf.cast(last - first, tf.float64), 0.0, 1.0
        )
        if self.ramp == "cubic":
            u = 1.0 - tf.pow(1.0 - u, 3.0)
        start = tf.where(
            tf.equal(cycle, 0),
            tf.constant(self.initial_sparsity, tf.float64),
            tf.constant(self.cycle_start_sparsity, tf.float64),
        )
        s = start + (self._final_sparsity - start) * u
        s = tf.where(step > self.end_step, tf.constant(self._final_sparsity, tf.float64), s)
        inside = tf.logical_and(step >= self.begin_step, step <= self.end_step)
        edge = tf.logical_or(tf.equal(step, first), tf.equal(step, last))
        on_grid = tf.equal(tf.math.floormod(step - first, self.frequency), 0)
        should = tf.logical_and(inside, tf.logical_or(edge, on_grid))
        return should, tf.cast(s, tf.float32)

    @property
    def final_sparsity(self):
        return self._final_sparsity

    @property
    def last_update_step(self):
        return self.end_step

    def get_config(self):
        return {
            "final_sparsity": self._final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "cycles": self.cycles,
            "ramp": self.ramp,
            "initial_sparsity": self.initial_sparsity,
            "cycle_start_sparsity": self.cycle_start_sparsity,
            "frequency": self.frequency,
        }
