"""Schedules: values at begin/middle/end, update steps, validation and serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from kprune.schedules import (
    ConstantSparsity,
    CyclicalSparsity,
    LinearSparsity,
    PolynomialDecay,
)


def run(schedule, steps):
    """(should_update, sparsity) for each step, evaluated inside a tf.function like in training."""
    fn = tf.function(lambda s: schedule(s))
    out = [fn(tf.constant(s, tf.int64)) for s in steps]
    return [bool(u) for u, _ in out], [float(s) for _, s in out]


def test_linear_values_at_begin_middle_end():
    schedule = LinearSparsity(0.1, 0.9, begin_step=100, end_step=500, frequency=50)
    _, values = run(schedule, [0, 100, 300, 500, 900])
    np.testing.assert_allclose(values, [0.1, 0.1, 0.5, 0.9, 0.9], atol=1e-6)


def test_linear_updates_on_grid_and_forced_at_end():
    # 100..430 is not a multiple of 100 apart: the last update must still happen at 430.
    schedule = LinearSparsity(0.0, 0.8, begin_step=100, end_step=430, frequency=100)
    steps = list(range(0, 600))
    updates, values = run(schedule, steps)
    assert [s for s, u in zip(steps, updates) if u] == [100, 200, 300, 400, 430]
    assert values[430] == pytest.approx(0.8)
    # Between updates the target keeps moving; only the update steps matter for masks.
    assert values[250] == pytest.approx(0.8 * 150 / 330, rel=1e-6)


def test_polynomial_matches_formula():
    schedule = PolynomialDecay(0.2, 0.9, begin_step=10, end_step=110, power=3, frequency=10)
    steps = [0, 10, 35, 60, 110, 200]
    updates, values = run(schedule, steps)
    p = np.clip((np.array(steps) - 10) / 100, 0, 1)
    expected = 0.9 + (0.2 - 0.9) * (1 - p) ** 3
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert updates == [False, True, False, True, True, False]


def test_constant_updates_once_by_default():
    schedule = ConstantSparsity(0.75, begin_step=5)
    updates, values = run(schedule, range(20))
    assert [s for s, u in enumerate(updates) if u] == [5]
    assert set(values) == {0.75}


def test_constant_with_window_rechecks():
    schedule = ConstantSparsity(0.5, begin_step=0, end_step=25, frequency=10)
    updates, _ = run(schedule, range(40))
    assert [s for s, u in enumerate(updates) if u] == [0, 10, 20, 25]


def test_cyclical_ramps_and_restarts():
    schedule = CyclicalSparsity(
        0.9, begin_step=0, end_step=299, cycles=3, frequency=25, cycle_start_sparsity=0.3
    )
    assert schedule.cycle_bounds() == [0, 100, 200, 300]
    steps = list(range(0, 320))
    updates, values = run(schedule, steps)
    # First cycle starts at 0, later cycles at 0.3; every cycle ends at 0.9.
    assert values[0] == pytest.approx(0.0)
    assert values[99] == pytest.approx(0.9)
    assert values[100] == pytest.approx(0.3)
    assert values[150] == pytest.approx(0.3 + 0.6 * 50 / 99, rel=1e-6)
    assert values[199] == pytest.approx(0.9)
    assert values[310] == pytest.approx(0.9)
    update_steps = [s for s, u in zip(steps, updates) if u]
    assert update_steps == [0, 25, 50, 75, 99, 100, 125, 150, 175, 199, 200, 225, 250, 275, 299]
    assert schedule.allows_regrowth and not LinearSparsity(0, 0.5, 0, 10).allows_regrowth


def test_cyclical_cubic_ramp_is_front_loaded():
    schedule = CyclicalSparsity(0.8, begin_step=0, end_step=99, cycles=1, ramp="cubic")
    _, values = run(schedule, [0, 33, 99])
    u = 33 / 99
    assert values[1] == pytest.approx(0.8 * (1 - (1 - u) ** 3), rel=1e-6)
    assert values[1] > 0.8 * u


@pytest.mark.parametrize(
    "factory, name, value",
    [
        (lambda: LinearSparsity(0.0, 1.0, 0, 10), "final_sparsity", "1.0"),
        (lambda: LinearSparsity(-0.1, 0.5, 0, 10), "initial_sparsity", "-0.1"),
        (lambda: LinearSparsity(0.0, 0.5, 10, 10), "end_step", "end_step=10"),
        (lambda: LinearSparsity(0.0, 0.5, 0, 10, frequency=0), "frequency", "frequency=0"),
        (lambda: LinearSparsity(0.0, 0.5, 2.5, 10), "begin_step", "2.5"),
        (lambda: LinearSparsity(0.0, "0.5", 0, 10), "final_sparsity", "'0.5'"),
        (lambda: LinearSparsity(0.0, True, 0, 10), "final_sparsity", "True"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=0), "power", "power=0"),
        (lambda: ConstantSparsity(0.5, begin_step=-1), "begin_step", "-1"),
        (lambda: ConstantSparsity(0.5, begin_step=10, end_step=5), "end_step", "end_step=5"),
        (lambda: CyclicalSparsity(0.5, 0, 10, cycles=0), "cycles", "cycles=0"),
        (lambda: CyclicalSparsity(0.5, 0, 10, cycles=6), "cycles", "cycles=6"),
        (lambda: CyclicalSparsity(0.5, 0, 10, ramp="cosine"), "ramp", "'cosine'"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(factory, name, value):
    with pytest.raises(ValueError) as info:
        factory()
    assert name in str(info.value) and value in str(info.value)


@pytest.mark.parametrize("cls", [LinearSparsity, PolynomialDecay])
def test_initial_sparsity_defaults_to_zero_and_positional_calls_still_work(cls):
    by_keyword = cls(final_sparsity=0.9, begin_step=0, end_step=1000)
    assert by_keyword.initial_sparsity == 0.0
    assert by_keyword == cls(0.0, 0.9, 0, 1000)
    assert cls(0.2, 0.9, 0, 1000).initial_sparsity == 0.2
    with pytest.raises(TypeError, match="missing required argument: 'end_step'"):
        cls(final_sparsity=0.9, begin_step=0)
    with pytest.raises(TypeError, match="missing required argument: 'final_sparsity'"):
        cls(begin_step=0, end_step=10)


@pytest.mark.parametrize(
    "factory",
    [
        lambda step: LinearSparsity(0.0, 0.5, step, 10),
        lambda step: ConstantSparsity(0.5, begin_step=step),
        lambda step: CyclicalSparsity(0.5, 0, 10, cycles=step),
        lambda step: PolynomialDecay(0.0, 0.5, 0, 10, frequency=step),
    ],
)
def test_integer_arguments_take_integral_types_only(factory):
    # One rule across kprune (kprune._internal.validate.check_integer): Python and numpy
    # integers are accepted; integral floats such as 2.0 are refused, like bools.
    assert factory(np.int64(2)) == factory(2)
    for bad in (2.0, np.float32(2.0), True):
        with pytest.raises(ValueError, match="must be an integer"):
            factory(bad)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.5, begin_step=3, end_step=30, frequency=3),
        LinearSparsity(0.1, 0.9, 5, 50, frequency=5),
        PolynomialDecay(0.0, 0.8, 0, 40, power=2, frequency=4),
        CyclicalSparsity(0.9, 0, 99, cycles=2, ramp="cubic", cycle_start_sparsity=0.2),
    ],
)
def test_serialization_round_trip(schedule):
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert restored == schedule
    steps = range(0, 120, 7)
    assert run(restored, steps) == run(schedule, steps)


def test_custom_schedule_subclass_is_usable():
    class Halfway(kprune.PruningSchedule):
        def __call__(self, step):
            return tf.equal(step, 3), tf.constant(0.5, tf.float32)

        def get_config(self):
            return {}

    updates, values = run(Halfway(), range(5))
    assert updates == [False, False, False, True, False] and values[3] == 0.5


@pytest.mark.parametrize("cls", [LinearSparsity, PolynomialDecay])
def test_a_decreasing_monotone_schedule_is_refused(cls):
    with pytest.raises(ValueError, match="cannot lower the sparsity.*initial_sparsity=0.9"):
        cls(0.9, 0.1, begin_step=0, end_step=100)
    assert cls(0.5, 0.5, begin_step=0, end_step=100).final_sparsity == 0.5  # flat is fine
