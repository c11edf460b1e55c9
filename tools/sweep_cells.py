"""The cells of a sweep: what one is, where it lives, its command, its settings and its row.

Every cell is one `python -m kprune.train` run in its own directory, `OUT/<method>-<sparsity>-
seed<k>` (`OUT/dense-seed<k>` for the baseline); it is finished when that directory holds
`results.json`. The settings all cells share (the kprune.train flagfile, read by absl, and the
pass-through flags) are stored in `OUT/sweep_settings.json`, so a later invocation cannot mix
incomparable cells into one directory.

Example:

>>> config = SweepConfig(("linear",), (0.9,), (0, 1), False, None, (), pathlib.Path("/tmp/s"))
>>> [cell.name for cell in plan_cells(config)]
['linear-90-seed0', 'linear-90-seed1']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re

from absl import flags

from kprune.train import METHOD_NAMES, lth_rounds
from tools.cli import UsageError

RESULTS = "results.json"
COMMANDS = "sweep_commands.txt"
SETTINGS = "sweep_settings.json"
# Columns of sweep.csv, in order.
COLUMNS = (
    "cell",
    "method",
    "target_sparsity",
    "seed",
    "status",
    "sparsity",
    "test_accuracy",
    "best_test_accuracy",
    "test_loss",
    "lth_rounds",
    "nonzero_prunable_params",
    "prunable_params",
    "nonzero_params",
    "dense_params",
    "epochs",
    "total_steps",
    "wall_time_s",
    "model",
    "dataset",
    "run_dir",
)
# The columns read as they are from results.json; the others the sweep fills in itself.
_OWN_COLUMNS = ("cell", "method", "target_sparsity", "seed", "status", "sparsity", "lth_rounds")
COPIED_COLUMNS = tuple(key for key in COLUMNS if key not in (*_OWN_COLUMNS, "run_dir"))


class SweepError(UsageError):
    """Bad sweep input, found before any cell runs (or reported by a cell): exit status 2.

    Example:

    >>> issubclass(SweepError, ValueError)
    True
    """


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid. `target` is None for the dense baseline.

    Example:

    >>> Cell("linear", 0.98, 1).name, Cell("dense", None, 0).name
    ('linear-98-seed1', 'dense-seed0')
    """

    method: str
    target: float | None
    seed: int

    @property
    def name(self):
        if self.target is None:
            return f"{self.method}-seed{self.seed}"
        return f"{self.method}-{self.target * 100:.6g}-seed{self.seed}"

    def label(self):
        target = "" if self.target is None else f" target {self.target:g}"
        return f"{self.method}{target} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What to sweep, parsed and checked by `tools.sweep.parse_args`.

    Example: see the module docstring.
    """

    methods: tuple
    sparsities: tuple
    seeds: tuple
    dense: bool
    flagfile: pathlib.Path | None
    extra: tuple
    out: pathlib.Path
    dry_run: bool = False
    report_only: bool = False
    in_process: bool = False
    show_output: bool = False
    argv: tuple = ()


def method_rank(method):
    """Reports list methods in kprune.train's order (dense, linear, ..., lth), whatever the
    order of the invocations that ran them.

    Example:

    >>> method_rank("dense") < method_rank("lth") < method_rank("not-a-method")
    True
    """
    return METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES)


# -- the grid ----------------------------------------------------------------------------------
def plan_cells(config):
    """The cells in running order: seed by seed (dense first), then sparsity, then method.

    A whole seed of the grid is done before the next starts, so a partial sweep already
    compares every method.

    Example:

    >>> config = SweepConfig(("linear", "snip"), (0.9,), (0,), True, None, (), pathlib.Path("s"))
    >>> [cell.name for cell in plan_cells(config)]
    ['dense-seed0', 'linear-90-seed0', 'snip-90-seed0']
    """
    cells = []
    for seed in config.seeds:
        if config.dense:
            cells.append(Cell("dense", None, seed))
        for target in config.sparsities:
            cells += [Cell(method, target, seed) for method in config.methods]
    return cells


_CELL_NAME = re.compile(r"^(?P<method>[a-z0-9_]+?)(?:-(?P<percent>[0-9.e+-]+))?-seed(?P<seed>\d+)$")


def finished_cells(out):
    """Cells with a results.json in `out`, from their directory names (earlier invocations).

    Example:

    >>> finished_cells(pathlib.Path("/nonexistent"))
    []
    """
    cells = []
    if not out.is_dir():
        return cells
    for path in sorted(out.iterdir()):
        match = _CELL_NAME.match(path.name)
        if not match or not (path / RESULTS).is_file():
            continue
        percent = match["percent"]
        target = None if percent is None else round(float(percent) / 100, 12)
        cells.append(Cell(match["method"], target, int(match["seed"])))
    return cells


def report_cells(config, cells):
    """The grid plus every finished cell of `out` (an extended sweep reports all of it)."""
    known = {cell.name for cell in cells}
    extra = [cell for cell in finished_cells(config.out) if cell.name not in known]
    return sorted(
        [*cells, *extra],
        key=lambda c: (c.seed, c.target or 0.0, method_rank(c.method), c.method),
    )


# -- the command of a cell and the settings cells share ----------------------------------------
def train_args(config, cell):
    """`kprune.train` arguments of one cell: flagfile, pass-through flags, then the cell's own.

    Example:

    >>> config = SweepConfig(("snip",), (0.9,), (2,), False, None, (), pathlib.Path("/tmp/s"))
    >>> train_args(config, Cell("snip", 0.9, 2))[-4:]
    ['--method=snip', '--target_sparsity=0.9', '--seed=2', '--model_dir=/tmp/s/snip-90-seed2']
    """
    args = [f"--flagfile={config.flagfile}"] if config.flagfile else []
    args.append("--progress=epoch")  # one line per epoch in the log; --progress=... overrides
    args += list(config.extra)
    args.append(f"--method={cell.method}")
    if cell.target is not None:
        args.append(f"--target_sparsity={cell.target!r}")
    args += [f"--seed={cell.seed}", f"--model_dir={config.out / cell.name}"]
    return args


def flagfile_args(config):
    """The flags of the kprune.train flagfile as absl reads them (comments dropped, nested
    `--flagfile=` lines expanded); [] without a flagfile."""
    if not config.flagfile:
        return []
    try:
        return flags.FlagValues().read_flags_from_files([f"--flagfile={config.flagfile}"])
    except flags.Error as err:
        raise SweepError(f"--flagfile={config.flagfile}: {err}") from err


def _flag_value(config, name):
    """Last value of --name in the flagfile and pass-through flags (None if absent)."""
    value = None
    for arg in [*flagfile_args(config), *config.extra]:
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def cost(config, cell):
    """Relative cost of a cell, in trainings (lth trains rounds + 1 times); for the ETA."""
    if cell.method != "lth":
        return 1.0
    rate = _flag_value(config, "lth_rate")
    try:
        return 1.0 + lth_rounds(cell.target, float(rate) if rate else 0.2)
    except ValueError:
        return 1.0


def settings(config):
    """What every cell shares; finished cells are only reused under the same settings."""
    lines = [line for line in flagfile_args(config) if line.startswith("--")]
    return {
        "flagfile": str(config.flagfile) if config.flagfile else None,
        "flagfile_flags_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "extra": list(config.extra),
    }


def check_settings(config):
    """`(path, settings)` of sweep_settings.json; SweepError if `out` holds other settings."""
    path = config.out / SETTINGS
    current = settings(config)
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(k for k in current if stored.get(k) != current[k])
        if changed:
            raise SweepError(
                f"{config.out} holds a sweep with different shared settings ({', '.join(changed)}"
                f": stored {[stored.get(k) for k in changed]}, now "
                f"{[current[k] for k in changed]}). Its finished cells would not be comparable; "
                "choose another --out, or delete the directory to start over."
            )
    return path, current


# -- what a cell gave --------------------------------------------------------------------------
def read_cell(config, cell):
    """One row of sweep.csv from the cell's results.json (status "missing" if it has none).

    Example:

    >>> config = SweepConfig(("linear",), (0.9,), (0,), False, None, (), pathlib.Path("/none"))
    >>> row = read_cell(config, Cell("linear", 0.9, 0))
    >>> row["status"], row["target_sparsity"], row["test_accuracy"]
    ('missing', 0.9, None)
    """
    run_dir = config.out / cell.name
    row = {key: None for key in COLUMNS}
    row.update(
        cell=cell.name,
        method=cell.method,
        target_sparsity=0.0 if cell.target is None else cell.target,
        seed=cell.seed,
        run_dir=str(run_dir),
        status="missing",
    )
    path = run_dir / RESULTS
    if not path.is_file():
        return row
    results = json.loads(path.read_text())
    row["status"] = "diverged" if results.get("diverged") else "done"
    row["sparsity"] = results["global_sparsity"]
    for key in COPIED_COLUMNS:
        row[key] = results.get(key)
    if cell.method == "lth" and results.get("rounds"):
        row["lth_rounds"] = len(results["rounds"]) - 1  # round 0 is the dense training
    return row
