"""Mask maths: exact counts, deterministic ties, agreement with an independent numpy ranking."""

import numpy as np
import pytest
import tensorflow as tf

from kprune.masking import compute_masks, prune_count, prune_lowest, sortable_keys


def numpy_lowest(scores, k):
    """Independent reference: a stable argsort over the concatenation (ties by position)."""
    flat = np.concatenate([s.ravel() for s in scores])
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(flat, kind="stable")[:k]] = True
    out, start = [], 0
    for s in scores:
        out.append(chosen[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def test_sortable_keys_preserve_float_order():
    x = np.array([-np.inf, -3e38, -2.0, -1e-40, -0.0, 0.0, 1e-40, 1.5, 3e38, np.inf], np.float32)
    keys = sortable_keys(tf.constant(x)).numpy()
    assert np.all(np.diff(keys) > 0)


@pytest.mark.parametrize("seed", range(40))
def test_prune_lowest_matches_numpy_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    shapes = [tuple(rng.integers(1, 7, size=rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
    # Few distinct values -> many ties; negative values and zeros included.
    scores = [(rng.integers(-3, 4, size=s) * 0.5).astype(np.float32) for s in shapes]
    total = sum(s.size for s in scores)
    for k in {0, 1, total // 2, total - 1, total}:
        got = prune_lowest([tf.constant(s) for s in scores], k)
        for g, e in zip(got, numpy_lowest(scores, k)):
            np.testing.assert_array_equal(g.numpy(), e)


def test_prune_lowest_works_under_xla():
    rng = np.random.default_rng(0)
    scores = [
        rng.normal(size=(50, 40)).astype(np.float32),
        rng.normal(size=(7,)).astype(np.float32),
    ]
    fn = tf.function(lambda a, b, k: prune_lowest([a, b], k), jit_compile=True)
    got = fn(tf.constant(scores[0]), tf.constant(scores[1]), tf.constant(1234, tf.int64))
    for g, e in zip(got, numpy_lowest(scores, 1234)):
        np.testing.assert_array_equal(g.numpy(), e)


def test_prune_count_rounds_half_to_even():
    assert [int(prune_count(s, n)) for s, n in [(0.5, 3), (0.5, 5), (0.9, 1000), (0.25, 2)]] == [
        2,
        2,
        900,
        0,
    ]


def test_layer_scope_prunes_each_tensor_to_target():
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(30, 20)), rng.normal(size=(20, 7))]
    masks = compute_masks(
        [np.abs(w) for w in weights], [np.ones_like(w) for w in weights], 0.7, scope="layer"
    )
    for w, m in zip(weights, masks):
        m = m.numpy()
        assert int((m == 0).sum()) == round(0.7 * w.size)
        # Every kept weight is at least as large as every pruned one.
        assert np.abs(w)[m == 1].min() >= np.abs(w)[m == 0].max()


def test_global_scope_uses_one_threshold():
    rng = np.random.default_rng(2)
    weights = [rng.normal(size=(30, 20)), 3.0 * rng.normal(size=(20, 7))]
    masks = [
        m.numpy()
        for m in compute_masks(
            [np.abs(w) for w in weights], [np.ones_like(w) for w in weights], 0.6, scope="global"
        )
    ]
    total = sum(w.size for w in weights)
    assert sum(int((m == 0).sum()) for m in masks) == round(0.6 * total)
    kept = np.concatenate([np.abs(w)[m == 1] for w, m in zip(weights, masks)])
    pruned = np.concatenate([np.abs(w)[m == 0] for w, m in zip(weights, masks)])
    assert kept.min() >= pruned.max()
    # The larger-scale tensor keeps a larger share than under a uniform budget.
    assert (masks[1] == 1).mean() > (masks[0] == 1).mean()


def test_monotone_masks_only_shrink_and_regrowth_can_restore():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(40,)).astype(np.float32)
    old = np.ones(40, np.float32)
    old[:10] = 0.0  # ten weights pruned already, although some are large
    w_eff = w * old
    mono = compute_masks([np.abs(w_eff)], [old], 0.5, monotone=True)[0].numpy()
    assert np.all(mono <= old) and int((mono == 0).sum()) == 20
    # Lower target than already pruned: monotone keeps all 10 pruned; regrowth restores some.
    mono_low = compute_masks([np.abs(w_eff)], [old], 0.1, monotone=True)[0].numpy()
    assert int((mono_low == 0).sum()) == 10 and np.all(mono_low <= old)
    free = compute_masks([np.abs(w)], [old], 0.1, monotone=False)[0].numpy()
    assert int((free == 0).sum()) == 4 and free[:10].sum() > 0


def test_bad_scope():
    with pytest.raises(ValueError, match="scope.*'row'"):
        compute_masks([np.ones(3)], [np.ones(3)], 0.5, scope="row")
