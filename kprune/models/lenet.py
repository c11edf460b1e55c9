"""LeNet-300-100 and LeNet-5-Caffe, the MNIST networks of the pruning literature.

Both follow the layer sizes used by SNIP (Lee et al., 2019) and earlier by Han et al. (2015):

* LeNet-300-100: fully connected 784-300-100-10 with ReLU, 266,610 parameters on MNIST.
* LeNet-5-Caffe: the Caffe MNIST example, conv 5x5x20 -> max-pool -> conv 5x5x50 -> max-pool ->
  fc 500 (ReLU) -> fc 10, 431,080 parameters on MNIST. As in Caffe's prototxt, the
  convolutions have no activation of their own.

Example:

>>> model = lenet300_100((28, 28, 1), 10)
>>> model.count_params()
266610
"""

from __future__ import annotations

import keras

from kprune._internal.validate import check_image_shape

__all__ = ["lenet300_100", "lenet5_caffe"]


def lenet300_100(input_shape, num_classes, *, kernel_initializer="he_normal"):
    """Fully connected LeNet-300-100 (inputs are flattened), returning logits.

    Args:
        input_shape: shape of one example, e.g. `(28, 28, 1)`; any rank, it is flattened.
        num_classes: number of output logits.
        kernel_initializer: initializer of the hidden layers' kernels.

    Returns:
        A functional `keras.Model` named "lenet300_100".

    Example:

    >>> [layer.name for layer in lenet300_100((8, 8, 1), 10).layers[1:]]
    ['flatten', 'fc1', 'fc2', 'logits']
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(
        300, activation="relu", kernel_initializer=kernel_initializer, name="fc1"
    )(x)
    x = keras.layers.Dense(
        100, activation="relu", kernel_initializer=kernel_initializer, name="fc2"
    )(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet300_100")


def lenet5_caffe(input_shape, num_classes, *, kernel_initializer="he_normal"):
    """LeNet-5 as in Caffe's MNIST example (the "LeNet-5-Caffe" of SNIP), returning logits.

    Args:
        input_shape: `(height, width, channels)`, at least 16x16 (two 5x5 valid convolutions
            and two 2x2 poolings).
        num_classes: number of output logits.
        kernel_initializer: initializer of the convolution and hidden dense kernels.

    Returns:
        A functional `keras.Model` named "lenet5_caffe".

    Example:

    >>> lenet5_caffe((28, 28, 1), 10).count_params()
    431080
    """
    shape = check_image_shape("lenet5_caffe", input_shape, 16)
    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.Conv2D(20, 5, kernel_initializer=kernel_initializer, name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(50, 5, kernel_initializer=kernel_initializer, name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(
        500, activation="relu", kernel_initializer=kernel_initializer, name="fc1"
    )(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet5_caffe")
