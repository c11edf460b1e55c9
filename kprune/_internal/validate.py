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
    "check_fraction",
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


def _interval(low, high, low_open, high_open):
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def check_number(name, value, low=None, high=None, *, low_open=False, high_open=False, meaning=""):
    """`value` if it is a real number (not bool) within the interval; ValueError otherwise.

    Args:
        name: the argument's name, repeated in the message.
        value: what was received.
        low, high: bounds (None: unbounded), closed unless `low_open` / `high_open`.
        meaning: optional words on what the argument is, put into the message.

    Example:

    >>> check_number("momentum", 0.9, 0.0, 1.0, high_open=True)
    0.9
    >>> check_number("rate", 1.0, 0, 1, low_open=True, high_open=True, meaning="pruned per round")
    Traceback (most recent call last):
    ValueError: `rate` (pruned per round) must be in (0, 1). Received: rate=1.0
    """
    what = f"`{name}` ({meaning})" if meaning else f"`{name}`"
    interval = _interval(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number in {interval}. Received: {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(
            f"{what} must be a finite number in {interval}. Received: {name}={value!r}"
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{what} must be in {interval}. Received: {name}={value!r}")
    return value


def check_choice(name, value, choices):
    """`value` if it is one of `choices`; ValueError listing them otherwise.

    Example:

    >>> check_choice("scope", "row", ("layer", "global"))
    Traceback (most recent call last):
    ValueError: `scope` must be one of ('layer', 'global'). Received: scope='row'
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
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


def check_fraction(name, value):
    """`value` as a float in [0, 1], both ends included; ValueError naming `name` otherwise.

    For shares and agreement rates, where 1.0 is a valid request (unlike a sparsity).

    Example:

    >>> check_fraction("min_fp32_agreement", 1)
    1.0
    >>> check_fraction("min_fp32_agreement", 1.5)
    Traceback (most recent call last):
    ValueError: `min_fp32_agreement` must be in [0, 1]. Received: min_fp32_agreement=1.5
    """
    return float(check_number(name, value, 0, 1))


def interval_text(low=None, high=None, *, low_open=False, high_open=False):
    """How error messages write the interval of allowed values ("in [0, 1)", "> 0").

    Example:

    >>> interval_text(0.0, 1.0, high_open=True), interval_text(0.0, low_open=True)
    ('in [0, 1)', '> 0')
    """
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def in_interval(value, low=None, high=None, *, low_open=False, high_open=False):
    """Whether `value` lies in the interval (an end that is None is unbounded).

    Example:

    >>> in_interval(1.0, 0.0, 1.0, high_open=True), in_interval(0.5, 0.0, 1.0)
    (False, True)
    """
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


# -- generic checks for command-line tools (tools/) and data loading ---------------------------
# Appended here, not to the list at the top, so that helpers adding checks do not collide.
__all__ += ["check_at_least", "check_between", "check_choices"]


def check_at_least(name, value, minimum):
    """`value` if it is a number (not bool) >= `minimum`; ValueError naming `name` otherwise.

    `name` is written as the user typed it, e.g. a command-line flag `--seeds`.

    Example:

    >>> check_at_least("--seeds", 3, 1)
    3
    >>> check_at_least("--seeds", 0, 1)
    Traceback (most recent call last):
    ValueError: --seeds must be at least 1. Received: --seeds=0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= minimum:
        raise ValueError(f"{name} must be at least {minimum}. Received: {name}={value!r}")
    return value


def check_between(name, value, low, high):
    """`value` as a float strictly between `low` and `high`; ValueError naming `name` otherwise.

    Example:

    >>> check_between("--sparsity", 0.9, 0, 1)
    0.9
    >>> check_between("--sparsity", 1.0, 0, 1)
    Traceback (most recent call last):
    ValueError: --sparsity must be in (0, 1). Received: --sparsity=1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
        raise ValueError(f"{name} must be in ({low}, {high}). Received: {name}={value!r}")
    return float(value)


def check_choices(name, values, allowed, what="value(s)"):
    """`values` as a tuple if there is at least one and each is in `allowed`; ValueError else.

    The message lists the unknown values, repeats the input and lists what is allowed.

    Example:

    >>> check_choices("--models", ["vgg"], ("vgg", "resnet"))
    ('vgg',)
    >>> check_choices("--models", ["lenet", "vgg"], ("vgg", "resnet"), "model(s)")
    Traceback (most recent call last):
    ValueError: --models: unknown model(s) ['lenet'] in --models=lenet,vgg. Available: vgg, resnet.
    """
    values = tuple(values)
    unknown = [value for value in values if value not in allowed]
    if not values or unknown:
        raise ValueError(
            f"{name}: unknown {what} {unknown or '(none given)'} in {name}={','.join(values)}. "
            f"Available: {', '.join(allowed)}."
        )
    return values
