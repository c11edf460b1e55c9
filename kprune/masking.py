"""Mask maths: scores + target sparsity + old mask -> new mask.

Everything here is pure TensorFlow on tensors (no Keras objects) and runs inside compiled train
steps, XLA included, so shapes stay static and nothing is sorted.

Selection rule, used by every method: to prune `k` weights out of a set, remove the `k` lowest
scores; among equal scores, the one that comes first in flat (row-major) order, across the list
of tensors in the order given, goes first. The k-th lowest score is found by bisection on an
order-preserving integer view of the float32 scores: 32 counting passes, exact, no sort, so
memory stays at one extra int32 copy of the scores.

N:M granularity (`nm=`) adds one rule: in every group of M consecutive weights along a
tensor's input axis the N highest scores are shielded (`nm_survivors`), so an update removes
the lowest scores among the other weights only, never more than M - N in any group, and at the
pattern's own sparsity 1 - N/M exactly N of every M survive.

Example:

>>> scores = [tf.constant([[3.0, 1.0], [2.0, 1.0]])]
>>> [m.numpy().tolist() for m in prune_lowest(scores, 2)]
[[[False, True], [False, True]]]
"""

from __future__ import annotations

import tensorflow as tf

from kprune._internal.validate import check_choice
from kprune.granularity import NM_TOLERANCE

__all__ = [
    "SCOPES",
    "prune_count",
    "prune_lowest",
    "compute_masks",
    "nm_survivors",
    "sortable_keys",
]

SCOPES = ("layer", "global")

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def sortable_keys(scores):
    """Maps float scores to int32 keys with the same order (-inf < ... < -0.0 < +0.0 < ... inf).

    Non-negative IEEE floats already sort like their bit patterns read as integers; negative ones
    sort in reverse, so their magnitude bits are negated (minus one keeps -0.0 below +0.0).
    """
    bits = tf.bitcast(tf.cast(scores, tf.float32), tf.int32)
    return tf.where(bits >= 0, bits, -tf.bitwise.bitwise_and(bits, _INT32_MAX) - 1)


def prune_count(sparsity, total):
    """`round(sparsity * total)` as an int64 tensor (round half to even, computed in float64)."""
    product = tf.cast(sparsity, tf.float64) * tf.cast(total, tf.float64)
    return tf.cast(tf.round(product), tf.int64)


def _count_at_most(keys, threshold):
    threshold = tf.cast(threshold, tf.int32)
    return tf.add_n([tf.reduce_sum(tf.cast(k <= threshold, tf.int64)) for k in keys])


def _kth_smallest_key(keys, k):
    """Smallest key value `t` with at least `k` keys <= t (for k = 0: the lowest int32)."""
    lo = tf.constant(_INT32_MIN - 1, tf.int64)  # count(key <= lo) == 0 < k, or k == 0
    hi = tf.constant(_INT32_MAX, tf.int64)  # count(key <= hi) == N >= k

    def body(lo, hi):
        mid = lo + (hi - lo) // 2
        enough = _count_at_most(keys, mid) >= k
        return tf.where(enough, lo, mid), tf.where(enough, mid, hi)

    _, hi = tf.while_loop(lambda lo, hi: hi - lo > 1, body, (lo, hi), maximum_iterations=33)
    return hi


def prune_lowest(scores, k):
    """Boolean masks, True where a weight is among the `k` lowest scores of the whole list.

    Args:
        scores: list of float tensors (any shapes); they are ranked jointly.
        k: number of entries to select (scalar int, 0 <= k <= total size).

    Returns:
        A list of bool tensors shaped like `scores`, with exactly `k` True entries in all.

    Example:

    >>> m = prune_lowest([tf.constant([0.5, 0.1]), tf.constant([0.1, 0.9])], 2)
    >>> [x.numpy().tolist() for x in m]
    [[False, True], [True, False]]
    """
    keys = [tf.reshape(sortable_keys(s), [-1]) for s in scores]
    k = tf.cast(k, tf.int64)
    threshold = tf.cast(_kth_smallest_key(keys, k), tf.int32)
    below = [key < threshold for key in keys]
    n_below = tf.add_n([tf.reduce_sum(tf.cast(b, tf.int64)) for b in below])
    ties_to_take = k - n_below
    masks = []
    ties_before = tf.constant(0, tf.int64)
    for key, low, score in zip(keys, below, scores):
        tie = tf.equal(key, threshold)
        tie_rank = tf.cumsum(tf.cast(tie, tf.int64)) + ties_before  # 1-based across the list
        take = tf.logical_or(low, tf.logical_and(tie, tie_rank <= ties_to_take))
        masks.append(tf.reshape(take, tf.shape(score)))
        ties_before += tf.reduce_sum(tf.cast(tie, tf.int64))
    return masks


def nm_survivors(scores, axis, n, m):
    """Bool tensor, True at the `n` highest scores of every `m` consecutive ones along `axis`.

    Among equal scores the lower index along `axis` survives. The rank inside a group is
    counted by comparing every pair of its `m` entries (no sort; `m` times the tensor's size in
    booleans), so the result is the same on every device. The length of `axis` must be a
    multiple of `m`.

    Example:

    >>> w = tf.constant([[4.0, 1.0], [1.0, 1.0], [3.0, 5.0], [2.0, 1.0]])  # (in=4, out=2)
    >>> nm_survivors(w, 0, 2, 4).numpy().astype(int).T.tolist()
    [[1, 0, 1, 0], [1, 0, 1, 0]]
    """
    keys = sortable_keys(scores)
    rank = len(scores.shape)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = tf.transpose(keys, perm)
    groups = tf.reshape(moved, [-1, m])
    mine, other = groups[:, :, None], groups[:, None, :]  # entry i against entry j
    index = tf.range(m)
    earlier = index[None, :] < index[:, None]  # [i, j]: j comes before i
    beaten = tf.logical_or(other > mine, tf.logical_and(tf.equal(other, mine), earlier))
    ahead = tf.reduce_sum(tf.cast(beaten, tf.int32), axis=-1)
    keep = tf.reshape(ahead < n, tf.shape(moved))
    inverse = [perm.index(i) for i in range(rank)]
    return tf.transpose(keep, inverse)


def compute_masks(scores, old_masks, sparsity, scope="layer", monotone=True, nm=None):
    """New binary masks (1 = keep) from scores and a target sparsity.

    Args:
        scores: list of float tensors, higher = more important.
        old_masks: list of current masks (same shapes; nonzero = active).
        sparsity: target fraction of zeros, scalar tensor in [0, 1).
        scope: `"layer"` prunes `round(s * n_i)` of every tensor; `"global"` prunes
            `round(s * N)` of all tensors together with one threshold.
        monotone: if True, weights already pruned stay pruned (they are ranked below every
            active weight, and the count never drops below the number already pruned); if False
            the mask is recomputed over the whole tensor and pruned weights can return.
        nm: None, or one `(axis, n, m)` per tensor (None for a tensor without N:M groups):
            the `n` best of every `m` weights along `axis` are never pruned (`nm_survivors`;
            with `monotone`, among the active ones), so at most `m - n` per group go; a
            sparsity within 1e-6 of `1 - n / m` prunes all the others.

    Returns:
        A list of float32 tensors of 0s and 1s.

    Example:

    >>> w = [tf.constant([1.0, -4.0, 2.0, 0.5])]
    >>> m = compute_masks([tf.abs(w[0])], [tf.ones(4)], 0.5)
    >>> m[0].numpy().tolist()  # the two smallest |w| (0.5 and 1.0) are pruned
    [0.0, 1.0, 1.0, 0.0]
    """
    check_choice("scope", scope, SCOPES)
    scores = [tf.cast(s, tf.float32) for s in scores]
    active = [tf.not_equal(m, 0) for m in old_masks]
    if monotone:
        scores = [tf.where(a, s, float("-inf")) for s, a in zip(scores, active)]
    shielded = [None] * len(scores)
    for i, spec in enumerate(nm or ()):
        if spec is not None:
            shielded[i] = nm_survivors(scores[i], *spec)
            if monotone:
                shielded[i] = tf.logical_and(shielded[i], active[i])
    groups = [list(range(len(scores)))] if scope == "global" else [[i] for i in range(len(scores))]
    new_masks = [None] * len(scores)
    for group in groups:
        group_scores = [scores[i] for i in group]
        total = sum(int(s.shape.num_elements()) for s in group_scores)
        k = prune_count(sparsity, total)
        if monotone:
            n_inactive = tf.add_n(
                [tf.reduce_sum(tf.cast(tf.logical_not(active[i]), tf.int64)) for i in group]
            )
            k = tf.maximum(k, n_inactive)
        if any(shielded[i] is not None for i in group):
            k = _nm_count(k, sparsity, total, group, shielded, nm)
            group_scores = [
                s if shielded[i] is None else tf.where(shielded[i], float("inf"), s)
                for i, s in zip(group, group_scores)
            ]
        for i, pruned in zip(group, prune_lowest(group_scores, k)):
            if shielded[i] is not None:
                pruned = tf.logical_and(pruned, tf.logical_not(shielded[i]))
            new_masks[i] = tf.cast(tf.logical_not(pruned), tf.float32)
    return new_masks


def _nm_count(k, sparsity, total, group, shielded, nm):
    """`k` capped at the weights N:M lets go, and all of them at the pattern's sparsity."""
    n_shielded = tf.add_n(
        [tf.reduce_sum(tf.cast(shielded[i], tf.int64)) for i in group if shielded[i] is not None]
    )
    open_ = tf.constant(total, tf.int64) - n_shielded
    k = tf.minimum(k, open_)
    specs = [nm[i] for i in group]
    if all(spec is not None for spec in specs):
        limit = min(1.0 - n / m for _, n, m in specs)
        full = tf.cast(sparsity, tf.float64) >= limit - NM_TOLERANCE
        k = tf.where(full, open_, k)
    return k
