"""The run directory: whether a run is new, resumed or overwritten, and its files.

A kprune run directory holds `run.flags` (the non-volatile flags, usable as a --flagfile)
from its start and `results.json` once finished. A run with the same flags and no results is
resumed (its checkpoints are in the directory); a finished run, an unfinished one with other
flags or a directory that is not a kprune run is never touched without --overwrite (the last:
never at all). Outputs are written atomically, so a killed run leaves no half file.

A run holds an exclusive lock on `run.lock` in its directory (`lock()`), so a second run into
the same directory is refused while the first lives; the lock dies with its process, so the
file a crashed run leaves behind is simply taken over by the next one.

Example:

>>> import tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "run.flags").write_text("--epochs=4\\n--nodownload\\n")
24
>>> read_flagfile(root / "run.flags", names=("epochs", "download"))
{'epochs': '--epochs=4', 'download': '--nodownload'}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import pathlib
import shutil
import socket

import numpy as np

from kprune._internal.files import write_text_atomic
from kprune.experiment.config import FLAG_NAMES, UsageError

__all__ = [
    "FLAGS_FILE",
    "LOCK_FILE",
    "MODEL_FILE",
    "RESULTS_FILE",
    "decide",
    "lock",
    "read_flagfile",
    "save_model",
    "start",
    "strict_json",
    "write_results",
]

FLAGS_FILE = "run.flags"
RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"  # the final model, pruned and stripped
# Never deleted: unlinking a lock file lets a waiting process lock the old inode while a third
# creates and locks a new file, and two runs would both hold "the" lock.
LOCK_FILE = "run.lock"

_log = logging.getLogger(__name__)


def decide(config, *, locked=False):
    """`"new"`, `"resume"` or `"overwrite"`: what to do with `config.run_dir`.

    `locked`: this process holds the directory's `lock()` (else a live lock is refused).

    Raises:
        UsageError: the directory cannot be created or written, is in use by a live run, is
            not a kprune run, holds a finished run, or an unfinished one with other flags
            (the last two: unless `config.overwrite`).
    """
    run_dir = config.run_dir
    if not run_dir.exists():
        _check_writable(run_dir)
        return "new"
    if not run_dir.is_dir():
        raise UsageError(f"--model_dir={run_dir} exists and is not a directory.")
    _check_writable(run_dir)
    if not locked:
        _check_not_in_use(run_dir)
    if not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return "new"  # empty, or only the lock file of a run that died before run.flags
    if not (run_dir / FLAGS_FILE).is_file():
        raise UsageError(
            f"--model_dir={run_dir} is a non-empty directory that is not a kprune run "
            "(no run.flags). Choose another --model_dir."
        )
    if (run_dir / RESULTS_FILE).is_file():
        if config.overwrite:
            return "overwrite"
        raise UsageError(
            f"{run_dir} already holds a finished run (results.json). Pass --overwrite to "
            "replace it, or choose another --model_dir."
        )
    stored = read_flagfile(run_dir / FLAGS_FILE)
    current = config.flag_lines
    changed = sorted(
        name for name in set(stored) | set(current) if stored.get(name) != current.get(name)
    )
    if changed:
        if config.overwrite:
            return "overwrite"
        raise UsageError(
            f"{run_dir} holds an unfinished run with different flags ({', '.join(changed)}); "
            "rerun with the same flags to resume it, pass --overwrite to start over, or choose "
            "another --model_dir."
        )
    return "resume"


def read_flagfile(path, names=FLAG_NAMES):
    """`{name: line}` of the `--name=value` lines of `path` (`--noname` counts as `name`)."""
    lines = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("--"):
            name = line[2:].split("=", 1)[0]
            if name.startswith("no") and name[2:] in names:
                name = name[2:]
            lines[name] = line
    return lines


def start(config, decision):
    """Creates (or, for `"overwrite"`, empties) the run directory and writes run.flags."""
    run_dir = config.run_dir
    if decision == "overwrite":
        for path in run_dir.iterdir():
            if path.name == LOCK_FILE:  # held by this run (see LOCK_FILE)
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / FLAGS_FILE, "\n".join(config.flag_lines.values()) + "\n")
    return run_dir


def save_model(run_dir, model):
    """Saves `model` as `run_dir/model.keras` through a temporary file; returns the path."""
    path = pathlib.Path(run_dir) / MODEL_FILE
    tmp_path = path.with_name("tmp-" + MODEL_FILE)  # Keras insists on the .keras suffix
    model.save(tmp_path)
    os.replace(tmp_path, path)
    return path


def write_results(run_dir, results):
    """Writes `results` as `run_dir/results.json`: from then on the run counts as finished.

    The file is strict JSON: NaN and infinities (a diverged run's losses) are written as
    `null`, which every JSON reader accepts (bare `NaN` is not JSON).
    """
    text = json.dumps(strict_json(results), indent=2, allow_nan=False, default=str) + "\n"
    write_text_atomic(pathlib.Path(run_dir) / RESULTS_FILE, text)


def strict_json(value):
    """`value` with every NaN or infinite float (NumPy ones included) replaced by None.

    Example:

    >>> strict_json({"loss": [0.5, float("nan")], "best": np.float32("inf"), "n": np.int64(3)})
    {'loss': [0.5, None], 'best': None, 'n': 3}
    """
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()  # Python scalars (or lists), which json can write
        if isinstance(value, list):
            return strict_json(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_writable(run_dir):
    """Raises `UsageError` unless this user can create (or write into) `run_dir`."""
    existing = run_dir
    while not existing.exists():  # False also below a file (ENOTDIR)
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"--model_dir={run_dir} cannot be created: {existing} is a file, not a directory. "
            "Choose another --model_dir."
        )
    # os.access answers for the real user and sees read-only mounts; root passes mode bits.
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == run_dir else f" cannot be created: {existing}"
        raise UsageError(
            f"--model_dir={run_dir}{where} is not writable by this user. Choose another "
            "--model_dir, or make it writable."
        )


def _holder(words):
    """`"PID 12 on host"` from the words of a lock file (`["12", "host"]`)."""
    if not words:  # the holder has not written its PID yet
        return "PID unknown"
    return f"PID {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "")


def _in_use_error(run_dir, lock_path):
    try:
        words = pathlib.Path(lock_path).read_text().split()
    except OSError:
        words = []
    stop = f"stop it (kill {words[0]})" if words else "stop it"
    return UsageError(
        f"--model_dir={run_dir} is in use by another kprune run ({_holder(words)}; lock file "
        f"{lock_path}). Wait for it to finish, {stop} and rerun to resume, or choose another "
        "--model_dir."
    )


def _check_not_in_use(run_dir):
    """Raises `UsageError` if a live process holds `run_dir`'s lock; writes nothing."""
    lock_path = pathlib.Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDONLY)  # flock needs no write access
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use_error(run_dir, lock_path) from None
    finally:
        os.close(fd)  # also releases the probe's lock


@contextlib.contextmanager
def lock(run_dir):
    """Holds an exclusive lock on `run_dir/run.lock` (creating both) for the `with` block.

    The lock file holds the PID and host of the holder, for the message another run gets.
    The lock is an `flock`, which the kernel releases when the process dies, so a lock file
    left by a crashed run is taken over (and logged).

    Raises:
        UsageError: another live process holds the lock (the message names its PID), or the
            directory or its lock file cannot be created.

    Example:

    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with lock(root / "run"):
    ...     (root / "run" / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    True
    """
    run_dir = pathlib.Path(run_dir)
    lock_path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:  # what decide() cannot see: a full disk, a mount gone read-only
        raise UsageError(f"--model_dir={run_dir} cannot be written: {err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use_error(run_dir, lock_path) from None
        previous = os.read(fd, 4096).decode(errors="replace").split()
        if previous and previous[0] != str(os.getpid()):
            _log.info("Taking over %s from %s, no longer running.", lock_path, _holder(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # releases the lock; the file stays (see LOCK_FILE)
