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

Flags after `--` (or in `--extra`, repeatable, split like a shell line) go to every cell's
`kprune.train` command after the flagfile, so they override it. The sweep sets `--method`,
`--target_sparsity`, `--seed` and `--model_dir` itself. For `lth`, `kprune.train` turns the
target sparsity into the fewest rounds that reach it (1 - (1 - lth_rate)^rounds), so the
achieved sparsity is higher than the target: tables and plot use the achieved sparsity read
from `results.json` (`global_sparsity`).

Exit status: 0 when every cell is finished, 1 when some cell failed (the others still run and
are reported), 2 for bad input, or when a cell's training command itself reports bad input
(the same flags go to every cell, so the sweep stops there).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import pathlib
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/sweep.py` puts tools/, not the root, on sys.path
    sys.path.insert(0, str(ROOT))

from kprune._internal.files import write_text_atomic  # noqa: E402
from tools.benchlib import cpu_model  # noqa: E402

# Flags the sweep sets per cell; passing them through would break the grid.
OWNED_FLAGS = ("method", "target_sparsity", "seed", "model_dir", "dry_run", "lth_rounds")
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
COPIED_COLUMNS = tuple(
    key
    for key in COLUMNS
    if key
    not in (
        "cell",
        "method",
        "target_sparsity",
        "seed",
        "status",
        "sparsity",
        "lth_rounds",
        "run_dir",
    )
)
RESULTS = "results.json"
COMMANDS = "sweep_commands.txt"


class SweepError(ValueError):
    """Bad sweep input, found before any cell runs; the command line exits with status 2.

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
    """What to sweep, parsed and checked by `parse_args`.

    Example:

    >>> config = parse_args(["--methods=linear", "--sparsities=0.9", "--seeds=2"])
    >>> [cell.name for cell in plan_cells(config)]
    ['linear-90-seed0', 'linear-90-seed1']
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


# -- input -------------------------------------------------------------------------------------
def _method_names():
    from kprune.train import METHOD_NAMES

    return METHOD_NAMES


def _method_rank(method):
    """Reports list methods in kprune.train's order (dense, linear, ..., lth), whatever the
    order of the invocations that ran them."""
    names = _method_names()
    return names.index(method) if method in names else len(names)


def _parse_sparsities(text):
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError as err:
            raise SweepError(
                f"--sparsities must be comma-separated numbers in [0, 1). Received: "
                f"--sparsities={text}"
            ) from err
        if not (0.0 <= value < 1.0) or math.isnan(value):
            raise SweepError(
                f"--sparsities: every sparsity must be in [0, 1), 1 excluded. Received: {item} "
                f"in --sparsities={text}"
            )
        values.append(value)
    if not values:
        raise SweepError(f"--sparsities needs at least one value. Received: --sparsities={text}")
    values = sorted(set(values))
    names = [Cell("linear", v, 0).name for v in values]
    for a, b, name_a, name_b in zip(values, values[1:], names, names[1:]):
        if name_a == name_b:  # run directories are named by the percentage, to 6 digits
            raise SweepError(
                f"--sparsities: {a!r} and {b!r} are too close to tell apart (both name their run "
                f"directories {name_a.split('-')[1]}%). Received: --sparsities={text}"
            )
    return tuple(values)


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


def parse_args(argv):
    """Parses the sweep's command line (without the program name) into a `SweepConfig`.

    Everything after a bare `--` goes to every cell's `kprune.train` command.

    Raises:
        SweepError: unknown method, sparsity outside [0, 1), no seeds, a missing flagfile, or a
            pass-through flag that the sweep sets itself.

    Example:

    >>> parse_args(["--methods=snip", "--sparsities=0.5,0.9", "--", "--epochs=5"]).extra
    ('--epochs=5',)
    """
    argv = list(argv)
    original = tuple(argv)
    passthrough = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="tools/sweep.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags after -- go to every cell's python -m kprune.train command.",
    )
    parser.add_argument("--flagfile", help="kprune.train flagfile shared by every cell")
    parser.add_argument(
        "--methods", default="linear", help="comma-separated kprune.train methods (dense too)"
    )
    parser.add_argument(
        "--sparsities", default="0.5,0.7,0.9,0.95,0.98", help="target sparsities in [0, 1)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per cell")
    parser.add_argument("--first_seed", type=int, default=0, help="seeds are first_seed, ...")
    parser.add_argument(
        "--dense", action="store_true", help="also train the dense baseline once per seed"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="flags for every cell's kprune.train command (repeatable; split like a shell line)",
    )
    parser.add_argument("--out", help="sweep directory (default saved_models/sweep-<flagfile>)")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="list the cells and dry-run one cell per method; train nothing, write nothing",
    )
    parser.add_argument(
        "--report_only", action="store_true", help="write the reports from the finished cells"
    )
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="run cells in this process (faster start, no isolation; for tests and debugging)",
    )
    parser.add_argument(
        "--show_output", action="store_true", help="echo every cell's training output"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse prints its own message; keep the status at 2
        raise SweepError("invalid command line (see the message above)") from exit_

    known = _method_names()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if not methods or unknown:
        raise SweepError(
            f"--methods: unknown method(s) {unknown or '(none given)'} in "
            f"--methods={args.methods}. Available: {', '.join(known)}."
        )
    dense = args.dense or "dense" in methods
    methods = tuple(dict.fromkeys(m for m in methods if m != "dense"))
    sparsities = _parse_sparsities(args.sparsities) if methods else ()
    if args.seeds < 1:
        raise SweepError(f"--seeds must be at least 1. Received: --seeds={args.seeds}")
    if args.first_seed < 0:
        raise SweepError(f"--first_seed must be >= 0. Received: --first_seed={args.first_seed}")
    flagfile = None
    if args.flagfile:
        flagfile = pathlib.Path(args.flagfile).resolve()
        if not flagfile.is_file():
            raise SweepError(f"--flagfile={args.flagfile} is not a file.")
    extra = []
    for chunk in args.extra:
        extra += shlex.split(chunk)
    extra += passthrough
    _check_extra(extra)
    # Next to kprune.train's own default run directories (saved_models/ in the working directory).
    default_out = pathlib.Path("saved_models") / f"sweep-{flagfile.stem if flagfile else 'default'}"
    return SweepConfig(
        methods=methods,
        sparsities=sparsities,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        dense=dense,
        flagfile=flagfile,
        extra=tuple(extra),
        out=pathlib.Path(args.out or default_out).resolve(),
        dry_run=args.dry_run,
        report_only=args.report_only,
        in_process=args.in_process,
        show_output=args.show_output,
        argv=original,
    )


# -- the grid ----------------------------------------------------------------------------------
def plan_cells(config):
    """The cells in running order: seed by seed (dense first), then sparsity, then method.

    A whole seed of the grid is done before the next starts, so a partial sweep already
    compares every method.

    Example:

    >>> config = parse_args(["--methods=linear,snip", "--sparsities=0.9", "--seeds=1", "--dense"])
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


def _report_cells(config, cells):
    """The grid plus every finished cell of `out` (an extended sweep reports all of it)."""
    known = {cell.name for cell in cells}
    extra = [cell for cell in finished_cells(config.out) if cell.name not in known]
    return sorted(
        [*cells, *extra],
        key=lambda c: (c.seed, c.target or 0.0, _method_rank(c.method), c.method),
    )


def train_args(config, cell):
    """`kprune.train` arguments of one cell: flagfile, pass-through flags, then the cell's own.

    Example:

    >>> config = parse_args(["--methods=snip", "--sparsities=0.9", "--out=/tmp/s"])
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


def _flag_value(config, name):
    """Last value of --name in the flagfile and pass-through flags (None if absent)."""
    lines = []
    if config.flagfile:
        lines = [ln.strip() for ln in config.flagfile.read_text().splitlines()]
    value = None
    for arg in [*lines, *config.extra]:
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _cost(config, cell):
    """Relative cost of a cell, in trainings (lth trains rounds + 1 times); for the ETA."""
    if cell.method != "lth":
        return 1.0
    from kprune.train import lth_rounds

    rate = _flag_value(config, "lth_rate")
    try:
        return 1.0 + lth_rounds(cell.target, float(rate) if rate else 0.2)
    except ValueError:
        return 1.0


def _settings(config):
    """What every cell shares; finished cells are only reused under the same settings."""
    lines = []
    if config.flagfile:
        lines = [
            ln.strip()
            for ln in config.flagfile.read_text().splitlines()
            if ln.strip().startswith("--")
        ]
    return {
        "flagfile": str(config.flagfile) if config.flagfile else None,
        "flagfile_flags_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "extra": list(config.extra),
    }


def _check_settings(config):
    path = config.out / "sweep_settings.json"
    current = _settings(config)
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


# -- running -----------------------------------------------------------------------------------
def _run_subprocess(args, log, show_output):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The checkout's kprune, wherever the sweep is started from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "kprune.train", *args]
    with open(log, "a") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        sink.flush()
        output = subprocess.PIPE if show_output else sink
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, text=True
        )
        try:
            if show_output:
                for line in process.stdout:
                    sink.write(line)
                    sys.stdout.write("    | " + line)
            return process.wait()
        finally:
            # Interrupted (Ctrl-C, SIGTERM): do not leave a training run behind. It resumes
            # from its last checkpoint when the sweep is started again.
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _run_in_process(args, log, show_output):
    from kprune import train

    with open(log, "a") as sink:
        sink.write(f"$ python -m kprune.train {shlex.join(args)}  (in process)\n")
        sink.flush()
        if show_output:
            return train.cli(["kprune.train", *args])
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return train.cli(["kprune.train", *args])


def _tail(path, lines=8):
    try:
        text = pathlib.Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _result_line(row):
    text = f"test acc {row['test_accuracy']:.4f} at sparsity {row['sparsity']:.4f}"
    if row.get("lth_rounds") not in (None, ""):
        rounds = row["lth_rounds"]
        text += f" ({rounds} round{'s' if rounds != 1 else ''})"
    return text


def run_cells(config, cells):
    """Runs every unfinished cell, printing progress; returns `{"ran", "skipped", "failed"}`.

    A cell is finished when its run directory holds results.json; others (new or interrupted)
    are started with the same command, and kprune.train resumes an interrupted one.

    Raises:
        SweepError: a cell's training command reported bad input (exit status 2); the
            remaining cells would fail the same way.

    Example:

    >>> config = parse_args(["--methods=linear", "--sparsities=0.9", "--seeds=1"])
    >>> run_cells(config, plan_cells(config))  # doctest: +SKIP
    {'ran': 1, 'skipped': 0, 'failed': 0}
    """
    runner = _run_in_process if config.in_process else _run_subprocess
    logs = config.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not (config.out / c.name / RESULTS).is_file()]
    cost_left = sum(_cost(config, c) for c in todo)
    print(
        f"sweep: {len(cells)} cells in {config.out}: {len(cells) - len(todo)} finished "
        f"(skipped), {len(todo)} to run",
        flush=True,
    )
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    start, cost_done = time.perf_counter(), 0.0
    width = len(str(len(cells)))
    for index, cell in enumerate(cells, 1):
        prefix = f"[{index:>{width}}/{len(cells)}] {cell.label()}"
        run_dir = config.out / cell.name
        if (run_dir / RESULTS).is_file():
            counts["skipped"] += 1
            print(f"{prefix}: skipped, finished: {_result_line(read_cell(config, cell))}")
            continue
        state = "resuming" if run_dir.exists() else "running"
        print(f"{prefix}: {state} ...", flush=True)
        cell_start = time.perf_counter()
        status = runner(train_args(config, cell), logs / f"{cell.name}.log", config.show_output)
        took = time.perf_counter() - cell_start
        cost = _cost(config, cell)
        cost_done += cost
        cost_left -= cost
        elapsed = time.perf_counter() - start
        eta = elapsed / cost_done * cost_left
        timing = f"in {_duration(took)} | elapsed {_duration(elapsed)}, ETA {_duration(eta)}"
        if status == 0 and (run_dir / RESULTS).is_file():
            counts["ran"] += 1
            print(f"{prefix}: done {timing}: {_result_line(read_cell(config, cell))}", flush=True)
            continue
        counts["failed"] += 1
        print(f"{prefix}: FAILED (exit status {status}) {timing}; log {logs / cell.name}.log")
        print(_tail(logs / f"{cell.name}.log"), flush=True)
        if status == 2:
            raise SweepError(
                f"kprune.train reported bad input for {cell.label()} (exit status 2; see the log "
                "above). Every cell gets the same flags, so the sweep stops here."
            )
    return counts


# -- results -----------------------------------------------------------------------------------
def read_cell(config, cell):
    """One row of sweep.csv from the cell's results.json (status "missing" if it has none).

    Example:

    >>> row = read_cell(config, Cell("linear", 0.9, 0))  # doctest: +SKIP
    >>> row["sparsity"], row["test_accuracy"]  # doctest: +SKIP
    (0.9, 0.97)
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
    row["status"] = "done"
    row["sparsity"] = results["global_sparsity"]
    for key in COPIED_COLUMNS:
        row[key] = results.get(key)
    if cell.method == "lth" and results.get("rounds"):
        row["lth_rounds"] = len(results["rounds"]) - 1  # round 0 is the dense training
    return row


def summarize(rows):
    """Statistics over seeds per (method, target sparsity), finished cells only.

    Each group has `n`, `mean`, `min`, `max` of the test accuracy, the mean best-epoch
    accuracy and the mean, min and max achieved sparsity.

    Example:

    >>> rows = [{"method": "snip", "target_sparsity": 0.9, "status": "done", "sparsity": 0.9,
    ...          "test_accuracy": a, "best_test_accuracy": a, "seed": k}
    ...         for k, a in enumerate((0.90, 0.94))]
    >>> group = summarize(rows)[0]
    >>> group["n"], round(group["mean"], 4), group["min"], group["max"]
    (2, 0.92, 0.9, 0.94)
    """
    groups = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault((row["method"], row["target_sparsity"]), []).append(row)
    summary = []
    for (method, target), members in groups.items():
        accuracy = [r["test_accuracy"] for r in members]
        sparsity = [r["sparsity"] for r in members]
        best = [r["best_test_accuracy"] for r in members if r["best_test_accuracy"] is not None]
        summary.append(
            {
                "method": method,
                "target_sparsity": target,
                "n": len(members),
                "mean": statistics.fmean(accuracy),
                "min": min(accuracy),
                "max": max(accuracy),
                "best_mean": statistics.fmean(best) if best else None,
                "sparsity_mean": statistics.fmean(sparsity),
                "sparsity_min": min(sparsity),
                "sparsity_max": max(sparsity),
                "seeds": sorted(r["seed"] for r in members),
            }
        )
    summary.sort(key=lambda g: (_method_rank(g["method"]), g["method"], g["target_sparsity"]))
    return summary


def _pct(value, digits=2):
    return f"{100 * value:.{digits}f}"


def _accuracy_text(group):
    text = f"{_pct(group['mean'])} [{_pct(group['min'])}–{_pct(group['max'])}]"
    return text if group["n"] > 1 else _pct(group["mean"])


def _sparsity_heading(value):
    return f"{100 * value:.4f}".rstrip("0").rstrip(".") + "%"


def markdown_report(rows, summary, header_lines=()):
    """The Markdown tables of sweep.md (a string): methods x target sparsities, then one row
    per (method, sparsity) with the achieved sparsity and the accuracy's spread.

    Example:

    >>> print(markdown_report(rows, summarize(rows)))  # doctest: +SKIP
    """
    done = [r for r in rows if r["status"] == "done"]
    models = sorted({f"{r['model']} on {r['dataset']}" for r in done}) or ["(no finished cell)"]
    epochs = sorted({int(r["epochs"]) for r in done})
    epochs_text = "/".join(map(str, epochs)) or "?"
    epochs_text += " epoch" + ("" if epochs == [1] else "s")
    if any(r["method"] == "lth" for r in done):
        epochs_text += "; lth: per round"
    lines = [f"# Sweep: {', '.join(models)}", "", *header_lines]
    lines += [
        f"Test accuracy (%) at the end of training ({epochs_text}): mean over seeds "
        "[min–max]; n = seeds finished. Sparsity = zeros among the prunable weights, read "
        "from results.json (lth reaches its target in whole rounds, so it lands above it).",
        "",
    ]
    by_key = {(g["method"], g["target_sparsity"]): g for g in summary}
    dense = by_key.get(("dense", 0.0))
    if dense:
        lines += [f"**Dense baseline**: {_accuracy_text(dense)} (n = {dense['n']}).", ""]
    methods = sorted(
        {r["method"] for r in rows if r["method"] != "dense"}, key=lambda m: (_method_rank(m), m)
    )
    sparsities = sorted({r["target_sparsity"] for r in rows if r["method"] != "dense"})
    if methods:
        lines.append("| method | " + " | ".join(map(_sparsity_heading, sparsities)) + " |")
        lines.append("|---" * (len(sparsities) + 1) + "|")
        for method in methods:
            cells = []
            for target in sparsities:
                group = by_key.get((method, target))
                if group is None:
                    cells.append("—")
                    continue
                text = _accuracy_text(group)
                if abs(group["sparsity_mean"] - target) > 5e-5:
                    text += f" @ {_pct(group['sparsity_mean'])}%"
                cells.append(text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "| method | target sparsity % | achieved sparsity % | test acc. % mean | min | max | "
        "best-epoch acc. % mean | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in summary:
        best = "—" if g["best_mean"] is None else _pct(g["best_mean"])
        lines.append(
            f"| {g['method']} | {_pct(g['target_sparsity'])} | {_pct(g['sparsity_mean'], 3)} | "
            f"{_pct(g['mean'])} | {_pct(g['min'])} | {_pct(g['max'])} | {best} | {g['n']} |"
        )
    missing = [r["cell"] for r in rows if r["status"] != "done"]
    if missing:
        lines += ["", f"Not finished ({len(missing)}): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def plot(summary, path, title):
    """Draws test accuracy against achieved sparsity to `path` (PNG); False without matplotlib.

    One line per method through the means over seeds, a shaded min-max band, and the dense
    baseline as a horizontal line with its band. The x axis is on a logit scale when every
    point lies in (0, 1), which spreads out 0.9, 0.95, 0.98 and 0.99.

    Example:

    >>> plot(summarize(rows), "sweep.png", "lenet300_100 on digits")  # doctest: +SKIP
    True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    dense = [g for g in summary if g["method"] == "dense"]
    pruned = [g for g in summary if g["method"] != "dense"]
    for method in dict.fromkeys(g["method"] for g in pruned):
        groups = sorted(
            (g for g in pruned if g["method"] == method), key=lambda g: g["sparsity_mean"]
        )
        x = [g["sparsity_mean"] for g in groups]
        mean = [100 * g["mean"] for g in groups]
        low = [100 * g["min"] for g in groups]
        high = [100 * g["max"] for g in groups]
        (line,) = axes.plot(x, mean, marker="o", label=method)
        if len(x) > 1:
            axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            axes.errorbar(x, mean, yerr=[[mean[0] - low[0]], [high[0] - mean[0]]],
                          color=line.get_color(), capsize=3)  # fmt: skip
    for g in dense:
        axes.axhline(100 * g["mean"], color="black", linestyle="--", label=f"dense (n={g['n']})")
        axes.axhspan(100 * g["min"], 100 * g["max"], color="black", alpha=0.1, linewidth=0)
    xs = sorted({g["sparsity_mean"] for g in pruned})
    if xs and all(0.0 < x < 1.0 for x in xs):
        axes.set_xscale("logit")
        logit = [math.log(x / (1 - x)) for x in xs]
        pad = max(0.5, 0.12 * (logit[-1] - logit[0]))  # centres a single sparsity
        left, right = logit[0] - pad, logit[-1] + pad
        axes.set_xlim(1 / (1 + math.exp(-left)), 1 / (1 + math.exp(-right)))
        # A tick at every sparsity reached, except where labels would overlap (lth lands
        # just above its target).
        ticks, last = [], None
        for x, position in zip(xs, logit):
            if last is None or position - last > 0.1 * (right - left):
                ticks.append(x)
                last = position
        axes.set_xticks(ticks)
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}%"))
    axes.set_xlabel("sparsity (zeros among prunable weights, achieved)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if pruned or dense:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _machine():
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_reports(config, cells):
    """Reads every cell's results.json and writes sweep.csv, .json, .md and .png in `out`.

    The reports cover `cells` (missing ones are listed as such) and every other finished cell
    in `out`, e.g. from an earlier invocation with other methods or seeds.

    Returns:
        `(rows, summary, png_written)`.

    Example:

    >>> rows, summary, png = write_reports(config, plan_cells(config))  # doctest: +SKIP
    """
    rows = [read_cell(config, cell) for cell in _report_cells(config, cells)]
    summary = summarize(rows)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".sweep.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    os.replace(tmp, out / "sweep.csv")

    # Every invocation that trained here, oldest first (a sweep may be extended several times).
    log = out / COMMANDS
    commands = log.read_text().splitlines() if log.is_file() else []
    done = [r for r in rows if r["status"] == "done"]
    versions = {}
    if done:
        results = json.loads((pathlib.Path(done[0]["run_dir"]) / RESULTS).read_text())
        versions = results.get("versions", {})
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = _machine()
    payload = {
        "settings": {
            **_settings(config),
            "methods": list(config.methods),
            "sparsities": list(config.sparsities),
            "seeds": list(config.seeds),
            "dense": config.dense,
            "out": str(out),
            "commands": commands,
        },
        "date": date,
        "machine": machine,
        "versions": versions,
        "cells": rows,
        "summary": summary,
    }
    write_text_atomic(out / "sweep.json", json.dumps(payload, indent=2) + "\n")
    header = []
    if commands:
        header += ["Made by (date, command):", "", "```bash", *commands, "```", ""]
    header += [
        f"{len(done)} of {len(rows)} cells finished; written {date} on {machine['cpu_count']} x "
        f"{machine['cpu_model']} ({machine['platform']}); "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("tensorflow", "keras"))
        + ".",
        "",
    ]
    write_text_atomic(out / "sweep.md", markdown_report(rows, summary, header))
    title = ", ".join(sorted({f"{r['model']} on {r['dataset']}" for r in done})) or "sweep"
    png = plot(summary, out / "sweep.png", title) if done else False
    return rows, summary, png


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
        runner = _run_in_process if config.in_process else _run_subprocess
        code = runner(args, os.devnull, False)
        print(f"kprune.train --dry_run for {cell.label()}: {'ok' if code == 0 else 'FAILED'}")
        if code != 0:
            status = 2
            print("  rerun it to see why: python -m kprune.train " + shlex.join(args))
    print("dry run: nothing trained, no files written.")
    return status


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
        settings_path, settings = _check_settings(config)
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
    except SweepError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            "\ninterrupted: the reports cover the finished cells; rerun the same command to "
            "resume.\n"
        )
        return 130
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the running cell too
    sys.exit(main())
