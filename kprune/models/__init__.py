"""Model zoo: the networks of the pruning papers kprune reproduces, and `keras.applications`.

Every builder is `fn(input_shape, num_classes, **kwargs) -> keras.Model`: a built functional
model that outputs logits (no softmax), with explicit, unique layer names (stable mask paths and
`exclude=` names). Input shape and class count come from the dataset.

| name           | network                                         | params (CIFAR-10 / MNIST) |
|----------------|-------------------------------------------------|---------------------------|
| `lenet300_100` | fc 300-100, MNIST                               | 266,610                   |
| `lenet5_caffe` | Caffe LeNet-5, MNIST                            | 431,080                   |
| `vgg_like`     | SNIP's VGG-like (VGG-16 D convs, fc 512, BN)    | ~15.0M                    |
| `vgg19`        | GraSP's VGG-19 with BatchNorm                   | ~20.0M                    |
| `resnet18`     | ResNet-18, 3x3 stem, no max-pool                | ~11.2M                    |
| `resnet50`     | ResNet-50 (bottleneck), 3x3 stem, no max-pool   | ~23.5M                    |
| `resnet20/32`  | He et al.'s CIFAR ResNets                       | ~0.27M / ~0.46M           |

Parameter counts are PyTorch-style (trainable parameters; Keras' `count_params()` also counts
BatchNorm's moving statistics).

Example:

>>> model = build_model("lenet300_100", (28, 28, 1), 10)
>>> model.count_params()
266610
>>> build_model("MobileNetV2", (32, 32, 3), 10).name
'mobilenetv2_1.00_32'
"""

from __future__ import annotations

import keras

from kprune._internal.validate import check_integer
from kprune.models.lenet import lenet5_caffe, lenet300_100
from kprune.models.resnet import resnet18, resnet20, resnet32, resnet50
from kprune.models.vgg import vgg19, vgg_like

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "keras_application_names",
    "lenet300_100",
    "lenet5_caffe",
    "vgg_like",
    "vgg19",
    "resnet18",
    "resnet50",
    "resnet20",
    "resnet32",
]

_BUILDERS = {
    "lenet300_100": lenet300_100,
    "lenet5_caffe": lenet5_caffe,
    "vgg_like": vgg_like,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet20": resnet20,
    "resnet32": resnet32,
}

MODEL_NAMES = tuple(_BUILDERS)


def keras_application_names():
    """Names of the `keras.applications` model functions (e.g. "ResNet50", "MobileNetV2").

    Example:

    >>> "MobileNetV2" in keras_application_names()
    True
    """
    return tuple(
        sorted(
            name
            for name in dir(keras.applications)
            if name[:1].isupper() and callable(getattr(keras.applications, name))
        )
    )


def build_model(name, input_shape, num_classes, **kwargs):
    """Builds a zoo model, or a `keras.applications` model by its function name.

    Args:
        name: one of `MODEL_NAMES`, or a `keras.applications` name such as "MobileNetV2" or
            "ResNet50" (built with `weights=None`, `classes=num_classes` and logits out).
        input_shape: shape of one example, e.g. `(32, 32, 3)`.
        num_classes: number of output logits, >= 2.
        **kwargs: passed on to the builder (e.g. `shortcut="projection"` for resnet20/32).

    Returns:
        A built `keras.Model` that outputs logits.

    Raises:
        ValueError: unknown name (the message lists the valid ones), bad `num_classes`, or a
            shape the model cannot take.

    Example:

    >>> build_model("resnet20", (32, 32, 3), 10).name
    'resnet20'
    """
    num_classes = check_integer("num_classes", num_classes, 2)
    input_shape = tuple(int(d) for d in input_shape)
    if name in _BUILDERS:
        return _BUILDERS[name](input_shape, num_classes, **kwargs)
    applications = keras_application_names()
    if name not in applications:
        raise ValueError(
            f"Unknown model {name!r}. Valid kprune models: {', '.join(MODEL_NAMES)}; or any "
            f"keras.applications model by name, e.g. {', '.join(applications[:6])}, ... "
            f"({len(applications)} in all)."
        )
    builder = getattr(keras.applications, name)
    try:
        return builder(
            weights=None,
            input_shape=input_shape,
            classes=num_classes,
            classifier_activation=None,
            **kwargs,
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"keras.applications.{name} cannot be built for input_shape={input_shape}, "
            f"num_classes={num_classes}: {err}"
        ) from err
