"""What the command line `python -m kprune.train` needs, apart from parsing its flags.

- `config`: the flags, written once as the `RunFlags` dataclass (absl flags are generated
  from it), and `UsageError` (bad input: exit status 2, nothing written)
- `run_config`: `RunConfig`, the run described by the parsed flags (`config_from_flags`)
- `methods`: the registry behind --method (plan and run of each method, on kprune.workflows)
- `run_dir`: new, resumed or overwritten run directory; run.flags, results.json, model.keras
- `report`: the plan (--dry_run) and the summary paragraph
- `runner`: `run(config)`, every check first, then training and the outputs

Example:

>>> from kprune.experiment import METHODS, lth_rounds
>>> METHODS["snip"].summary, lth_rounds(0.9, 0.2)
('SNIP: connection sensitivity at initialization', 11)
"""

from kprune.experiment.config import METHOD_NAMES, STRATEGY_NAMES, UsageError, define_flags
from kprune.experiment.methods import METHODS
from kprune.experiment.run_config import RunConfig, config_from_flags, lth_rounds
from kprune.experiment.runner import run

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "STRATEGY_NAMES",
    "RunConfig",
    "UsageError",
    "config_from_flags",
    "define_flags",
    "lth_rounds",
    "run",
]
