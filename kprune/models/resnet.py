"""Residual networks for 32x32 images.

* `resnet18`, `resnet50`: the ImageNet ResNets (He et al., 2016) adapted to CIFAR in the way
  most pruning papers use them (e.g. the widely used kuangliu/pytorch-cifar models): a 3x3
  stride-1 stem convolution with 64 filters and no max-pooling, four stages of basic (ResNet-18,
  [2, 2, 2, 2]) or bottleneck (ResNet-50, [3, 4, 6, 3], expansion 4) blocks with 64, 128, 256,
  512 filters, 1x1 convolution + BatchNorm shortcuts where the shape changes, global average
  pooling and one linear classifier. Convolutions have no bias. 11,173,962 (ResNet-18) and
  23,520,842 (ResNet-50) trainable parameters on CIFAR-10.
* `resnet20`, `resnet32`: the CIFAR ResNets of He et al. (2016, section 4.2): a 3x3 stem with 16
  filters, three stages of n basic blocks (n = 3, 5) with 16, 32, 64 filters. Shortcuts are
  "option A" by default (identity; where the shape changes, subsample by 2 and pad the new
  channels with zeros), which gives the published 0.27M / 0.46M parameters;
  `shortcut="projection"` uses 1x1 convolution + BatchNorm shortcuts instead (as open_lth does).

All blocks are built from stock Keras layers, so saved models load without kprune.

Example:

>>> resnet20((32, 32, 3), 10).count_params() > 0
True
"""

from __future__ import annotations

import keras

from kprune._internal.validate import check_choice, check_image_shape

__all__ = ["resnet18", "resnet50", "resnet20", "resnet32"]

_BN = {"momentum": 0.9, "epsilon": 1e-5}  # PyTorch's defaults, as in the references
_SHORTCUTS = ("zero_pad", "projection")


def _conv(x, filters, kernel, stride, name, init):
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=init,
        name=name,
    )(x)


def _bn(x, name):
    return keras.layers.BatchNormalization(**_BN, name=name)(x)


def _projection(x, filters, stride, name, init):
    x = _conv(x, filters, 1, stride, f"{name}_shortcut_conv", init)
    return _bn(x, f"{name}_shortcut_bn")


def _zero_pad_shortcut(x, filters, stride, name):
    """Identity shortcut for a stage change: subsample by `stride`, zero-pad the channels.

    Stock layers only: a 1x1 max-pooling with stride 2 picks every other pixel, and the channel
    padding is a ZeroPadding3D on a (H, W, C, 1) view of the activations.
    """
    if stride != 1:
        x = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_shortcut_subsample")(x)
    height, width, channels = x.shape[1:]
    extra = filters - channels
    if extra:
        x = keras.layers.Reshape((height, width, channels, 1), name=f"{name}_shortcut_5d")(x)
        x = keras.layers.ZeroPadding3D(
            ((0, 0), (0, 0), (extra // 2, extra - extra // 2)), name=f"{name}_shortcut_pad"
        )(x)
        x = keras.layers.Reshape((height, width, filters), name=f"{name}_shortcut_4d")(x)
    return x


def _basic_block(x, filters, stride, name, init, shortcut="projection"):
    changes_shape = stride != 1 or x.shape[-1] != filters
    y = _conv(x, filters, 3, stride, f"{name}_conv1", init)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1"))
    y = _bn(_conv(y, filters, 3, 1, f"{name}_conv2", init), f"{name}_bn2")
    if changes_shape:
        if shortcut == "projection":
            x = _projection(x, filters, stride, name, init)
        else:
            x = _zero_pad_shortcut(x, filters, stride, name)
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, stride, name, init):
    out_filters = 4 * filters
    y = _conv(x, filters, 1, 1, f"{name}_conv1", init)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1"))
    y = _conv(y, filters, 3, stride, f"{name}_conv2", init)
    y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(y, f"{name}_bn2"))
    y = _bn(_conv(y, out_filters, 1, 1, f"{name}_conv3", init), f"{name}_bn3")
    if stride != 1 or x.shape[-1] != out_filters:
        x = _projection(x, out_filters, stride, name, init)
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _stem(inputs, filters, init):
    x = _conv(inputs, filters, 3, 1, "stem_conv", init)
    return keras.layers.ReLU(name="stem_relu")(_bn(x, "stem_bn"))


def _head(x, num_classes):
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


def _imagenet_style(name, input_shape, num_classes, blocks, bottleneck, init):
    shape = check_image_shape(name, input_shape, 8)
    inputs = keras.Input(shape=shape, name="image")
    x = _stem(inputs, 64, init)
    for stage, (filters, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            block_name = f"stage{stage}_block{index + 1}"
            if bottleneck:
                x = _bottleneck_block(x, filters, stride, block_name, init)
            else:
                x = _basic_block(x, filters, stride, block_name, init)
    return keras.Model(inputs, _head(x, num_classes), name=name)


def _cifar_style(name, input_shape, num_classes, blocks_per_stage, shortcut, init):
    check_choice("shortcut", shortcut, _SHORTCUTS)
    shape = check_image_shape(name, input_shape, 8)
    inputs = keras.Input(shape=shape, name="image")
    x = _stem(inputs, 16, init)
    for stage, filters in enumerate((16, 32, 64), start=1):
        for index in range(blocks_per_stage):
            stride = 2 if stage > 1 and index == 0 else 1
            block_name = f"stage{stage}_block{index + 1}"
            x = _basic_block(x, filters, stride, block_name, init, shortcut)
    return keras.Model(inputs, _head(x, num_classes), name=name)


def resnet18(input_shape, num_classes, *, kernel_initializer="he_normal"):
    """ResNet-18 for CIFAR (3x3 stem, no max-pool, ~11.2M parameters), returning logits.

    Args:
        input_shape: `(height, width, channels)`, e.g. `(32, 32, 3)`.
        num_classes: number of output logits.
        kernel_initializer: initializer of the convolution kernels.

    Returns:
        A functional `keras.Model` named "resnet18". The first convolution is "stem_conv".

    Example:

    >>> tuple(resnet18((32, 32, 3), 10).get_layer("stem_conv").kernel.shape)
    (3, 3, 3, 64)
    """
    return _imagenet_style(
        "resnet18", input_shape, num_classes, (2, 2, 2, 2), False, kernel_initializer
    )


def resnet50(input_shape, num_classes, *, kernel_initializer="he_normal"):
    """ResNet-50 for CIFAR (3x3 stem, bottleneck blocks, ~23.5M parameters), returning logits.

    Args:
        input_shape: `(height, width, channels)`, e.g. `(32, 32, 3)`.
        num_classes: number of output logits.
        kernel_initializer: initializer of the convolution kernels.

    Returns:
        A functional `keras.Model` named "resnet50". The first convolution is "stem_conv".

    Example:

    >>> resnet50((32, 32, 3), 10).output_shape
    (None, 10)
    """
    return _imagenet_style(
        "resnet50", input_shape, num_classes, (3, 4, 6, 3), True, kernel_initializer
    )


def resnet20(input_shape, num_classes, *, shortcut="zero_pad", kernel_initializer="he_normal"):
    """CIFAR ResNet-20 of He et al. (3 stages of 3 basic blocks, ~0.27M parameters).

    Args:
        input_shape: `(height, width, channels)`, e.g. `(32, 32, 3)`.
        num_classes: number of output logits.
        shortcut: `"zero_pad"` (option A of the paper, no parameters) or `"projection"`
            (1x1 convolution + BatchNorm where the shape changes, as in open_lth).
        kernel_initializer: initializer of the convolution kernels.

    Returns:
        A functional `keras.Model` named "resnet20".

    Example:

    >>> resnet20((32, 32, 3), 10, shortcut="projection").count_params() > 270_000
    True
    """
    return _cifar_style("resnet20", input_shape, num_classes, 3, shortcut, kernel_initializer)


def resnet32(input_shape, num_classes, *, shortcut="zero_pad", kernel_initializer="he_normal"):
    """CIFAR ResNet-32 of He et al. (3 stages of 5 basic blocks, ~0.46M parameters).

    Args:
        input_shape, num_classes, shortcut, kernel_initializer: as `resnet20`.

    Returns:
        A functional `keras.Model` named "resnet32".

    Example:

    >>> resnet32((32, 32, 3), 100).output_shape
    (None, 100)
    """
    return _cifar_style("resnet32", input_shape, num_classes, 5, shortcut, kernel_initializer)
