"""tf.distribute for kprune runs: pick a strategy by name, describe it, check replicas agree.

Strategies by name (`make_strategy`):

* `auto`: `MirroredStrategy` over all visible GPUs when there are two or more, else `default`.
* `default`: TensorFlow's default strategy (no distribution, one device).
* `mirrored`: `MirroredStrategy` over all visible GPUs; without GPUs, over all logical CPU
  devices (one replica when there is only one).
* `multi_worker`: `MultiWorkerMirroredStrategy`; the cluster and this process's task come from
  the `TF_CONFIG` environment variable, which must be set.
* `tpu`: `TPUStrategy` on the TPU named by `tpu` (a name, a `grpc://` address, or `"local"` on
  a TPU VM), default `$TPU_NAME`.

Build the model, prune it, compile it and train it inside `strategy.scope()` (kprune's
workflows, `kprune.workflows.training.fit_and_evaluate`, `kprune.workflows.gradual.train_gradual`,
`kprune.workflows.at_init.train_at_init` and `kprune.run_lottery`, enter the scope of the
strategy the
model was built under). The batch size of the dataset is the *global* batch: Keras splits each
batch across the replicas.

Why the masks are identical on every replica: a mask update runs once, in cross-replica
context, on the mirrored weights (identical on every replica after each all-reduced step), and
writes the same new mask into every replica's copy (`kprune.PruningGroup`). Gradient-based
scores are all-reduced before they are used: FGGP records the summed gradient of the global
batch; SNIP, GraSP and SynFlow score once, before training, in cross-replica context on the whole
global batch(es), which is the all-reduced score by construction, and the chosen masks are
assigned to every replica. `ReplicaMaskCheck` verifies it at the end of training.

Example:

>>> strategy = make_strategy("default")
>>> describe_strategy(strategy)["replicas"]
1
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from kprune._internal.compat import multi_worker_trainer_fixes
from kprune.masks import pruning_wrappers

__all__ = [
    "STRATEGIES",
    "ClusterTask",
    "ReplicaMaskCheck",
    "cluster_task",
    "describe_strategy",
    "make_strategy",
    "strategy_scope",
    "masks_identical_across_replicas",
    "replica_values",
]

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, read from `TF_CONFIG`.

    Attributes:
        task_type: e.g. "worker" or "chief".
        task_id: index of this task within its type.
        workers: number of training tasks ("chief" and "worker" entries).
        is_chief: True for the task that writes the run's outputs: the "chief", or worker 0
            when the cluster has no chief (TensorFlow's rule).

    Example:

    >>> ClusterTask("worker", 1, 2, False).name
    'worker_1'
    """

    task_type: str
    task_id: int
    workers: int
    is_chief: bool

    @property
    def name(self):
        """`"<task_type>_<task_id>"`, e.g. "worker_1"."""
        return f"{self.task_type}_{self.task_id}"


def cluster_task(environ=None):
    """Parses `TF_CONFIG` (as `MultiWorkerMirroredStrategy` will) and checks it.

    Args:
        environ: a mapping to read `TF_CONFIG` from (default: `os.environ`).

    Returns:
        A `ClusterTask`.

    Raises:
        ValueError: `TF_CONFIG` is missing, not JSON, or lacks a cluster with this task.

    Example:

    >>> config = {"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
    ...           "task": {"type": "worker", "index": 0}}
    >>> cluster_task({"TF_CONFIG": json.dumps(config)})
    ClusterTask(task_type='worker', task_id=0, workers=2, is_chief=True)
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise ValueError(
            "strategy 'multi_worker' reads the cluster from the TF_CONFIG environment variable, "
            f"which is not set. Set it in every worker, e.g. {example}"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}). Received: {raw!r}") from err
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(
            f"TF_CONFIG needs a 'cluster' and a 'task' entry, e.g. {example}. Received: {raw!r}"
        )
    task_type, task_id = task.get("type"), task.get("index", 0)
    members = cluster.get(task_type)
    if not isinstance(members, list) or not isinstance(task_id, int):
        raise ValueError(
            f"TF_CONFIG's task {task!r} is not in its cluster {sorted(cluster)}. Received: {raw!r}"
        )
    if not 0 <= task_id < len(members):
        raise ValueError(
            f"TF_CONFIG's task index {task_id} is out of range: the cluster has "
            f"{len(members)} '{task_type}' task(s). Received: {raw!r}"
        )
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    is_chief = task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster
    )
    return ClusterTask(str(task_type), int(task_id), workers, is_chief)


def _gpus():
    return tf.config.list_logical_devices("GPU")


def make_strategy(name="auto", *, tpu=None):
    """Creates the `tf.distribute.Strategy` called `name` (see the module table).

    `multi_worker` and `tpu` must be created at the start of the program, before TensorFlow
    runs anything else (a TensorFlow rule for collective ops and TPU systems).

    Args:
        name: one of `STRATEGIES`.
        tpu: for `"tpu"`: a TPU name, a `grpc://` address or `"local"` (a TPU VM); default:
            `$TPU_NAME`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown name, `multi_worker` without a usable `TF_CONFIG`, `tpu`
            without a TPU.

    Example:

    >>> type(make_strategy("mirrored")).__name__
    'MirroredStrategy'
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Valid strategies: {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "auto":
        gpus = _gpus()
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = _gpus() or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        cluster_task()  # a clear error instead of a silent single-worker "cluster"
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            "strategy 'tpu' found no TPU: pass its name or grpc:// address (--tpu), set "
            f"TPU_NAME, or use 'local' on a TPU VM ({err}). Received: tpu={tpu!r}"
        ) from err
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def describe_strategy(strategy):
    """What a strategy runs on, for logs and results.json.

    Returns:
        A dict: `strategy` (class name, or "default" for TensorFlow's default strategy),
        `replicas` (replicas in sync, all workers together), `devices` (this worker's replica
        devices), `workers`, and for multi-worker runs `task` (e.g. "worker_1") and `chief`.

    Example:

    >>> describe_strategy(tf.distribute.get_strategy())["strategy"]
    'default'
    """
    extended = strategy.extended
    default = strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()
    info = {
        "strategy": "default" if default else type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": list(_local_devices(strategy)),
        "workers": 1,
    }
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        info["strategy"] = "MultiWorkerMirroredStrategy"  # its class is a private subclass
        resolver = strategy.cluster_resolver
        info["workers"] = _worker_count(strategy)
        info["task"] = f"{resolver.task_type}_{resolver.task_id}"
        info["chief"] = bool(extended.should_checkpoint)
    return info


def _local_devices(strategy):
    try:
        return tuple(str(d) for d in strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list: it runs where TF places ops
        return (tf.config.list_logical_devices()[0].name,)


def replica_values(variable, strategy=None):
    """The values of every local replica's copy of `variable`, as numpy arrays.

    Example:

    >>> [v.tolist() for v in replica_values(keras.Variable([1.0, 0.0]))]
    [[1.0, 0.0]]
    """
    strategy = strategy or tf.distribute.get_strategy()
    value = getattr(variable, "value", variable)
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def masks_identical_across_replicas(model, strategy=None):
    """Whether every mask of `model` holds the same values on all local replicas.

    Compares the copies this process holds (all replicas of a `MirroredStrategy`; one per
    device of this worker under `MultiWorkerMirroredStrategy`). True without wrappers.

    Example:

    >>> import kprune
    >>> model = kprune.prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...                      kprune.ConstantSparsity(0.5))
    >>> masks_identical_across_replicas(model)
    True
    """
    strategy = strategy or model.distribute_strategy
    for wrapper in pruning_wrappers(model):
        for mask in wrapper.masks:
            copies = replica_values(mask, strategy)
            if any(not np.array_equal(copies[0], c) for c in copies[1:]):
                return False
    return True


class ReplicaMaskCheck(keras.callbacks.Callback):
    """Checks at the end of training that every replica holds the same masks.

    A mismatch would be a bug in kprune (masks are written to every replica by one update in
    cross-replica context), so it raises instead of training on silently.

    Attributes:
        identical: None before the check, then True (a mismatch raises).
        replicas: number of local replica copies compared.

    Example:

    >>> import kprune
    >>> model = kprune.prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
    ...                      kprune.ConstantSparsity(0.5))
    >>> model.compile("sgd", "mse")
    >>> check = ReplicaMaskCheck()
    >>> _ = model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0,
    ...               callbacks=[kprune.PruningCallback(), check])
    >>> check.identical, check.replicas
    (True, 1)
    """

    def __init__(self):
        super().__init__()
        self.identical = None
        self.replicas = None

    def on_train_end(self, logs=None):
        strategy = self.model.distribute_strategy
        self.replicas = len(_local_devices(strategy))
        if not masks_identical_across_replicas(self.model, strategy):
            raise RuntimeError(
                f"The pruning masks differ between the {self.replicas} replicas of "
                f"{type(strategy).__name__}; please report this as a kprune bug."
            )
        self.identical = True


# -- Keras 3 and MultiWorkerMirroredStrategy --------------------------------------------------
def _worker_count(strategy):
    """Training tasks ("chief" and "worker") in the cluster of a multi-worker strategy."""
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("chief", [])) + len(spec.get("worker", []))


def _is_multi_worker(strategy):
    """True for a `MultiWorkerMirroredStrategy` whose cluster has more than one worker."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        _worker_count(strategy) > 1
    )


def _keras_multi_worker_fixes():
    """`compat.multi_worker_trainer_fixes` for multi-worker strategies, as a context manager.

    Raises `kprune._internal.compat.MissingInternalError` if the Keras internals it patches
    are missing, instead of training on without the fixes.
    """
    return multi_worker_trainer_fixes(_is_multi_worker)


@contextlib.contextmanager
def strategy_scope(strategy):
    """`strategy.scope()`, plus what Keras 3 needs to train under a multi-worker strategy.

    kprune's workflows train inside it. Under `MultiWorkerMirroredStrategy` with more than one
    worker it also works around two Keras 3 bugs that stop `fit` and `evaluate` there (see
    `_keras_multi_worker_fixes`); for every other strategy it is just `strategy.scope()`.

    Args:
        strategy: a `tf.distribute.Strategy`, or a Keras model (its `distribute_strategy`).

    Example:

    >>> with strategy_scope(tf.distribute.get_strategy()):
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    """
    if isinstance(strategy, keras.Model):
        strategy = strategy.distribute_strategy
    with strategy.scope():
        if _is_multi_worker(strategy):
            with _keras_multi_worker_fixes():
                yield
        else:
            yield
