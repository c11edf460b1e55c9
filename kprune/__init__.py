"""kprune: neural-network pruning for Keras 3 on TensorFlow.

Example:

>>> import keras, kprune
>>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, activation="relu"),
...                           keras.layers.Dense(10)])
>>> pruned = kprune.prune(model, kprune.LinearSparsity(0.0, 0.9, begin_step=0, end_step=1000))
"""

from kprune.api import (
    apply_masks,
    bind_optimizer,
    format_sparsity_report,
    get_masks,
    prune,
    pruned_variables,
    pruning_wrappers,
    set_masks,
    sparsity_report,
    strip,
)
from kprune.callbacks import PruningCallback
from kprune.criteria import FGGP, Magnitude, fggp_schedule
from kprune.schedules import (
    ConstantSparsity,
    CyclicalSparsity,
    LinearSparsity,
    PolynomialDecay,
    PruningSchedule,
)
from kprune.workflows.at_init import masks_at_init, prune_at_init
from kprune.workflows.lottery import run_lottery
from kprune.wrapper import PruningWrapper

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "CyclicalSparsity",
    "FGGP",
    "LinearSparsity",
    "Magnitude",
    "PolynomialDecay",
    "PruningCallback",
    "PruningSchedule",
    "PruningWrapper",
    "apply_masks",
    "bind_optimizer",
    "fggp_schedule",
    "format_sparsity_report",
    "get_masks",
    "masks_at_init",
    "prune",
    "prune_at_init",
    "pruned_variables",
    "pruning_wrappers",
    "run_lottery",
    "set_masks",
    "sparsity_report",
    "strip",
]
