"""kprune.scores against independent numpy computations on tiny networks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kprune import scores

RNG = np.random.default_rng(1234)


# -- an MLP written twice: Keras-free TF forward for the scores, numpy for the reference -------
def mlp_forward(weights, x, biases):
    w1, w2 = weights
    b1, b2 = biases
    return tf.nn.relu(x @ w1 + b1) @ w2 + b2


def np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def np_grads(w1, w2, b1, b2, x, y, temperature=1.0):
    """dL/dW1, dL/dW2 of mean cross-entropy(softmax(logits / T)), by hand, float64."""
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    logits = (h @ w2 + b2) / temperature
    p = np_softmax(logits)
    onehot = np.eye(w2.shape[1])[y]
    d_logits = (p - onehot) / len(x) / temperature
    d_w2 = h.T @ d_logits
    d_h = d_logits @ w2.T
    d_w1 = x.T @ (d_h * (pre > 0))
    return d_w1, d_w2


@pytest.fixture(scope="module")
def tiny():
    x = RNG.normal(size=(12, 5))
    y = np.arange(12) % 3
    w1 = RNG.normal(size=(5, 7)) * 0.6
    w2 = RNG.normal(size=(7, 3)) * 0.6
    b1 = RNG.normal(size=7) * 0.1
    b2 = RNG.normal(size=3) * 0.1
    return x, y, w1, w2, b1, b2


def _tf_parts(tiny):
    x, y, w1, w2, b1, b2 = tiny
    f32 = lambda a: tf.constant(a, tf.float32)  # noqa: E731
    biases = [f32(b1), f32(b2)]
    forward = lambda w, inputs: mlp_forward(w, inputs, biases)  # noqa: E731
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return forward, loss, [f32(w1), f32(w2)], f32(x), tf.constant(y)


def test_magnitude_and_random():
    w = [tf.constant([[-2.0, 0.5], [0.0, 3.0]])]
    assert scores.magnitude(w)[0].numpy().tolist() == [[2.0, 0.5], [0.0, 3.0]]
    a = scores.random([tf.zeros((4, 5)), tf.zeros(3)], seed=7)
    b = scores.random([tf.zeros((4, 5)), tf.zeros(3)], seed=7)
    c = scores.random([tf.zeros((4, 5)), tf.zeros(3)], seed=8)
    assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a, b))
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
    # Different tensors of one call get different streams.
    assert not np.array_equal(a[0].numpy().ravel()[:3], a[1].numpy())
    assert all(((s.numpy() >= 0) & (s.numpy() < 1)).all() for s in a)


def test_loss_gradients_and_snip_match_hand_derivation(tiny):
    x, y, w1, w2, b1, b2 = tiny
    forward, loss, weights, tx, ty = _tf_parts(tiny)
    grads = scores.loss_gradients(forward, loss, weights, tx, ty)
    ref = np_grads(w1, w2, b1, b2, x, y)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-6)
    snip = scores.snip(weights, grads)
    for s, w, r in zip(snip, (w1, w2), ref):
        np.testing.assert_allclose(s.numpy(), np.abs(w * r), rtol=1e-4, atol=1e-6)


def test_temperature_scales_logits(tiny):
    x, y, w1, w2, b1, b2 = tiny
    forward, loss, weights, tx, ty = _tf_parts(tiny)
    grads = scores.loss_gradients(forward, loss, weights, tx, ty, temperature=200.0)
    ref = np_grads(w1, w2, b1, b2, x, y, temperature=200.0)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-3, atol=1e-9)


def test_hessian_gradient_product_matches_finite_differences(tiny):
    x, y, w1, w2, b1, b2 = tiny
    temperature = 2.0
    forward, loss, weights, tx, ty = _tf_parts(tiny)
    g = scores.loss_gradients(forward, loss, weights, tx, ty, temperature=temperature)
    hg = scores.hessian_gradient_product(forward, loss, weights, g, tx, ty, temperature=temperature)

    # Independent: central differences of the hand-written float64 gradient along v = g.
    v1, v2 = np_grads(w1, w2, b1, b2, x, y, temperature)
    eps = 1e-5
    plus = np_grads(w1 + eps * v1, w2 + eps * v2, b1, b2, x, y, temperature)
    minus = np_grads(w1 - eps * v1, w2 - eps * v2, b1, b2, x, y, temperature)
    fd = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
    scale = max(np.abs(f).max() for f in fd)
    for h, f in zip(hg, fd):
        np.testing.assert_allclose(h.numpy(), f, atol=2e-3 * scale)
    # GraSP score is -w * Hg.
    for s, w, f in zip(scores.grasp(weights, hg), (w1, w2), fd):
        np.testing.assert_allclose(s.numpy(), -w * f, atol=2e-3 * scale * np.abs(w).max())


def test_hessian_gradient_product_matches_explicit_hessian():
    # A smooth 2-layer tanh net, small enough for the full Hessian (tf.hessians on one flat
    # vector), which is computed independently of the nested-tape product.
    x = tf.constant(RNG.normal(size=(6, 3)), tf.float64)
    y = tf.constant(RNG.normal(size=(6, 2)), tf.float64)
    theta = tf.constant(RNG.normal(size=3 * 4 + 4 * 2) * 0.7, tf.float64)
    v = tf.constant(RNG.normal(size=theta.shape[0]), tf.float64)

    def unflatten(t):
        return [tf.reshape(t[:12], (3, 4)), tf.reshape(t[12:], (4, 2))]

    def forward(w, inputs):
        return tf.tanh(inputs @ w[0]) @ w[1]

    def mse(y_true, y_pred):
        return tf.reduce_mean((y_true - y_pred) ** 2)

    @tf.function
    def full_hessian(t):
        return tf.hessians(mse(y, forward(unflatten(t), x)), t)[0]

    expected = full_hessian(theta).numpy() @ v.numpy()
    hv = scores.hessian_gradient_product(forward, mse, unflatten(theta), unflatten(v), x, y)
    got = np.concatenate([h.numpy().ravel() for h in hv])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_synflow_matches_closed_form_on_linear_chain():
    # R = 1^T |W1| |W2| |W3| 1, so dR/dW_l[i, j] = (1^T |W1|..|W_{l-1}|)_i (|W_{l+1}|..|W_L| 1)_j.
    shapes = [(4, 6), (6, 5), (5, 3)]
    ws = [RNG.normal(size=s) for s in shapes]
    forward = lambda w, x: x @ w[0] @ w[1] @ w[2]  # noqa: E731
    got = scores.synflow(forward, [tf.constant(w) for w in ws], tf.ones((1, 4), tf.float64))
    a = [np.abs(w) for w in ws]
    for layer in range(3):
        left = np.ones(4)
        for m in a[:layer]:
            left = left @ m
        right = np.ones(3)
        for m in reversed(a[layer + 1 :]):
            right = m @ right
        expected = a[layer] * np.outer(left, right)
        np.testing.assert_allclose(got[layer].numpy(), expected, rtol=1e-12)
    # Conservation: every layer carries the same total flow R.
    totals = [float(tf.reduce_sum(s)) for s in got]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-12)


def test_synflow_uses_absolute_weights():
    forward = lambda w, x: x @ w[0]  # noqa: E731
    s = scores.synflow(forward, [tf.constant([[-2.0, 3.0]])], tf.ones((1, 1)))
    assert s[0].numpy().tolist() == [[2.0, 3.0]]
