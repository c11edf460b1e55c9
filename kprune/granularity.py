"""What one pruning decision removes: a single weight, a whole channel, or N of M weights.

`parse_granularity` reads the `granularity=` argument of `kprune.prune` and
`kprune.prune_at_init` (and `--granularity` on the command line) in one place:

* `"weight"`: single weights (the default);
* `"channel"`: whole output channels, traced through the graph (`kprune.structured`);
* `"N:M"` with integers `0 < N < M` (`"2:4"`, `"1:4"`, `"4:8"`, `"2:16"`): semi-structured
  sparsity. In every group of M consecutive weights along a kernel's *input* axis, N survive.

The input axis is the axis a kernel sums over for one output, the one sparse matrix hardware
(2:4 sparse tensor cores) groups along: for a Dense kernel `(in, out)` axis 0, so a group is M
consecutive input rows of one output column; for a Conv1D/2D/3D kernel `(..., in, out)` the
input-channel axis (`ndim - 2`), so a group is M consecutive input channels at one kernel
position of one filter. `nm_axis` says which kernels have such an axis: Dense and
Conv1D/2D/3D kernels only (grouped convolutions included, their axis being the channels of
one group). Other weights (depthwise, transposed and separable convolutions, Embedding,
EinsumDense, RNN cells) have no N:M rule; `kprune.prune` leaves their layers dense and
lists them. A kernel whose input axis is not a multiple of M (an RGB stem has 3 input
channels) cannot be split into whole groups and is left dense the same way.

Example:

>>> parse_granularity("2:4")
Granularity(kind='nm', n=2, m=4)
>>> str(parse_granularity("weight")), parse_granularity("1:8").sparsity
('weight', 0.875)
>>> nm_pattern_holds(np.array([[1.0, 0.0, 0.0, 3.0]]), 2, 4, axis=1)
True
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from kprune._internal.walk import variable_path

__all__ = ["GRANULARITY_FORMS", "Granularity", "nm_axis", "nm_pattern_holds", "parse_granularity"]

GRANULARITY_FORMS = '"weight", "channel" or "N:M" with integers 0 < N < M (e.g. "2:4")'

# A target sparsity this close to 1 - N/M means the full pattern (float schedules).
NM_TOLERANCE = 1e-6

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Granularity:
    """A parsed granularity: `kind` is `"weight"`, `"channel"` or `"nm"` (then `n`, `m` set).

    `str()` gives the string it was parsed from (`"2:4"`), which is what configs store.

    Example:

    >>> g = Granularity("nm", 2, 4)
    >>> str(g), g.is_nm, g.sparsity
    ('2:4', True, 0.5)
    """

    kind: str
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self):
        return self.kind == "nm"

    @property
    def sparsity(self):
        """The sparsity of the full pattern, `1 - N/M` (None unless N:M)."""
        return 1.0 - self.n / self.m if self.is_nm else None

    def __str__(self):
        return f"{self.n}:{self.m}" if self.is_nm else self.kind


def parse_granularity(value):
    """A `Granularity` from `"weight"`, `"channel"`, `"N:M"` or a `Granularity`.

    Raises:
        ValueError: anything else (`"abc"`, `"3:2"`, `"0:4"`, `"2:0"`, `"2.5:4"`); the message
            names the valid forms and repeats the value.

    Example:

    >>> parse_granularity("4:2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: granularity '4:2' needs N < M (N of every M weights survive); valid forms: ...
    """
    if isinstance(value, Granularity):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"`granularity` must be a string: {GRANULARITY_FORMS}. Received: granularity={value!r}"
        )
    if value in ("weight", "channel"):
        return Granularity(value)
    match = _NM.match(value)
    if match is None:
        raise ValueError(f"Unknown granularity {value!r}; valid forms: {GRANULARITY_FORMS}.")
    n, m = int(match.group(1)), int(match.group(2))
    if n <= 0 or m <= 0:
        raise ValueError(
            f"granularity {value!r} needs N > 0 and M > 0; valid forms: {GRANULARITY_FORMS}."
        )
    if n >= m:
        raise ValueError(
            f"granularity {value!r} needs N < M (N of every M weights survive); valid forms: "
            f"{GRANULARITY_FORMS}."
        )
    return Granularity("nm", n, m)


def nm_axis(layer, variable):
    """The input axis of `variable`, a weight of `layer`, for N:M groups; None if it has none.

    Dense kernels: 0. Conv1D/2D/3D kernels: `ndim - 2` (input channels). Anything else:
    None (see the module docstring).

    Example:

    >>> conv = keras.layers.Conv2D(8, 3)
    >>> conv.build((None, 16, 16, 4))
    >>> nm_axis(conv, conv.kernel), nm_axis(conv, conv.bias)
    (2, None)
    """
    kernels = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    if isinstance(layer, kernels) and variable is getattr(layer, "kernel", None):
        return len(variable.shape) - 2
    return None


def nm_problem(layer, variable, m):
    """Why `variable` cannot hold an N:M pattern with groups of `m` (a phrase), or None.

    Example:

    >>> dense = keras.layers.Dense(2)
    >>> dense.build((None, 6))
    >>> nm_problem(dense, dense.kernel, 4)
    'input axis 0 has length 6, not a multiple of 4'
    """
    axis = nm_axis(layer, variable)
    if axis is None:
        return f"no N:M rule for a {type(layer).__name__} weight"
    length = int(variable.shape[axis])
    if length % m:
        return f"input axis {axis} has length {length}, not a multiple of {m}"
    return None


def nm_problems(layer, weights, m):
    """One line for each of `weights` (of `layer`) that cannot hold N:M groups of `m`.

    A line reads `"<layer>/<path> <shape>: <why>"`, the path being the weight's place inside
    `layer` (`variable_path`); the list is empty when every weight can hold the pattern.
    `kprune.prune` leaves the layers it names dense (with a warning); `PruningWrapper` refuses
    them.

    Example:

    >>> dense = keras.layers.Dense(2, name="fc")
    >>> dense.build((None, 6))
    >>> for line in nm_problems(dense, [dense.kernel, dense.bias], 4):
    ...     print(line)
    fc/kernel (6, 2): input axis 0 has length 6, not a multiple of 4
    fc/bias (2,): no N:M rule for a Dense weight
    """
    return [
        f"{'/'.join((layer.name, *variable_path(layer, w)))} {tuple(w.shape)}: {problem}"
        for w in weights
        if (problem := nm_problem(layer, w, m))
    ]


def nm_pattern_holds(array, n, m, axis):
    """Whether every group of `m` consecutive entries along `axis` has at most `n` non-zeros.

    False when the axis length is not a multiple of `m` (the groups are not whole). A group
    with fewer than `n` non-zeros (weights that happen to be zero) still holds the pattern:
    sparse hardware needs at most N values per group.

    Example:

    >>> w = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # (in=4, out=2)
    >>> nm_pattern_holds(w, 2, 4, axis=0), nm_pattern_holds(w, 1, 4, axis=0)
    (True, False)
    """
    array = np.asarray(array)
    axis = axis % array.ndim
    length = array.shape[axis]
    if length % m:
        return False
    moved = np.moveaxis(array != 0, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], length // m, m)
    return bool((groups.sum(axis=-1) <= n).all())
