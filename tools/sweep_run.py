"""Running the cells of a sweep: one `python -m kprune.train` process each, with progress.

A cell whose run directory holds results.json is skipped; any other (new, or interrupted) is
started with the same command, and kprune.train resumes an interrupted one from its last
checkpoint. Each cell's output goes to `OUT/logs/<cell>.log`; the progress lines give each
cell's result, its time, the time elapsed and an ETA weighted by each cell's cost (lth trains
once per round).

Example:

>>> _duration(3725), _duration(65)
('1:02:05', '1:05')
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import subprocess
import sys
import time

from kprune import train
from tools.sweep_cells import RESULTS, SweepError, cost, read_cell, train_args

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_subprocess(args, log, show_output):
    """Runs `python -m kprune.train ARGS` with its output appended to `log`; its exit status."""
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


def run_in_process(args, log, show_output):
    """The same in this process (`kprune.train.cli`): faster to start, no isolation."""
    with open(log, "a") as sink:
        sink.write(f"$ python -m kprune.train {shlex.join(args)}  (in process)\n")
        sink.flush()
        if show_output:
            return train.cli(["kprune.train", *args])
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return train.cli(["kprune.train", *args])


def runner(config):
    """`run_in_process` under `--in_process`, else `run_subprocess`."""
    return run_in_process if config.in_process else run_subprocess


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
    if row["test_accuracy"] is None:  # diverged: results.json holds null
        return f"diverged (loss NaN or infinite) at sparsity {row['sparsity']:.4f}"
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

    >>> run_cells(config, plan_cells(config))  # doctest: +SKIP
    {'ran': 1, 'skipped': 0, 'failed': 0}
    """
    run = runner(config)
    logs = config.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not (config.out / c.name / RESULTS).is_file()]
    cost_left = sum(cost(config, c) for c in todo)
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
        status = run(train_args(config, cell), logs / f"{cell.name}.log", config.show_output)
        took = time.perf_counter() - cell_start
        cell_cost = cost(config, cell)
        cost_done += cell_cost
        cost_left -= cell_cost
        elapsed = time.perf_counter() - start
        eta = elapsed / cost_done * cost_left
        timing = f"in {_duration(took)} | elapsed {_duration(elapsed)}, ETA {_duration(eta)}"
        # A diverged run (exit status 4) is a finished cell too: its results.json says so.
        if status in (0, train.DIVERGED) and (run_dir / RESULTS).is_file():
            counts["ran"] += 1
            print(f"{prefix}: done {timing}: {_result_line(read_cell(config, cell))}", flush=True)
            continue
        counts["failed"] += 1
        print(f"{prefix}: FAILED (exit status {status}) {timing}; log {logs / cell.name}.log")
        print(_tail(logs / f"{cell.name}.log"), flush=True)
        if status == 2:
            raise SweepError(
                f"kprune.train reported bad input for {cell.label()} (exit status 2; see the log "
                "above: bad flags, or its run directory is in use by another run). Every cell "
                "gets the same flags, so the sweep stops here."
            )
    return counts
