"""ERK budgets: proportional densities, dense overflow, exact integer counts."""

import math

import numpy as np
import pytest

from kprune.allocation import erk_densities, erk_keep_counts, erk_prune_counts


def test_densities_follow_sum_over_product_when_nothing_saturates():
    shapes = [(3, 3, 16, 32), (3, 3, 32, 64), (1024, 10)]
    d = erk_densities(shapes, 0.9)
    raw = [sum(s) / math.prod(s) for s in shapes]
    ratios = [a / r for a, r in zip(d, raw)]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    kept = sum(x * math.prod(s) for x, s in zip(d, shapes))
    np.testing.assert_allclose(kept, 0.1 * sum(math.prod(s) for s in shapes), rtol=1e-12)


def test_saturated_tensors_become_dense_and_the_rest_is_rescaled():
    # Hand computation: N = 1100, keep 880; raw = 0.11, 0.2 -> scale 880/130 = 6.77 gives the
    # small tensor density 1.35 > 1, so it is dense (100) and the big one keeps 780.
    assert erk_densities([(100, 10), (10, 10)], 0.2) == pytest.approx([0.78, 1.0])
    assert erk_keep_counts([(100, 10), (10, 10)], 0.2) == [780, 100]
    assert erk_prune_counts([(100, 10), (10, 10)], 0.2) == [220, 0]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.98, 0.999])
def test_counts_are_exact_and_bounded(sparsity):
    shapes = [(3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 64), (64, 10), (7,)]
    sizes = [math.prod(s) for s in shapes]
    keep = erk_keep_counts(shapes, sparsity)
    assert sum(keep) == sum(sizes) - round(sparsity * sum(sizes))
    assert all(0 <= k <= n for k, n in zip(keep, sizes))
    # Within one weight of the real-valued budget.
    ideal = [d * n for d, n in zip(erk_densities(shapes, sparsity), sizes)]
    assert all(abs(k - i) < 1.0 + 1e-9 for k, i in zip(keep, ideal))


def test_power_scale_zero_is_uniform():
    shapes = [(10, 10), (20, 5), (4, 25)]
    assert erk_densities(shapes, 0.6, power_scale=0.0) == pytest.approx([0.4, 0.4, 0.4])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shapes": [], "sparsity": 0.5}, "empty"),
        ({"shapes": [(0, 3)], "sparsity": 0.5}, "positive"),
        ({"shapes": [(3, 3)], "sparsity": 1.0}, "sparsity"),
        ({"shapes": [(3, 3)], "sparsity": -0.1}, "sparsity"),
        ({"shapes": [(3, 3)], "sparsity": 0.5, "power_scale": -1}, "power_scale"),
        ({"shapes": [("a", 3)], "sparsity": 0.5}, "shapes"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        erk_keep_counts(**kwargs)


# -- budgets for the gradual methods (issue 14) ------------------------------------------------
def _dense_layers(shapes):
    import keras

    layers = []
    for fan_in, units in shapes:
        layer = keras.layers.Dense(units)
        layer.build((None, fan_in))
        layers.append(layer)
    return layers


def test_erk_budget_known_by_hand():
    # N = 1100, s = 0.5, keep 550: raw 110/1000 = 0.11 and 20/100 = 0.2, scale 550/130, ideal
    # kept 465.38 and 84.62 -> floors 465 + 84 = 549, the missing one goes to the larger
    # remainder (0.62): 465 and 85 kept, 535 and 15 pruned.
    from kprune import LinearSparsity
    from kprune.allocation import layer_budgets

    layers = _dense_layers([(100, 10), (10, 10)])
    budgets = layer_budgets(layers, LinearSparsity(0.0, 0.5, 0, 10), "erk")
    assert [scope for _, scope in budgets] == ["layer", "layer"]
    assert [s.final_sparsity for s, _ in budgets] == [535 / 1000, 15 / 100]
    assert erk_prune_counts([(100, 10), (10, 10)], 0.5) == [535, 15]


def test_scaled_schedule_keeps_the_shape_and_ends_exactly_on_target():
    import tensorflow as tf

    from kprune import LinearSparsity, PolynomialDecay
    from kprune.allocation import ScaledSparsity

    for base in (
        LinearSparsity(0.0, 0.98, 0, 100, frequency=7),
        PolynomialDecay(0.0, 0.98, 0, 100),
    ):
        scaled = ScaledSparsity(base, 0.6326)
        for step in (0, 7, 50, 99, 100, 150):
            should, target = scaled(tf.constant(step, tf.int64))
            base_should, base_target = base(tf.constant(step, tf.int64))
            assert bool(should) == bool(base_should)
            assert float(target) == pytest.approx(float(base_target) / 0.98 * 0.6326, rel=1e-6)
        assert float(scaled(tf.constant(100, tf.int64))[1]) == 0.6326  # exactly, in float64
        assert scaled.end_step == 100 and scaled.last_update_step == 100
        assert ScaledSparsity.from_config(scaled.get_config()) == scaled
        assert hash(ScaledSparsity(base, 0.6326)) == hash(scaled)


def test_uniform_and_global_budgets_are_the_scopes():
    from kprune import LinearSparsity
    from kprune.allocation import layer_budgets, resolve_budget

    schedule = LinearSparsity(0.0, 0.9, 0, 10)
    layers = _dense_layers([(8, 4), (4, 2)])
    assert layer_budgets(layers, schedule, "global") == [(schedule, "global")] * 2
    assert layer_budgets(layers, schedule, "uniform") == [(schedule, "layer")] * 2
    assert resolve_budget(None, "global") == "global"
    assert resolve_budget("erk", "global") == "erk"  # "global" is the default scope
    with pytest.raises(ValueError, match="contradicts scope='layer'"):
        resolve_budget("erk", "layer")
    with pytest.raises(ValueError, match="budget"):
        resolve_budget("hessian")


def test_erk_refuses_layers_with_two_pruned_tensors():
    import keras

    from kprune import LinearSparsity
    from kprune.allocation import layer_budgets

    conv = keras.layers.SeparableConv2D(4, 3)
    conv.build((None, 8, 8, 2))
    with pytest.raises(ValueError, match="2 pruned tensors"):
        layer_budgets([conv], LinearSparsity(0.0, 0.9, 0, 10), "erk")
