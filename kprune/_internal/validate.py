"""Argument checks shared by constructors and workflows: clear errors that repeat the value.

Example:

>>> check_sparsity("sparsity", 0.9)
0.9
"""

from __future__ import annotations

import numbers

__all__ = ["check_sparsity", "check_integer", "check_number", "check_choice"]


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


# -- generic checks (workflows) ---------------------------------------------------------------
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
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{what} must be in {interval}. Received: {name}={value!r}")
    return value


def check_choice(name, value, choices):
    """`value` if it is one of the strings `choices`; ValueError naming them otherwise.

    Example:

    >>> check_choice("optimizer", "rmsprop", ("sgd", "adam"))
    Traceback (most recent call last):
    ValueError: `optimizer` must be one of ('sgd', 'adam'). Received: optimizer='rmsprop'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value
