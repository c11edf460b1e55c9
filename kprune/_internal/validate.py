"""Argument checks shared by constructors and workflows: clear errors that repeat the value.

One rule for every module: an integer argument takes any `numbers.Integral` (Python and numpy
integers) and refuses bools and floats, even integral ones such as `2.0`; a number argument
takes any real number except bools. Every check raises `ValueError` naming the argument, the
allowed range and the value received.

Example:

>>> check_sparsity("sparsity", 0.9)
0.9
>>> check_integer("end_step", 2.0, 0)
Traceback (most recent call last):
ValueError: `end_step` must be an integer >= 0. Received: end_step=2.0
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_choice",
    "check_image_shape",
    "check_integer",
    "check_number",
    "check_sparsity",
]


def check_sparsity(name, value):
    """`value` as a float in [0, 1); ValueError naming `name` and the value otherwise.

    Example:

    >>> check_sparsity("final_sparsity", 1.0)
    Traceback (most recent call last):
    ValueError: `final_sparsity` must be in [0, 1). Received: final_sparsity=1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)


def check_integer(name, value, minimum):
    """`value` as an int >= `minimum` (an integral type, not bool); ValueError otherwise.

    Example:

    >>> check_integer("rounds", 0, 1)
    Traceback (most recent call last):
    ValueError: `rounds` must be an integer >= 1. Received: rounds=0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_number(name, value, *, minimum=None, maximum=None, open_min=False, open_max=False):
    """`value` as a finite float within the bounds given; ValueError otherwise.

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        minimum, maximum: bounds (None: unbounded on that side).
        open_min, open_max: whether the bound itself is excluded.

    Example:

    >>> check_number("candidate_rate", 0.0, minimum=0, maximum=1, open_min=True)
    Traceback (most recent call last):
    ValueError: `candidate_rate` must be a number in (0, 1]. Received: candidate_rate=0.0
    """
    if minimum is not None and maximum is not None:
        allowed = f"in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"
    elif minimum is not None:
        allowed = f"{'>' if open_min else '>='} {minimum}"
    elif maximum is not None:
        allowed = f"{'<' if open_max else '<='} {maximum}"
    else:
        allowed = "(finite)"
    message = f"`{name}` must be a number {allowed}. Received: {name}={value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(message)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(message)
    if minimum is not None and (value <= minimum if open_min else value < minimum):
        raise ValueError(message)
    if maximum is not None and (value >= maximum if open_max else value > maximum):
        raise ValueError(message)
    return value


def check_choice(name, value, choices):
    """`value` if it is one of `choices`; ValueError listing them otherwise.

    Example:

    >>> check_choice("scope", "row", ("layer", "global"))
    Traceback (most recent call last):
    ValueError: `scope` must be one of ('layer', 'global'). Received: scope='row'
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def check_image_shape(model_name, shape, min_size):
    """`shape` as a tuple if it is `(height, width, channels)` of at least `min_size` pixels.

    Example:

    >>> check_image_shape("vgg16", (16, 16, 3), 32)
    Traceback (most recent call last):
    ValueError: vgg16 needs images of shape (height, width, channels) of at least 32x32. \
Received: input_shape=(16, 16, 3)
    """
    shape = tuple(shape)
    if len(shape) != 3 or min(shape[:2]) < min_size:
        raise ValueError(
            f"{model_name} needs images of shape (height, width, channels) of at least "
            f"{min_size}x{min_size}. Received: input_shape={shape}"
        )
    return shape


# -- (validators added by other modules go below) --
