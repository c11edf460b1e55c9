"""VGG networks for 32x32 images, as used by SNIP (VGG-like) and GraSP (VGG-19).

* `vgg_like`: the CIFAR-10 "VGG-like" of SNIP (Lee et al., 2019), itself Zagoruyko's CIFAR
  adaptation of VGG-16 (configuration D): thirteen 3x3 convolutions with bias, each followed by
  BatchNorm and ReLU, five 2x2 max-poolings, then fc 512 + BatchNorm + ReLU and the classifier.
  No dropout (SNIP replaces it by BatchNorm). 14,982,474 trainable parameters without
  BatchNorm's scale/offset on CIFAR-10 (about 15.0M), 14,991,946 with them.
* `vgg19`: the VGG-19 of GraSP (Wang et al., 2020): sixteen 3x3 convolutions with bias +
  BatchNorm + ReLU (configuration E without the last pooling), 2x2 average pooling to 1x1, one
  linear classifier. 20,040,522 trainable parameters on CIFAR-10 (about 20.0M).

The average pooling before the classifier is a global average here, which is the same
operation on 32x32 inputs and also accepts other image sizes.

Example:

>>> model = vgg19((32, 32, 3), 10)
>>> len([layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)])
16
"""

from __future__ import annotations

import keras

from kprune._internal.validate import check_image_shape

__all__ = ["vgg_like", "vgg19"]

# "M" is a 2x2 max-pooling; numbers are the filters of 3x3 convolutions.
_VGG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG_19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M")
_VGG_19 += (512, 512, 512, 512)

# PyTorch's BatchNorm defaults (momentum 0.1 of the new value, eps 1e-5), which the reference
# implementations use; Keras' own defaults (0.99, 1e-3) average over ten times more batches.
_BN = {"momentum": 0.9, "epsilon": 1e-5}


def _features(x, config, kernel_initializer):
    block, index = 1, 1
    for item in config:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
            block, index = block + 1, 1
            continue
        prefix = f"block{block}_conv{index}"
        x = keras.layers.Conv2D(
            item, 3, padding="same", kernel_initializer=kernel_initializer, name=prefix
        )(x)
        x = keras.layers.BatchNormalization(**_BN, name=f"{prefix}_bn")(x)
        x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        index += 1
    return x


def vgg_like(input_shape, num_classes, *, kernel_initializer="he_normal"):
    """SNIP's VGG-like network for CIFAR (VGG-16 D convolutions, one 512-unit fc), logits out.

    Args:
        input_shape: `(height, width, channels)`, at least 32x32.
        num_classes: number of output logits.
        kernel_initializer: initializer of convolution and hidden dense kernels.

    Returns:
        A functional `keras.Model` named "vgg_like".

    Example:

    >>> vgg_like((32, 32, 3), 10).get_layer("fc1").units
    512
    """
    shape = check_image_shape("vgg_like", input_shape, 32)
    inputs = keras.Input(shape=shape, name="image")
    x = _features(inputs, _VGG_D, kernel_initializer)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(512, kernel_initializer=kernel_initializer, name="fc1")(x)
    x = keras.layers.BatchNormalization(**_BN, name="fc1_bn")(x)
    x = keras.layers.ReLU(name="fc1_relu")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg_like")


def vgg19(input_shape, num_classes, *, kernel_initializer="he_normal"):
    """GraSP's VGG-19 with BatchNorm for CIFAR, returning logits.

    Args:
        input_shape: `(height, width, channels)`, at least 32x32.
        num_classes: number of output logits.
        kernel_initializer: initializer of the convolution kernels.

    Returns:
        A functional `keras.Model` named "vgg19".

    Example:

    >>> vgg19((32, 32, 3), 100).output_shape
    (None, 100)
    """
    shape = check_image_shape("vgg19", input_shape, 32)
    inputs = keras.Input(shape=shape, name="image")
    x = _features(inputs, _VGG_19, kernel_initializer)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg19")
