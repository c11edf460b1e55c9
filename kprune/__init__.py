"""kprune: neural-network pruning for Keras 3 on TensorFlow.

The top level holds what a pruning program needs; the rest lives in submodules:
`kprune.api` (masks in and out: `apply_masks`, `pruning_wrappers`, `format_sparsity_report`,
...), `kprune.criteria` (`Magnitude`, `fggp_schedule`), `kprune.schedules`, `kprune.export`,
`kprune.models`, `kprune.data` and `kprune.workflows` (the training workflows of the CLI).

Example:

>>> import keras, kprune
>>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, activation="relu"),
...                           keras.layers.Dense(10)])
>>> pruned = kprune.prune(model, kprune.LinearSparsity(final_sparsity=0.9, begin_step=0,
...                                                    end_step=1000))
>>> [type(layer).__name__ for layer in pruned.layers]
['PruningWrapper', 'PruningWrapper']
"""

from kprune.api import bind_optimizer, get_masks, prune, set_masks, sparsity_report, strip
from kprune.callbacks import PruningCallback
from kprune.criteria import FGGP
from kprune.layer_sensitivity import SensitivityCurves, sensitivity
from kprune.schedules import (
    ConstantSparsity,
    CyclicalSparsity,
    LinearSparsity,
    PolynomialDecay,
    PruningSchedule,
)
from kprune.structured.shrink import shrink
from kprune.workflows.at_init import masks_at_init, prune_at_init
from kprune.workflows.lottery import run_lottery
from kprune.wrapper import PruningWrapper

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "CyclicalSparsity",
    "FGGP",
    "LinearSparsity",
    "PolynomialDecay",
    "PruningCallback",
    "PruningSchedule",
    "PruningWrapper",
    "SensitivityCurves",
    "bind_optimizer",
    "get_masks",
    "masks_at_init",
    "prune",
    "prune_at_init",
    "run_lottery",
    "sensitivity",
    "set_masks",
    "shrink",
    "sparsity_report",
    "strip",
]
