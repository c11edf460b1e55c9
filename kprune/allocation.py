"""Layer-wise budgets: how many weights each tensor keeps for a given overall sparsity.

Global and uniform budgets need no table (`kprune.masking.compute_masks` handles both with
`scope="global"` / `scope="layer"`); this module holds the budgets that depend on the shapes:

* ERK (Erdos-Renyi-Kernel, from RigL): the density of a tensor is proportional to
  `(sum of its dimensions / product of its dimensions) ** power_scale`, scaled so the whole
  model keeps `(1 - s) * N` weights. Tensors whose density would exceed 1 are made dense and
  the scale is solved again for the others, until no tensor exceeds 1.

Counts are exact: the kept counts add up to `N - round(s * N)` (the same rounding as every
other selection in kprune); the fractional parts left by rounding each tensor down go, one
weight each, to the tensors with the largest fractions (ties: first tensor first).

Example:

>>> erk_keep_counts([(100, 10), (10, 10)], 0.5)
[465, 85]
"""

from __future__ import annotations

import math

import numpy as np

from kprune._internal.validate import check_number, check_sparsity

__all__ = ["erk_densities", "erk_keep_counts", "erk_prune_counts"]


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
    keep_total = total - int(np.round(np.float64(sparsity) * np.float64(total)))
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
