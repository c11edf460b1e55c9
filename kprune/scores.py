"""Importance scores: higher means more worth keeping. Pure tensors in, tensors out.

Example:

>>> [s.numpy().tolist() for s in magnitude([tf.constant([-2.0, 0.5])])]
[[2.0, 0.5]]
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["magnitude"]


def magnitude(weights):
    """|w| for every tensor of `weights` (a list), as float32.

    Example:

    >>> magnitude([tf.constant([[1.0, -3.0]])])[0].numpy().tolist()
    [[1.0, 3.0]]
    """
    return [tf.abs(tf.cast(w, tf.float32)) for w in weights]
