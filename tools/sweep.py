"""Sweep methods x sparsities x seeds with `python -m kprune.train`; tabulate and plot the results.

Every cell of the grid is one training run in its own process, in its own run directory
(`OUT/<method>-<sparsity>-seed<k>`, `OUT/dense-seed<k>` for the baseline), so a crash ends one
cell and not the sweep. A cell whose `results.json` exists is skipped; an unfinished one is
started again with the same command and `kprune.train` resumes it from its last checkpoint, so
rerunning the sweep command after an interruption finishes the grid. The results are gathered
into:

  OUT/sweep.csv    one row per cell: method, target and achieved sparsity, seed, accuracy, ...
  OUT/sweep.json   the same rows, the per-group statistics, the settings and the machine
  OUT/sweep.md     Markdown tables: test accuracy, mean [min-max] over seeds, per method and
                   sparsity, and the dense baseline
  OUT/sweep.png    test accuracy against achieved sparsity: the mean over seeds per method with
                   a min-max band, the dense baseline as a horizontal line with its band
                   (needs matplotlib: pip install "kprune[plot]"; the rest is written without)
  OUT/logs/        the output of every cell's training run
  OUT/sweep_commands.txt, OUT/sweep_settings.json   every invocation that trained here (date
                   and command), and the settings all its cells share

Usage (from the repository root):

    python tools/sweep.py --flagfile=configs/digits.flags --methods=linear,snip,lth \\
        --sparsities=0.9,0.98 --seeds=3 --dense --out=saved_models/sweep-digits -- --epochs=30
    python tools/sweep.py ... --dry_run        # list the cells and check each method's plan
    python tools/sweep.py ... --report_only    # tabulate the finished cells, train nothing

`--flagfile=PATH` is the kprune.train flagfile every cell is started with (absl reads it, in
every cell and when the sweep compares settings); the sweep's own flags are given on its command
line. Flags after `--` (or in `--extra`, repeatable, split like a shell line) go to every cell's
`kprune.train` command after the flagfile, so they override it. The sweep sets `--method`,
`--target_sparsity`, `--seed` and `--model_dir` itself. For `lth`, `kprune.train` turns the
target sparsity into the fewest rounds that reach it (1 - (1 - lth_rate)^rounds), so the
achieved sparsity is higher than the target: tables and plot use the achieved sparsity read
from `results.json` (`global_sparsity`).

The code: this file holds the flags and `main`; tools/sweep_cells.py the cells (names, commands,
shared settings, results rows), tools/sweep_run.py the training processes and the progress,
tools/sweep_report.py the CSV, JSON, Markdown and plot.

Exit status: 0 when every cell is finished, 1 when some cell failed (the others still run and
are reported), 2 for bad input, or when a cell's training command itself reports bad input
(the same flags go to every cell, so the sweep stops there).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import signal
import sys

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/sweep.py` puts tools/, not the root, on sys.path
    sys.path.insert(0, str(ROOT))

from kprune._internal.files import write_text_atomic  # noqa: E402
from kprune._internal.validate import check_at_least, check_choices, check_sparsity  # noqa: E402
from kprune.train import METHOD_NAMES  # noqa: E402
from tools import cli  # noqa: E402
from tools.sweep_cells import (  # noqa: E402
    COLUMNS,
    COMMANDS,
    RESULTS,
    Cell,
    SweepConfig,
    SweepError,
    check_settings,
    plan_cells,
    train_args,
)
from tools.sweep_report import summarize, write_reports  # noqa: E402
from tools.sweep_run import run_cells, runner  # noqa: E402

# Cell, COLUMNS and summarize are for callers of the sweep (tests, notebooks) too.
__all__ = ["COLUMNS", "Cell", "SweepConfig", "SweepError", "main", "parse_args", "summarize"]

# Flags the sweep sets per cell; passing them through would break the grid.
OWNED_FLAGS = ("method", "target_sparsity", "seed", "model_dir", "dry_run", "lth_rounds")

# The sweep's own flags, on its own FlagValues: kprune.train's live on absl's global FLAGS and
# run in this process under --in_process (tools/cli.py). --flagfile is not among them: it names
# the kprune.train flagfile of every cell (see the module docstring).
FLAGS = flags.FlagValues()
flags.DEFINE_list(
    "methods", ["linear"], "Comma-separated kprune.train methods (dense too).", flag_values=FLAGS
)
flags.DEFINE_list(
    "sparsities",
    ["0.5", "0.7", "0.9", "0.95", "0.98"],
    "Comma-separated target sparsities in [0, 1).",
    flag_values=FLAGS,
)
flags.DEFINE_integer("seeds", 3, "Number of seeds per cell.", flag_values=FLAGS)
flags.DEFINE_integer(
    "first_seed", 0, "Seeds are first_seed, first_seed + 1, ...", flag_values=FLAGS
)
flags.DEFINE_bool("dense", False, "Also train the dense baseline once per seed.", flag_values=FLAGS)
flags.DEFINE_multi_string(
    "extra",
    [],
    "Flags for every cell's kprune.train command (repeatable; split like a shell line).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "out", None, "Sweep directory (default saved_models/sweep-<flagfile name>).", flag_values=FLAGS
)
flags.DEFINE_bool(
    "dry_run",
    False,
    "List the cells and dry-run one cell per method; train nothing, write nothing.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "report_only", False, "Write the reports from the finished cells.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "in_process",
    False,
    "Run cells in this process (faster start, no isolation; for tests and debugging).",
    flag_values=FLAGS,
)
flags.DEFINE_bool("show_output", False, "Echo every cell's training output.", flag_values=FLAGS)


# -- input -------------------------------------------------------------------------------------
def _take_flagfile(argv):
    """`(flagfile or None, the other arguments)`: the last `--flagfile=PATH` (or `--flagfile
    PATH`) is the cells' kprune.train flagfile, which absl must not expand into sweep flags."""
    flagfile, rest = None, []
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "flagfile":
            flagfile = value if has_value else next(args, "")
            if not flagfile:
                raise SweepError("--flagfile needs a path: --flagfile=configs/NAME.flags")
        else:
            rest.append(arg)
    return flagfile, rest


def _parse_sparsities(values):
    text = ",".join(values)
    numbers = []
    for item in (v for v in values if v):
        try:
            value = float(item)
        except ValueError as err:
            raise SweepError(
                f"--sparsities must be comma-separated numbers in [0, 1). Received: "
                f"--sparsities={text}"
            ) from err
        try:
            numbers.append(check_sparsity("sparsities", value))
        except ValueError as err:
            raise SweepError(
                f"--sparsities: every sparsity must be in [0, 1), 1 excluded. Received: {item} "
                f"in --sparsities={text}"
            ) from err
    if not numbers:
        raise SweepError(f"--sparsities needs at least one value. Received: --sparsities={text}")
    numbers = sorted(set(numbers))
    names = [Cell("linear", v, 0).name for v in numbers]
    for a, b, name_a, name_b in zip(numbers, numbers[1:], names, names[1:]):
        if name_a == name_b:  # run directories are named by the percentage, to 6 digits
            raise SweepError(
                f"--sparsities: {a!r} and {b!r} are too close to tell apart (both name their run "
                f"directories {name_a.split('-')[1]}%). Received: --sparsities={text}"
            )
    return tuple(numbers)


def _flag_name(arg):
    name = arg[2:].split("=", 1)[0]
    return name[2:] if name.startswith("no") and name[2:] in OWNED_FLAGS else name


def _check_extra(extra):
    for arg in extra:
        if not arg.startswith("--"):
            raise SweepError(
                f"Flags for kprune.train are written --name=value. Received: {arg!r} (after "
                "-- or in --extra)"
            )
        if _flag_name(arg) in OWNED_FLAGS:
            raise SweepError(
                f"{arg} cannot be passed through: the sweep sets --method, --target_sparsity, "
                "--seed and --model_dir for every cell (and lth's rounds follow from the target "
                "sparsity). Use --methods, --sparsities, --seeds and --out instead."
            )


def _checked(check, *args):
    try:
        return check(*args)
    except ValueError as err:
        raise SweepError(str(err)) from err


def parse_args(argv):
    """Parses the sweep's command line (without the program name) into a `SweepConfig`.

    Everything after a bare `--` goes to every cell's `kprune.train` command.

    Raises:
        SweepError: an unknown flag or method, a sparsity outside [0, 1), no seeds, a missing
            flagfile, or a pass-through flag that the sweep sets itself.

    Example:

    >>> parse_args(["--methods=snip", "--sparsities=0.5,0.9", "--", "--epochs=5"]).extra
    ('--epochs=5',)
    >>> [c.name for c in plan_cells(parse_args(["--methods=linear", "--sparsities=0.9"]))]
    ['linear-90-seed0', 'linear-90-seed1', 'linear-90-seed2']
    """
    argv = list(argv)
    original = tuple(argv)
    passthrough = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    flagfile_arg, argv = _take_flagfile(argv)
    try:
        cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    except cli.UsageError as err:
        raise SweepError(str(err)) from err

    given = [m for m in FLAGS.methods if m]
    methods = _checked(check_choices, "--methods", given, METHOD_NAMES, "method(s)")
    dense = FLAGS.dense or "dense" in methods
    methods = tuple(dict.fromkeys(m for m in methods if m != "dense"))
    sparsities = _parse_sparsities(FLAGS.sparsities) if methods else ()
    _checked(check_at_least, "--seeds", FLAGS.seeds, 1)
    _checked(check_at_least, "--first_seed", FLAGS.first_seed, 0)
    flagfile = None
    if flagfile_arg:
        flagfile = pathlib.Path(flagfile_arg).resolve()
        if not flagfile.is_file():
            raise SweepError(f"--flagfile={flagfile_arg} is not a file.")
    extra = []
    for chunk in FLAGS.extra:
        extra += shlex.split(chunk)
    extra += passthrough
    _check_extra(extra)
    # Next to kprune.train's own default run directories (saved_models/ in the working directory).
    default_out = pathlib.Path("saved_models") / f"sweep-{flagfile.stem if flagfile else 'default'}"
    return SweepConfig(
        methods=methods,
        sparsities=sparsities,
        seeds=tuple(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds)),
        dense=dense,
        flagfile=flagfile,
        extra=tuple(extra),
        out=pathlib.Path(FLAGS.out or default_out).resolve(),
        dry_run=FLAGS.dry_run,
        report_only=FLAGS.report_only,
        in_process=FLAGS.in_process,
        show_output=FLAGS.show_output,
        argv=original,
    )


# -- command line ------------------------------------------------------------------------------
def _dry_run(config, cells):
    print(f"sweep: {len(cells)} cells in {config.out}")
    for index, cell in enumerate(cells, 1):
        run_dir = config.out / cell.name
        state = (
            "finished"
            if (run_dir / RESULTS).is_file()
            else ("unfinished (resumes)" if run_dir.exists() else "to run")
        )
        print(f"[{index}/{len(cells)}] {cell.name}: {state}")
    print("command of the first cell:")
    print("  python -m kprune.train " + shlex.join(train_args(config, cells[0])))
    # One dry run of kprune.train per method catches bad flags before hours of training.
    status = 0
    seen = set()
    for cell in cells:
        if cell.method in seen:
            continue
        seen.add(cell.method)
        args = [*train_args(config, cell), "--dry_run"]
        code = runner(config)(args, os.devnull, False)
        print(f"kprune.train --dry_run for {cell.label()}: {'ok' if code == 0 else 'FAILED'}")
        if code != 0:
            status = 2
            print("  rerun it to see why: python -m kprune.train " + shlex.join(args))
    print("dry run: nothing trained, no files written.")
    return status


def _print_outcome(config, counts, rows, png):
    done = sum(r["status"] == "done" for r in rows)
    print(
        f"sweep: {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"{done} of {len(rows)} cells finished."
    )
    print(f"wrote {config.out / 'sweep.csv'}, sweep.json, sweep.md", end="")
    if png:
        print(", sweep.png")
    else:
        print(
            "\nsweep.png not written: "
            + (
                "matplotlib is not installed (pip install 'kprune[plot]')."
                if done
                else "no finished cell."
            )
        )
    return 0 if done == len(rows) else 1


def main(argv=None):
    """Runs the sweep command line; returns the exit status (0, 1 or 2; see the module doc).

    Example:

    >>> main(["--methods=linear", "--sparsities=0.9", "--seeds=1", "--dry_run"])  # doctest: +SKIP
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_args(argv)
        cells = plan_cells(config)
        if not cells:
            raise SweepError("Nothing to run: give --methods and --sparsities, or --dense.")
        settings_path, settings = check_settings(config)
        if config.dry_run:
            return _dry_run(config, cells)
        if config.report_only and not config.out.is_dir():
            raise SweepError(f"--report_only: there is no sweep in --out={config.out}.")
        counts = {"ran": 0, "skipped": 0, "failed": 0}
        if not config.report_only:
            config.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(settings_path, json.dumps(settings, indent=2) + "\n")
            stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            with open(config.out / COMMANDS, "a") as log:
                log.write(f"# {stamp}\npython tools/sweep.py {shlex.join(config.argv)}\n")
            try:
                counts = run_cells(config, cells)
            finally:
                # Whatever happened, tabulate what is finished.
                rows, _, png = write_reports(config, cells)
        else:
            rows, _, png = write_reports(config, cells)
    except cli.UsageError as err:  # SweepError included
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            "\ninterrupted: the reports cover the finished cells; rerun the same command to "
            "resume.\n"
        )
        return 130
    return _print_outcome(config, counts, rows, png)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the running cell too
    sys.exit(main())
