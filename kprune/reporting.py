"""How sparse a model is: zero and non-zero counts per prunable variable, and a text table.

Example:

>>> import keras
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
>>> [row["weight"] for row in sparsity_report(model)["layers"]]
['fc/kernel']
"""

from __future__ import annotations

import keras
import numpy as np

from kprune._internal.walk import check_model, weight_key
from kprune.masks import pruning_wrappers, walk_model
from kprune.targets import is_prunable, left_dense_weights, prunable_weights
from kprune.wrapper import PruningWrapper

__all__ = ["format_sparsity_report", "left_dense", "sparsity_report"]


def _lambda_captures(layer):
    """Layers and variables a `Lambda` uses from its closure or its module's globals.

    Keras neither tracks nor saves them, and kprune cannot wrap them.
    """
    function = getattr(layer, "function", None)
    values = []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    code = getattr(function, "__code__", None)
    namespace = getattr(function, "__globals__", {})
    for name in getattr(code, "co_names", ()):
        values.append(namespace.get(name))
    found = {}
    for value in values:
        if isinstance(value, (keras.layers.Layer, keras.Variable)):
            found.setdefault(id(value), value)
    return list(found.values())


def left_dense(model):
    """Paths of the weights of `model` that look prunable but that kprune leaves dense.

    These are trainable matrices (no biases or normalization weights) that no rule of
    `kprune.targets` covers: a custom layer's own `add_weight` kernel without
    `get_prunable_weights()`, a positional embedding, weights a `Lambda` closes over. Layers
    left out with `prune(exclude=...)` are not listed (they are prunable, and are rows of
    `sparsity_report` with `wrapped=False`).

    Example:

    >>> dense = keras.layers.Dense(2, name="fc")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: dense(x))])
    >>> left_dense(model)
    ['lambda/fc/kernel']
    """
    paths = []
    for layer, prefix in walk_model(model):
        if isinstance(layer, keras.layers.Lambda):
            for value in _lambda_captures(layer):
                if isinstance(value, keras.Variable):
                    paths.append("/".join((*prefix, layer.name, value.name)))
                    continue
                inner = (*prefix, layer.name)
                for v in [*prunable_weights(value), *left_dense_weights(value)]:
                    paths.append(weight_key(inner, value, v))
            continue
        if isinstance(layer, PruningWrapper):
            variables = left_dense_weights(layer.layer, pruned=layer.pruned_weights)
        elif isinstance(layer, keras.Model):
            continue  # its layers are walked on their own
        else:
            variables = left_dense_weights(layer)
        paths.extend(weight_key(prefix, layer, v) for v in variables)
    return paths


def _totals(rows):
    total = int(sum(r["total"] for r in rows))
    nonzero = int(sum(r["nonzero"] for r in rows))
    return {
        "total": total,
        "nonzero": nonzero,
        "sparsity": (1.0 - nonzero / total) if total else 0.0,
    }


def sparsity_report(model):
    """Counts of zero and non-zero weights, per prunable variable and in total.

    Works on pruned models (effective weights `w * mask`) and on stripped or plain models
    alike, so a report before and after `strip()` is the same.

    Returns:
        A dict with
        * `"layers"`: one row per prunable variable: `layer`, `weight` (path as in
          `get_masks`), `shape`, `total`, `nonzero`, `sparsity`, `wrapped` (pruned by
          kprune?);
        * `"pruned"`: totals over wrapped variables (None if the model has no wrapper);
        * `"prunable"`: totals over all prunable variables, wrapped or not;
        * `"all_params"`: totals over every model weight (masks excluded);
        * `"left_dense"`: paths of weights that look prunable but that kprune cannot prune
          (`left_dense(model)`), e.g. a custom layer's own kernel.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, use_bias=False)])
    >>> _ = model.layers[0].kernel.assign(np.zeros((4, 2)))
    >>> sparsity_report(model)["prunable"]
    {'total': 8, 'nonzero': 0, 'sparsity': 1.0}
    """
    check_model(model, "sparsity_report")
    rows, effective = [], {}
    for layer, prefix in walk_model(model):
        if isinstance(layer, PruningWrapper):
            pairs = [
                (w, np.where(np.asarray(m.numpy()) != 0, np.asarray(w.numpy()), 0), True)
                for w, m in zip(layer.pruned_weights, layer.masks)
            ]
        elif is_prunable(layer) and not isinstance(layer, keras.Model) and layer.built:
            pairs = [(w, np.asarray(w.numpy()), False) for w in prunable_weights(layer)]
        else:
            continue
        for w, value, wrapped in pairs:
            effective[id(w)] = value
            nonzero = int(np.count_nonzero(value))
            rows.append(
                {
                    "layer": "/".join((*prefix, layer.name)),
                    "weight": weight_key(prefix, layer, w),
                    "shape": [int(d) for d in w.shape],
                    "total": int(value.size),
                    "nonzero": nonzero,
                    "sparsity": 1.0 - nonzero / value.size if value.size else 0.0,
                    "wrapped": wrapped,
                }
            )
    # Masks and gradient records are bookkeeping of the wrappers, not model parameters.
    mask_ids = {
        id(v)
        for wrapper in pruning_wrappers(model)
        for v in (*wrapper.masks, *wrapper.gradient_records)
    }
    all_rows = []
    for w in model.weights:
        if id(w) in mask_ids:
            continue
        value = effective.get(id(w))
        if value is None:
            value = np.asarray(w.numpy())
        all_rows.append({"total": value.size, "nonzero": np.count_nonzero(value)})
    wrapped_rows = [r for r in rows if r["wrapped"]]
    return {
        "layers": rows,
        "pruned": _totals(wrapped_rows) if wrapped_rows else None,
        "prunable": _totals(rows),
        "all_params": _totals(all_rows),
        "left_dense": left_dense(model),
    }


def format_sparsity_report(report):
    """Renders `sparsity_report(model)` as a fixed-width table (a string).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> print(format_sparsity_report(sparsity_report(model)).splitlines()[0])
    weight                                    shape            nonzero        total  sparsity
    """
    lines = [f"{'weight':<40}  {'shape':<14} {'nonzero':>9} {'total':>12}  sparsity"]
    for row in report["layers"]:
        shape = "x".join(str(d) for d in row["shape"])
        # In a pruned model, say which prunable tensors were left dense (e.g. `exclude`).
        mark = "  (not pruned)" if report["pruned"] is not None and not row["wrapped"] else ""
        lines.append(
            f"{row['weight'][:40]:<40}  {shape:<14} {row['nonzero']:>9} {row['total']:>12}"
            f"  {row['sparsity']:>7.2%}{mark}"
        )
    for key, label in (
        ("pruned", "pruned layers"),
        ("prunable", "prunable"),
        ("all_params", "all parameters"),
    ):
        totals = report[key]
        if totals is None:
            continue
        lines.append(
            f"{'= ' + label:<40}  {'':<14} {totals['nonzero']:>9} {totals['total']:>12}"
            f"  {totals['sparsity']:>7.2%}"
        )
    return "\n".join(lines)
