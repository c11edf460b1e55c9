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
