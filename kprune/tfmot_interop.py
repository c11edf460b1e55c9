"""Pruning schedules shared with TensorFlow Model Optimization (tfmot), in both directions.

Optional: needs the `tfmot` extra (`pip install "kprune[tfmot]"`: tensorflow-model-optimization
and tf-keras). `import kprune` never imports this module, and importing it imports neither
tfmot nor tf_keras: tfmot is only touched when you hand over a tfmot object, ask for
`to_tfmot()`, or load a saved `TfmotSchedule`. Be aware that *importing tfmot itself* sets
`os.environ["TF_USE_LEGACY_KERAS"] = "1"` and makes `tf.keras` refer to tf_keras in that process;
`import keras` (Keras 3) and kprune keep working beside it.

* `from_tfmot(schedule)` wraps any tfmot `PruningSchedule` (ConstantSparsity, PolynomialDecay or
  your own subclass) as a `kprune.PruningSchedule`, for `kprune.prune()` in a Keras 3 program.
* `to_tfmot(schedule)` wraps any kprune schedule as a subclass of tfmot's `PruningSchedule`,
  for `tfmot.sparsity.keras.prune_low_magnitude` in a tf_keras program.

Step alignment: tfmot's wrapper adds one to its `pruning_step` *before* it asks its schedule, so
on the first training batch a tfmot schedule is asked about step 1; kprune asks about
`optimizer.iterations`, which is 0 on the first batch. With `align_steps=True` (the default)
both adapters translate, so a schedule changes the masks on the same batches in both
frameworks: `from_tfmot(s)(t) == s(t + 1)` and `to_tfmot(k)(t) == k(t - 1)`.

Example (a Keras 3 program; the tfmot import is only needed to make the tfmot schedule):

>>> import tensorflow_model_optimization as tfmot
>>> schedule = from_tfmot(tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, 1, 1001))
>>> pruned = kprune.prune(model, schedule)  # then fit with kprune.PruningCallback()
"""

from __future__ import annotations

import importlib
import json
import numbers

import keras
import tensorflow as tf

from kprune.schedules import PruningSchedule

# `KpruneScheduleForTfmot` is public too, but made on first access (see `__getattr__`), so it
# stays out of `__all__`: `from kprune.tfmot_interop import *` must not import tfmot.
__all__ = ["TfmotSchedule", "from_tfmot", "to_tfmot"]

_TFMOT_PACKAGE = "tensorflow_model_optimization"
_INSTALL_HINT = 'pip install "kprune[tfmot]" (tensorflow-model-optimization and tf-keras)'


def _is_tfmot_schedule(obj) -> bool:
    """True for instances of tfmot's PruningSchedule, checked without importing tfmot.

    Whoever built such an object has imported tfmot already; looking at the class hierarchy
    keeps this module from importing it (and its environment change) for a mere type check.
    """
    return any(
        klass.__name__ == "PruningSchedule" and klass.__module__.startswith(_TFMOT_PACKAGE)
        for klass in type(obj).__mro__
    )


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


def _plain_config(schedule) -> dict:
    """The constructor arguments of a tfmot schedule.

    tfmot's own schedules return `{"class_name": ..., "config": {...}}` from `get_config()`
    (its wrapper stores that as a serialized object) while their `from_config` expects the inner
    dict; user subclasses often return the inner dict directly. Accept both.
    """
    config = schedule.get_config()
    if isinstance(config, dict) and set(config) == {"class_name", "config"}:
        config = config["config"]
    if not isinstance(config, dict):
        raise TypeError(
            f"{type(schedule).__name__}.get_config() must return a dict. Received: {config!r}"
        )
    return dict(config)


def _import_tfmot_class(path):
    """The tfmot schedule class named by `module.QualName`, imported on demand."""
    if not isinstance(path, str) or "." not in path:
        raise ValueError(
            "`tfmot_class` must be a dotted path 'module.ClassName'. "
            f"Received: tfmot_class={path!r}"
        )
    module_name, _, qualname = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"Cannot import {module_name!r} to rebuild the tfmot schedule {path!r}: {error}. "
            f"Install the tfmot extra: {_INSTALL_HINT}."
        ) from error
    klass = getattr(module, qualname, None)
    if klass is None or not isinstance(klass, type):
        raise ValueError(f"`tfmot_class` {path!r} does not name a class in {module_name!r}.")
    if not any(
        base.__name__ == "PruningSchedule" and base.__module__.startswith(_TFMOT_PACKAGE)
        for base in klass.__mro__
    ):
        raise TypeError(
            f"`tfmot_class` must name a subclass of tfmot's PruningSchedule. Received: {path!r}"
        )
    return klass


@keras.saving.register_keras_serializable(package="kprune")
class TfmotSchedule(PruningSchedule):
    """A tfmot pruning schedule used as a `kprune.PruningSchedule`.

    Both libraries share the call contract `schedule(step) -> (should_update, sparsity)`, so the
    tfmot schedule runs unchanged inside kprune's compiled train step; only the step is shifted
    (see `align_steps`). Its semantics are tfmot's: for example tfmot's `PolynomialDecay` does
    not force an update at `end_step`, so choose `end_step - begin_step` as a multiple of
    `frequency` to reach `final_sparsity` (kprune's own schedules always update at `end_step`).
    Masks are chosen by kprune (exactly `round(s * N)` weights per variable, or one global
    threshold with `scope="global"`).

    Args:
        schedule: an instance of a tfmot `PruningSchedule` (tfmot's `ConstantSparsity`,
            `PolynomialDecay` or your own subclass).
        align_steps: ask the tfmot schedule about step `t + 1` at kprune step `t`, the number
            tfmot's own wrapper would use on that batch, so masks change on the same batches
            as under tfmot. `False` passes the step unchanged.
        allows_regrowth: recompute masks over whole tensors (pruned weights may return) instead
            of only among active weights. Leave False for schedules whose sparsity never falls.

    Raises:
        TypeError: `schedule` is not a tfmot `PruningSchedule`, or a flag is not a bool.

    Example:

    >>> import tensorflow_model_optimization as tfmot
    >>> tfmot_schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, 1, 101, frequency=10)
    >>> schedule = TfmotSchedule(tfmot_schedule)
    >>> should, sparsity = schedule(tf.constant(100, tf.int64))  # tfmot step 101
    >>> bool(should), round(float(sparsity), 2)
    (True, 0.8)
    """

    def __init__(self, schedule, align_steps=True, allows_regrowth=False):
        if isinstance(schedule, PruningSchedule):
            raise TypeError(
                "`schedule` is already a kprune.PruningSchedule; use it directly. "
                f"Received: schedule={schedule!r}"
            )
        if not _is_tfmot_schedule(schedule):
            raise TypeError(
                "`schedule` must be a tfmot PruningSchedule, e.g. "
                "tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, 1, 1001). "
                f"Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.align_steps = _check_bool("align_steps", align_steps)
        # An instance attribute shadows the class default that the wrapper reads.
        self.allows_regrowth = _check_bool("allows_regrowth", allows_regrowth)

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        if self.align_steps:
            step = step + 1
        should_update, sparsity = self.schedule(step)
        return tf.cast(should_update, tf.bool), tf.cast(sparsity, tf.float32)

    @property
    def tfmot_end_step(self):
        """The wrapped schedule's `end_step` (tfmot's step numbering), or None if it has none."""
        end = getattr(self.schedule, "end_step", None)
        return None if end is None or end < 0 else int(end)

    @property
    def final_sparsity(self):
        """The sparsity the tfmot schedule ends at (its `final_sparsity` or `target_sparsity`,
        else its value at `end_step`)."""
        for name in ("final_sparsity", "target_sparsity"):
            value = getattr(self.schedule, name, None)
            if isinstance(value, numbers.Real):
                return float(value)
        end = self.tfmot_end_step
        if end is None:
            raise NotImplementedError(
                f"{type(self.schedule).__name__} has no end_step; its final sparsity is unknown."
            )
        return float(self.schedule(tf.constant(end, tf.int64))[1])

    @property
    def last_update_step(self):
        """The kprune step of the last possible update, or None if updates never stop."""
        end = self.tfmot_end_step
        if end is None:
            return None
        return end - 1 if self.align_steps else end

    def get_config(self):
        klass = type(self.schedule)
        return {
            "tfmot_class": f"{klass.__module__}.{klass.__qualname__}",
            "tfmot_config": _plain_config(self.schedule),
            "align_steps": self.align_steps,
            "allows_regrowth": self.allows_regrowth,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        klass = _import_tfmot_class(config.pop("tfmot_class"))
        schedule = klass.from_config(dict(config.pop("tfmot_config")))
        return cls(schedule, **config)

    def __hash__(self):
        # The config holds a nested dict, which the base class's hash cannot take.
        return hash((type(self).__name__, json.dumps(self.get_config(), sort_keys=True)))


def from_tfmot(schedule, align_steps=True, allows_regrowth=False):
    """Wraps a tfmot pruning schedule as a `kprune.PruningSchedule` (a `TfmotSchedule`).

    Args:
        schedule: an instance of a tfmot `PruningSchedule`.
        align_steps: see `TfmotSchedule`; the default prunes on the same batches as tfmot.
        allows_regrowth: see `TfmotSchedule`.

    Returns:
        A `TfmotSchedule`, usable with `kprune.prune()` and `kprune.PruningWrapper` and saved
        with the model (import `kprune.tfmot_interop` before `keras.models.load_model`).

    Example:

    >>> import tensorflow_model_optimization as tfmot
    >>> schedule = from_tfmot(tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=1))
    >>> bool(schedule(tf.constant(0, tf.int64))[0])
    True
    """
    return TfmotSchedule(schedule, align_steps=align_steps, allows_regrowth=allows_regrowth)


def _tfmot_keras():
    """The Keras that tfmot serializes with (tf_keras on TF >= 2.16), imported on demand."""
    try:
        from tensorflow_model_optimization.python.core.keras.compat import keras as tfmot_keras
        from tensorflow_model_optimization.sparsity import keras as tfmot_sparsity
    except ImportError as error:
        raise ImportError(
            f"kprune.tfmot_interop.to_tfmot needs TensorFlow Model Optimization: {_INSTALL_HINT}. "
            f"({error})"
        ) from error
    return tfmot_keras, tfmot_sparsity


_ADAPTER_CLASS = None


def _adapter_class():
    """Creates (once) the tfmot `PruningSchedule` subclass that runs a kprune schedule.

    It can only exist once tfmot is imported, so it is made on first use rather than at module
    import; creating it also registers it with tf_keras as `kprune>KpruneScheduleForTfmot`, so
    models saved with it load again.
    """
    global _ADAPTER_CLASS
    if _ADAPTER_CLASS is not None:
        return _ADAPTER_CLASS
    tfmot_keras, tfmot_sparsity = _tfmot_keras()

    class KpruneScheduleForTfmot(tfmot_sparsity.PruningSchedule):
        """A kprune schedule as a tfmot `PruningSchedule`, for `prune_low_magnitude`.

        Args:
            schedule: a `kprune.PruningSchedule`, or its Keras 3 serialization (a dict).
            align_steps: ask the kprune schedule about step `t - 1` when tfmot asks about `t`
                (tfmot counts from 1), so masks change on the same batches as under kprune.

        Example:

        >>> schedule = KpruneScheduleForTfmot(kprune.LinearSparsity(0.0, 0.9, 0, 1000))
        >>> layer = tfmot.sparsity.keras.prune_low_magnitude(dense, pruning_schedule=schedule)
        """

        def __init__(self, schedule, align_steps=True):
            if isinstance(schedule, dict):
                schedule = keras.saving.deserialize_keras_object(schedule)
            if not isinstance(schedule, PruningSchedule):
                raise TypeError(
                    "`schedule` must be a kprune.PruningSchedule, e.g. "
                    f"kprune.LinearSparsity(0.0, 0.9, 0, 1000). Received: schedule={schedule!r}"
                )
            self.schedule = schedule
            self.align_steps = _check_bool("align_steps", align_steps)

        def __call__(self, step):
            step = tf.cast(step, tf.int64)
            if self.align_steps:
                step = step - 1
            should_update, sparsity = self.schedule(step)
            return tf.cast(should_update, tf.bool), tf.cast(sparsity, tf.float32)

        def get_config(self):
            # tfmot's wrapper stores this dict as a serialized object and rebuilds it with
            # tf_keras' deserialize_keras_object, hence the class_name / config layout.
            return {
                "class_name": "kprune>KpruneScheduleForTfmot",
                "config": {
                    "schedule": keras.saving.serialize_keras_object(self.schedule),
                    "align_steps": self.align_steps,
                },
            }

        @classmethod
        def from_config(cls, config):
            config = dict(config)
            if set(config) == {"class_name", "config"}:
                config = dict(config["config"])
            return cls(**config)

        def __eq__(self, other):
            return type(self) is type(other) and self.get_config() == other.get_config()

        def __hash__(self):
            return hash(json.dumps(self.get_config(), sort_keys=True))

        def __repr__(self):
            return f"KpruneScheduleForTfmot({self.schedule!r}, align_steps={self.align_steps})"

    KpruneScheduleForTfmot.__module__ = __name__
    KpruneScheduleForTfmot.__qualname__ = "KpruneScheduleForTfmot"
    _ADAPTER_CLASS = tfmot_keras.utils.register_keras_serializable(package="kprune")(
        KpruneScheduleForTfmot
    )
    return _ADAPTER_CLASS


def to_tfmot(schedule, align_steps=True):
    """Wraps a kprune schedule for tfmot's `prune_low_magnitude` (a `KpruneScheduleForTfmot`).

    Imports tensorflow_model_optimization (which switches `tf.keras` to tf_keras in this
    process). The result is an instance of tfmot's `PruningSchedule`; tfmot then selects the
    weights (per variable, `max(round((1 - s) * N), 1)` kept, ties kept) and steps it with its
    `UpdatePruningStep` callback. kprune's schedules force an update at `end_step`, so the
    final sparsity is reached under tfmot too whatever the frequency.

    Args:
        schedule: a `kprune.PruningSchedule`.
        align_steps: see `KpruneScheduleForTfmot`; the default prunes on the same batches as
            kprune would.

    Returns:
        A `KpruneScheduleForTfmot`. To load a tf_keras model saved with it, touch
        `kprune.tfmot_interop.KpruneScheduleForTfmot` (or call `to_tfmot`) first, then load
        inside `tfmot.sparsity.keras.prune_scope()`.

    Raises:
        ImportError: tfmot or tf_keras is not installed.
        TypeError: `schedule` is not a kprune schedule.

    Example:

    >>> schedule = to_tfmot(kprune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000))
    >>> pruned = tfmot.sparsity.keras.prune_low_magnitude(tf_keras_model, schedule)
    """
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "`schedule` must be a kprune.PruningSchedule, e.g. kprune.LinearSparsity(0.0, 0.9, "
            f"0, 1000). Received: schedule={schedule!r}"
        )
    return _adapter_class()(schedule, align_steps=align_steps)


def __getattr__(name):
    # `KpruneScheduleForTfmot` exists only once tfmot is imported; make it on first access.
    if name == "KpruneScheduleForTfmot":
        return _adapter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
