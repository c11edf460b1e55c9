"""Importance scores: higher means more worth keeping. Pure tensors in, tensors out.

Scores that need the network take it as a pure function `forward(weights, x) -> outputs`, where
`weights` is the list of prunable weight tensors to use in place of the model's own (see
`kprune.workflows.at_init`, which builds it from a Keras model without touching the model's
variables).
Gradients are taken with `tf.GradientTape`; nothing here creates or assigns variables, so every
function can run eagerly or inside `tf.function`.

| method    | score (higher = keep)                      | helper                            |
|-----------|--------------------------------------------|-----------------------------------|
| magnitude | `|w|`                                      |                                   |
| random    | uniform in [0, 1), from a seed             |                                   |
| SNIP      | `|g * w|`                                  | `loss_gradients`                  |
| GraSP     | `-w * (H g)`; the *highest* are removed    | `hessian_gradient_product`        |
| SynFlow   | `|w * dR/dw|`, `R = sum(f_|w|(ones))`      |                                   |

Example:

>>> [s.numpy().tolist() for s in magnitude([tf.constant([-2.0, 0.5])])]
[[2.0, 0.5]]
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "magnitude",
    "random",
    "loss_gradients",
    "hessian_gradient_product",
    "snip",
    "grasp",
    "synflow",
]


def magnitude(weights):
    """|w| for every tensor of `weights` (a list), as float32.

    Example:

    >>> magnitude([tf.constant([[1.0, -3.0]])])[0].numpy().tolist()
    [[1.0, 3.0]]
    """
    return [tf.abs(tf.cast(w, tf.float32)) for w in weights]


def random(weights, seed=0):
    """Uniform random scores in [0, 1), one per weight; the same `seed` gives the same scores.

    Tensor `i` draws from the stateless seed `(seed, i)`, so scores do not depend on any global
    random state.

    Example:

    >>> a = random([tf.zeros((2, 3))], seed=1)[0]
    >>> b = random([tf.zeros((2, 3))], seed=1)[0]
    >>> bool(tf.reduce_all(a == b))
    True
    """
    return [
        tf.random.stateless_uniform(tf.shape(w), seed=[int(seed), i], dtype=tf.float32)
        for i, w in enumerate(weights)
    ]


def _scalar_loss(loss, y, outputs, sample_weight):
    value = loss(y, outputs) if sample_weight is None else loss(y, outputs, sample_weight)
    # Plain functions (e.g. keras.losses.sparse_categorical_crossentropy) return one value per
    # example; Keras Loss objects already reduce.
    return tf.reduce_mean(value)


def loss_gradients(forward, loss, weights, x, y, sample_weight=None, temperature=1.0):
    """`dL/dw` on one batch, with `L = loss(y, forward(weights, x) / temperature)`.

    Args:
        forward: `forward(weights, x) -> outputs`, a pure function of the weight tensors.
        loss: `loss(y_true, y_pred[, sample_weight])`, reduced to a scalar by its mean.
        weights: list of tensors.
        x, y, sample_weight: one batch.
        temperature: the outputs are divided by it before the loss (GraSP uses 200).

    Returns:
        A list of tensors shaped like `weights` (zeros for weights the loss does not reach).

    Example:

    >>> forward = lambda w, x: x @ w[0]
    >>> mse = lambda y, p: (y - p) ** 2
    >>> loss_gradients(forward, mse, [tf.constant([[2.0]])], tf.constant([[1.0]]),
    ...                tf.constant([[0.0]]))[0].numpy().tolist()
    [[4.0]]
    """
    weights = [tf.convert_to_tensor(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        outputs = forward(weights, x)
        if temperature != 1.0:
            outputs = outputs / tf.cast(temperature, outputs.dtype)
        value = _scalar_loss(loss, y, outputs, sample_weight)
    return tape.gradient(value, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def hessian_gradient_product(
    forward, loss, weights, vector, x, y, sample_weight=None, temperature=1.0
):
    """`H v` on one batch by double backpropagation (two nested gradient tapes).

    `H` is the Hessian of `L = loss(y, forward(weights, x) / temperature)` with respect to
    `weights`; `vector` is held constant (`stop_gradient`). The inner tape gives `g_b = dL/dw`
    with its graph kept, the outer one differentiates `z = sum(v * g_b)`, whose gradient is
    `H v`. Memory: the forward and backward graph of one batch, kept for a second backward pass.

    Args:
        forward, loss, weights, x, y, sample_weight, temperature: as in `loss_gradients`.
        vector: list of tensors shaped like `weights` (GraSP: the gradient g).

    Returns:
        A list of tensors shaped like `weights`.

    Example:

    >>> forward = lambda w, x: x * w[0] ** 2            # L = (x w^2)^2 / 2, H = 6 x^2 w^2
    >>> half_square = lambda y, p: 0.5 * p**2
    >>> hessian_gradient_product(forward, half_square, [tf.constant(1.0)], [tf.constant(2.0)],
    ...                          tf.constant(1.0), None)[0].numpy().tolist()
    12.0
    """
    weights = [tf.convert_to_tensor(w) for w in weights]
    vector = [tf.stop_gradient(tf.convert_to_tensor(v)) for v in vector]
    with tf.GradientTape() as outer:
        outer.watch(weights)
        with tf.GradientTape() as inner:
            inner.watch(weights)
            outputs = forward(weights, x)
            if temperature != 1.0:
                outputs = outputs / tf.cast(temperature, outputs.dtype)
            value = _scalar_loss(loss, y, outputs, sample_weight)
        grads = inner.gradient(value, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        z = tf.add_n([tf.reduce_sum(v * g) for v, g in zip(vector, grads)])
    return outer.gradient(z, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def snip(weights, gradients):
    """SNIP connection sensitivity `|g * w|` (Lee et al., 2019).

    The published score is normalised by its sum; that does not change the ranking, so it is
    left out.

    Example:

    >>> snip([tf.constant([2.0, -1.0])], [tf.constant([0.5, 3.0])])[0].numpy().tolist()
    [1.0, 3.0]
    """
    return [tf.abs(w * g) for w, g in zip(weights, gradients)]


def grasp(weights, hessian_gradients):
    """GraSP score `-w * (H g)` (Wang et al., 2020). Remove the *highest*, keep the lowest.

    Removing a weight with a large score is predicted to help gradient flow least (or hurt it),
    so GraSP prunes from the top: rank by `-score` to use a "prune the lowest" selection.

    Example:

    >>> grasp([tf.constant([2.0, -1.0])], [tf.constant([1.0, 1.0])])[0].numpy().tolist()
    [-2.0, 1.0]
    """
    return [-w * hg for w, hg in zip(weights, hessian_gradients)]


def synflow(forward, weights, inputs):
    """SynFlow synaptic saliency `|w * dR/dw|` with `R = sum(forward(|w|, inputs))`.

    Tanaka et al. (2020): all parameters are made non-negative and the network is fed an input
    of ones, so `R` is the total flow of "synaptic strength" through the network; a weight's
    score is how much of that flow passes through it. This function takes |w| of `weights`;
    the caller's `forward` must also use non-negative values for every other parameter (biases,
    normalization) and evaluation-mode normalization (`kprune.workflows.at_init` does both).
    Large nets
    overflow float32 (R grows like a product over layers): pass float64 weights and a float64
    `forward`.

    Example:

    >>> forward = lambda w, x: x @ w[0] @ w[1]     # a linear chain
    >>> s = synflow(forward, [tf.constant([[1.0, -2.0]]), tf.constant([[3.0], [4.0]])],
    ...             tf.ones((1, 1)))
    >>> [t.numpy().tolist() for t in s]
    [[[3.0, 8.0]], [[3.0], [8.0]]]
    """
    weights = [tf.abs(tf.convert_to_tensor(w)) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        total = tf.reduce_sum(forward(weights, inputs))
    grads = tape.gradient(total, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [tf.abs(w * g) for w, g in zip(weights, grads)]
