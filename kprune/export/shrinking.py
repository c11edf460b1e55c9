"""Which model an export writes: the stripped model, or the shrunk one of a channel-pruned model.

A model pruned with `granularity="channel"` computes with whole channels masked to zero; what
is worth deploying is the smaller model of `kprune.shrink()`, which computes the same outputs
with fewer parameters and MACs. `export(..., shrink=...)` decides:

* `"auto"` (the default): shrink when the model holds channel masks (`PruningWrapper`s made
  by `prune(..., granularity="channel")`); any other model is exported as before;
* `True`: shrink. A wrapped model needs channel masks; a plain model (e.g. the stripped
  `model.keras` of a `python -m kprune.train` run with channel pruning) loses every channel
  whose trainable weights are all zero (`kprune.structured.shrink.zero_channel_keep`; if there
  is none, a warning says so and the model is written whole);
* `False`: never shrink; channel-pruned models are exported with their zeros, like weight
  pruning.

The parity check then compares the exported files with the *masked* model (the one that was
trained), and the report gains a `shrink` section: parameters, MACs and bytes dense vs shrunk.

Example:

>>> import keras, kprune
>>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="h"),
...                           keras.layers.Dense(2, name="out")])
>>> pruned = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel")
>>> _ = kprune.bind_optimizer(pruned, keras.optimizers.SGD())[0].update(0.5)
>>> small, masked, section = _models_to_export(pruned, "auto")
>>> small.get_layer("h").units, masked.get_layer("h").units, section["params"]
(2, 4, {'dense': 38, 'shrunk': 20, 'ratio': 0.5263})
>>> _models_to_export(pruned, False)[2] is None
True
"""

from __future__ import annotations

import warnings

import numpy as np

from kprune._internal.walk import is_graph_model
from kprune.export.inputs import _plain_model
from kprune.masks import pruning_wrappers
from kprune.structured.engine import keep_counts
from kprune.structured.graph import trace_channels
from kprune.structured.macs import count_macs
from kprune.structured.shrink import _rebuild, channel_keep, zero_channel_keep

__all__ = ["SHRINK_MODES"]

SHRINK_MODES = ("auto", True, False)

KERAS_FILE = "model.keras"

# Shrunk and masked models differ only in the order of float sums: a bound far above float32
# rounding through a deep network, far below any real difference (a wrong slice).
SHRINK_TOLERANCE = 1e-3


def _check_shrink(shrink):
    if isinstance(shrink, bool) or shrink == "auto":
        return shrink
    raise ValueError(f"`shrink` must be 'auto', True or False. Received: shrink={shrink!r}")


def _ratio(new, old):
    return round(new / old, 4) if old else None


def _macs(model):
    """MACs per example, or None where `count_macs` cannot count (unknown shapes)."""
    try:
        return count_macs(model).macs
    except (TypeError, ValueError):
        return None


def _models_to_export(model, shrink):
    """`(model to export, model to compare with, shrink section of the report or None)`.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: `shrink=True` for a model with weight-level masks or a subclassed model.
    """
    plain = _plain_model(model)
    wrappers = pruning_wrappers(model)
    has_channel_masks = any(w.channel_weights is not None for w in wrappers)
    if shrink == "auto":
        shrink = has_channel_masks
    if not shrink:
        return plain, plain, None
    if has_channel_masks:
        keep = channel_keep(model)
        source = "channel masks of the pruned model"
        trace = trace_channels(plain)
    elif wrappers:
        raise ValueError(
            f"shrink=True, but the PruningWrappers of '{model.name}' hold weight-level masks: "
            "shrinking removes the channels of a model pruned with kprune.prune(..., "
            "granularity='channel'). Export it with shrink='auto' or False."
        )
    else:
        if not is_graph_model(plain):
            raise ValueError(
                f"shrink=True needs a Sequential or functional model; '{model.name}' is "
                f"subclassed ({type(model).__name__}). Export it with shrink='auto' or False."
            )
        trace = trace_channels(plain)
        keep = zero_channel_keep(plain, trace)
        source = "all-zero channels of the stripped model"
        if keep.all():  # e.g. a diverged run's NaN weights: export it, and say why it is whole
            warnings.warn(
                f"shrink=True, but '{model.name}' has no channel masks and no channel whose "
                "weights are all zero: nothing is removed (the report says 0 channels). Pass the "
                "model pruned with granularity='channel' (wrapped, or after kprune.strip()).",
                UserWarning,
                stacklevel=3,
            )
    small = _rebuild(plain, trace, keep)
    kept = keep_counts(trace, keep)
    channels = [
        {"layer": name, "kept": kept[name], "total": int(len(ids))}
        for name, ids in trace.producers.items()
        if (ids >= 0).any()
    ]
    dense_params, small_params = plain.count_params(), small.count_params()
    dense_macs, small_macs = _macs(plain), _macs(small)
    section = {
        "source": source,
        "params": {
            "dense": dense_params,
            "shrunk": small_params,
            "ratio": _ratio(small_params, dense_params),
        },
        "macs": {
            "dense": dense_macs,
            "shrunk": small_macs,
            "ratio": _ratio(small_macs, dense_macs) if small_macs is not None else None,
        },
        "channels_removed": int((~np.asarray(keep, bool)).sum()),
        "channels": channels,
        "bytes": {},
    }
    return small, plain, section


def _shrink_bytes(report):
    """Fills the section's `bytes`: every artifact, dense vs shrunk (the artifacts' sizes)."""
    section = report["shrink"]
    for name, entry in report["artifacts"].items():
        section["bytes"][name] = {
            "dense": entry["dense_bytes"],
            "shrunk": entry["bytes"],
            "ratio": _ratio(entry["bytes"], entry["dense_bytes"]),
        }


def _fmt(n):
    return "-" if n is None else f"{n:,}"


def format_shrink_lines(section):
    """The report's lines on a shrunk export: params, MACs and bytes dense -> shrunk.

    Example:

    >>> section = {"source": "channel masks of the pruned model", "channels_removed": 6,
    ...            "params": {"dense": 292, "shrunk": 148, "ratio": 0.5068},
    ...            "macs": {"dense": 7808, "shrunk": 3904, "ratio": 0.5},
    ...            "bytes": {"tflite": {"dense": 3000, "shrunk": 1800, "ratio": 0.6}},
    ...            "channels": [{"layer": "conv", "kept": 4, "total": 8}]}
    >>> print("\\n".join(format_shrink_lines(section)))  # doctest: +NORMALIZE_WHITESPACE
    shrunk (channel masks of the pruned model, 6 channels removed), dense -> shrunk:
    params 292 -> 148 (0.507x), MACs 7,808 -> 3,904 (0.500x), tflite bytes 3,000 -> 1,800
    (0.600x)
    channels kept: conv 4/8
    """
    parts = []
    for label, entry in [("params", section["params"]), ("MACs", section["macs"])] + [
        (f"{name} bytes", entry) for name, entry in section["bytes"].items()
    ]:
        ratio = "" if entry["ratio"] is None else f" ({entry['ratio']:.3f}x)"
        parts.append(f"{label} {_fmt(entry['dense'])} -> {_fmt(entry['shrunk'])}{ratio}")
    head = (
        f"shrunk ({section['source']}, {section['channels_removed']} channels removed), "
        "dense -> shrunk: " + ", ".join(parts)
    )
    shown = section["channels"][:12]
    kept = ", ".join(f"{c['layer']} {c['kept']}/{c['total']}" for c in shown)
    more = len(section["channels"]) - len(shown)
    if more > 0:
        kept += f", ... ({more} more in export_report.json)"
    return [head, f"channels kept: {kept}"]
