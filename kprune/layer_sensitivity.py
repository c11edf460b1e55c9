"""Sensitivity curves: the loss and accuracy of a model with one tensor magnitude-pruned.

`sensitivity(model, data)` prunes every prunable tensor of a plain (unwrapped) model on its
own, to each of a list of sparsities, with the others left dense, and evaluates the model on
the same held-out batches each time. Pruning is kprune's own rule (the `round(s * n)` smallest
|w| of that tensor, ties broken by position, `kprune.masking.compute_masks`), so a curve point
is exactly what a layer-scope magnitude mask of that sparsity does to the network as it is.
The weights are restored exactly afterwards (also when evaluation fails). The curves are a
`SensitivityCurves`: JSON in and out, and a picture with matplotlib.

`budget="sensitivity"` (`kprune.allocation`) turns these curves into per-tensor targets.

Example:

>>> import keras
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
...                           keras.layers.Dense(2, name="logits")])
>>> x, y = np.ones((8, 4), "float32"), np.arange(8) % 2
>>> curves = sensitivity(model, (x, y), sparsities=(0.5, 0.9))
>>> curves.names, curves.sparsities
(['fc/kernel', 'logits/kernel'], (0.5, 0.9))
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.validate import check_integer
from kprune._internal.walk import check_model, walk, weight_key
from kprune.masking import compute_masks
from kprune.targets import is_container, is_prunable, prunable_weights

__all__ = ["DEFAULT_SPARSITIES", "SensitivityCurves", "sensitivity", "prunable_tensors"]

# Dense enough where magnitude pruning starts to hurt; 0.995 leaves room above a 99% target.
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def _opaque(layer):
    # The same walk as `kprune.masks.walk_model`: a wrapper or a container is one unit.
    return getattr(layer, "is_pruning_wrapper", False) or is_container(layer)


def prunable_tensors(model, exclude=()):
    """`(name, layer, variable)` of every tensor kprune would prune, in layer order.

    Names are the paths of `kprune.get_masks` (`"fc1/kernel"`, `"block/fc/kernel"`).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
    >>> [name for name, _, _ in prunable_tensors(model)]
    ['fc/kernel']
    """
    exclude = set(exclude or ())
    found = []
    for layer, prefix in walk(model, _opaque):
        if isinstance(layer, keras.Model) or not is_prunable(layer) or layer.name in exclude:
            continue
        for variable in prunable_weights(layer):
            found.append((weight_key(prefix, layer, variable), layer, variable))
    return found


def _finite_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: {value!r}")
    return float(value)


def _check_sparsities(values):
    try:
        sparsities = tuple(_finite_number("sparsities", s) for s in values)
    except TypeError:
        sparsities = ()
    if not sparsities or any(not 0.0 < s < 1.0 for s in sparsities):
        raise ValueError(
            f"`sparsities` must be a non-empty list of numbers in (0, 1). Received: {values!r}"
        )
    if any(b <= a for a, b in zip(sparsities, sparsities[1:])):
        raise ValueError(f"`sparsities` must increase. Received: {values!r}")
    return sparsities


@dataclasses.dataclass(frozen=True)
class SensitivityCurves:
    """What `sensitivity()` measured: per tensor, the loss and accuracy at each sparsity.

    Attributes:
        sparsities: the sparsities every tensor was pruned to, increasing, in (0, 1).
        baseline_loss, baseline_accuracy: the model's loss and accuracy with no tensor pruned.
        tensors: `{name: {"shape": [...], "size": n, "loss": [...], "accuracy": [...]}}`, one
            loss and one accuracy per sparsity, names as in `kprune.get_masks`, layer order.
        examples: how many examples each point was measured on.

    Example:

    >>> curves = SensitivityCurves((0.5,), 1.0, 0.5, {"fc/kernel": {
    ...     "shape": [2, 2], "size": 4, "loss": [1.25], "accuracy": [0.5]}}, 8)
    >>> curves.loss_increase("fc/kernel")
    [0.25]
    >>> SensitivityCurves.from_json(curves.to_json()) == curves
    True
    """

    sparsities: tuple
    baseline_loss: float
    baseline_accuracy: float
    tensors: dict
    examples: int

    def __post_init__(self):
        sparsities = _check_sparsities(self.sparsities)
        object.__setattr__(self, "sparsities", sparsities)
        object.__setattr__(
            self, "baseline_loss", _finite_number("baseline_loss", self.baseline_loss)
        )
        object.__setattr__(
            self, "baseline_accuracy", _finite_number("baseline_accuracy", self.baseline_accuracy)
        )
        if not isinstance(self.tensors, dict) or not self.tensors:
            raise ValueError(f"`tensors` must be a non-empty dict. Received: {self.tensors!r}")
        tensors = {}
        for name, curve in self.tensors.items():
            try:
                shape = [int(d) for d in curve["shape"]]
                entry = {
                    "shape": shape,
                    "size": int(curve["size"]),
                    "loss": [_finite_number("loss", v) for v in curve["loss"]],
                    "accuracy": [_finite_number("accuracy", v) for v in curve["accuracy"]],
                }
            except (KeyError, TypeError) as err:
                raise ValueError(
                    f"Curve {name!r} needs 'shape', 'size', 'loss' and 'accuracy'. Received: "
                    f"{curve!r}"
                ) from err
            if entry["size"] != math.prod(shape) or entry["size"] < 1:
                raise ValueError(f"Curve {name!r}: size {entry['size']} is not that of {shape}.")
            if len(entry["loss"]) != len(sparsities) or len(entry["accuracy"]) != len(sparsities):
                raise ValueError(
                    f"Curve {name!r} needs one loss and one accuracy per sparsity "
                    f"({len(sparsities)}). Received: {curve!r}"
                )
            tensors[str(name)] = entry
        object.__setattr__(self, "tensors", tensors)
        object.__setattr__(self, "examples", check_integer("examples", self.examples, 1))

    @property
    def names(self):
        """The tensor names, in layer order."""
        return list(self.tensors)

    def loss_increase(self, name):
        """Loss minus the baseline loss at each sparsity, for tensor `name`."""
        if name not in self.tensors:
            raise KeyError(f"No curve for {name!r}; curves exist for {self.names}")
        return [v - self.baseline_loss for v in self.tensors[name]["loss"]]

    def to_dict(self):
        """A JSON-ready dict (the fields)."""
        return {
            "sparsities": list(self.sparsities),
            "baseline_loss": self.baseline_loss,
            "baseline_accuracy": self.baseline_accuracy,
            "examples": self.examples,
            "tensors": {name: dict(curve) for name, curve in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, config):
        """The curves of a `to_dict()` dict; ValueError if a field is missing or malformed."""
        try:
            return cls(
                sparsities=tuple(config["sparsities"]),
                baseline_loss=config["baseline_loss"],
                baseline_accuracy=config["baseline_accuracy"],
                tensors=config["tensors"],
                examples=config["examples"],
            )
        except (KeyError, TypeError) as err:
            raise ValueError(
                "Sensitivity curves need 'sparsities', 'baseline_loss', 'baseline_accuracy', "
                f"'tensors' and 'examples'. Received: {config!r}"
            ) from err

    def to_json(self):
        """The curves as JSON text (floats written exactly: `from_json` gives them back)."""
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_json(cls, text):
        """The curves of `to_json()` text."""
        return cls.from_dict(json.loads(text))

    def plot(self, path):
        """Draws loss increase and accuracy against sparsity, one line per tensor, to `path`.

        Needs matplotlib (`pip install "kprune[plot]"`); uses no pyplot state.

        Raises:
            ImportError: matplotlib is not installed.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError(
                'SensitivityCurves.plot needs matplotlib: pip install "kprune[plot]" (or '
                "matplotlib). The curves themselves need nothing: see to_json()."
            ) from err
        figure = Figure(figsize=(10, 4))
        FigureCanvasAgg(figure)
        loss_axes, accuracy_axes = figure.subplots(1, 2)
        percent = [100 * s for s in self.sparsities]
        for name in self.names:
            loss_axes.plot(percent, self.loss_increase(name), marker=".", label=name)
            accuracy_axes.plot(percent, self.tensors[name]["accuracy"], marker=".", label=name)
        loss_axes.axhline(0.0, color="gray", linewidth=0.8)
        accuracy_axes.axhline(self.baseline_accuracy, color="gray", linewidth=0.8, label="dense")
        loss_axes.set(xlabel="sparsity of the one pruned tensor (%)", ylabel="loss increase")
        accuracy_axes.set(xlabel="sparsity of the one pruned tensor (%)", ylabel="accuracy")
        accuracy_axes.legend(fontsize="small")
        figure.suptitle(f"Sensitivity, one tensor pruned at a time ({self.examples} examples)")
        figure.tight_layout()
        figure.savefig(path, dpi=100)


def _held_out_batches(data, batches, batch_size):
    """The evaluation batches as a list of `(x tensor, y int64 array)`, read once."""
    if isinstance(data, tf.data.Dataset):
        dataset = data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if x.ndim == 0 or len(x) != len(y) or len(x) == 0:
            raise ValueError(
                "`data` as (x, y) arrays needs the same positive number of examples in both. "
                f"Received shapes {x.shape} and {y.shape}"
            )
        batch_size = check_integer("batch_size", batch_size, 1)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    else:
        raise TypeError(
            "`data` must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) of arrays, "
            f"e.g. held-out training data. Received: {type(data).__name__}"
        )
    if batches is None:
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "`data` is an endless dataset; give `batches`, the number of batches to measure."
            )
    else:
        dataset = dataset.take(check_integer("batches", batches, 1))
    read = []
    for element in dataset:
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise ValueError(
                "`data` must yield (x, y) batches (a third item, sample weights, is ignored). "
                f"Received an element of type {type(element).__name__}"
            )
        read.append((element[0], np.asarray(element[1]).astype(np.int64).reshape(-1)))
    if not read or (batches is not None and len(read) < batches):
        raise ValueError(
            f"`data` gave {len(read)} batch(es), fewer than the {batches} asked for. Lower "
            "`batches` or give more data."
        )
    return read


def sensitivity(
    model,
    data,
    *,
    sparsities=DEFAULT_SPARSITIES,
    batches=None,
    batch_size=128,
    exclude=None,
    loss=None,
):
    """Prunes each tensor alone to each sparsity and measures loss and accuracy on `data`.

    For every prunable tensor (the ones `kprune.prune` wraps, outside `exclude`) and every
    sparsity `s`: the `round(s * n)` smallest |w| of that tensor are set to zero (kprune's
    rule, ties by position), every other tensor stays as it is, and the model is evaluated in
    inference mode (`training=False`: BatchNorm statistics are used, not updated; dropout
    off) on the same batches. The tensor's weights are then assigned back exactly. Loss is the
    mean over all examples; accuracy compares the argmax of the outputs with integer labels.
    Deterministic: the batches are read once and reused for every point.

    Args:
        model: a built Sequential, functional or subclassed `keras.Model`, not pruned (no
            `PruningWrapper`: measure the model before `kprune.prune`, or after `strip`).
        data: held-out `(x, y)` data: a finite `tf.data.Dataset` of batches, or a tuple of
            arrays (split into `batch_size` batches). Not the test set if the curves choose a
            budget you then report test accuracy for.
        sparsities: increasing sparsities in (0, 1), the points of every curve.
        batches: how many batches of `data` to use (None: all of it; needed for an endless
            dataset).
        batch_size: batch size for array data.
        exclude: names of layers to leave out (as in `kprune.prune`).
        loss: a Keras loss or `loss(y_true, y_pred)` giving the batch mean or per-example
            values (their mean is taken); default sparse categorical cross-entropy on logits.

    Returns:
        A `SensitivityCurves`.

    Raises:
        TypeError: `model` is not a Keras 3 model, or bad `data`.
        ValueError: a pruned model, no prunable tensor, unknown `exclude` names, bad
            `sparsities` or `batches`, or too few batches.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="fc")])
    >>> x, y = np.eye(2, dtype="float32"), np.array([0, 1])
    >>> curves = sensitivity(model, (x, y), sparsities=(0.5,))
    >>> len(curves.tensors["fc/kernel"]["loss"])
    1
    """
    check_model(model, "sensitivity")
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built; start it with keras.Input(shape) or call it "
            "on a batch first."
        )
    names = {layer.name for layer, _ in walk(model)}
    if any(getattr(layer, "is_pruning_wrapper", False) for layer, _ in walk(model)):
        raise ValueError(
            f"Model '{model.name}' is pruned (it has PruningWrapper layers). Measure the plain "
            "model, before kprune.prune(), or kprune.strip() it first."
        )
    if isinstance(exclude, str):
        exclude = [exclude]
    unknown = sorted(set(exclude or ()) - names)
    if unknown:
        raise ValueError(f"`exclude` names layers that are not in model '{model.name}': {unknown}")
    tensors = prunable_tensors(model, exclude)
    if not tensors:
        raise ValueError(f"Model '{model.name}' has no prunable tensor to measure.")
    sparsities = _check_sparsities(sparsities)
    held_out = _held_out_batches(data, batches, batch_size)
    loss_fn = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def evaluate():
        total, correct, count = 0.0, 0, 0
        for x, y in held_out:
            outputs = forward(x)
            n = len(y)
            total += float(np.mean(np.asarray(loss_fn(y, outputs)))) * n
            predicted = np.argmax(np.asarray(outputs), axis=-1).reshape(-1)
            correct += int(np.sum(predicted == y))
            count += n
        return total / count, correct / count

    baseline_loss, baseline_accuracy = evaluate()
    curves = {}
    for name, _, variable in tensors:
        original = np.array(variable.numpy())
        magnitude = tf.abs(tf.constant(original, tf.float32))
        losses, accuracies = [], []
        try:
            for s in sparsities:
                (mask,) = compute_masks([magnitude], [tf.ones_like(magnitude)], s, "layer")
                variable.assign(np.where(mask.numpy() != 0, original, 0).astype(original.dtype))
                point_loss, point_accuracy = evaluate()
                losses.append(point_loss)
                accuracies.append(point_accuracy)
        finally:
            variable.assign(original)
        curves[name] = {
            "shape": [int(d) for d in original.shape],
            "size": int(original.size),
            "loss": losses,
            "accuracy": accuracies,
        }
    return SensitivityCurves(
        sparsities, baseline_loss, baseline_accuracy, curves, sum(len(y) for _, y in held_out)
    )
