"""Argument checks shared by constructors and workflows: clear errors that repeat the value.

Example:

>>> check_sparsity("sparsity", 0.9)
0.9
"""

from __future__ import annotations

import numbers

__all__ = ["check_sparsity", "check_integer"]


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
