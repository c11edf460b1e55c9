"""The run directory: whether a run is new, resumed or overwritten, and its files.

A kprune run directory holds `run.flags` (the non-volatile flags, usable as a --flagfile)
from its start and `results.json` once finished. A run with the same flags and no results is
resumed (its checkpoints are in the directory); a finished run, an unfinished one with other
flags or a directory that is not a kprune run is never touched without --overwrite (the last:
never at all). Outputs are written atomically, so a killed run leaves no half file.

Example:

>>> import tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "run.flags").write_text("--epochs=4\\n--nodownload\\n")
24
>>> read_flagfile(root / "run.flags", names=("epochs", "download"))
{'epochs': '--epochs=4', 'download': '--nodownload'}
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

from kprune._internal.files import write_text_atomic
from kprune.experiment.config import FLAG_NAMES, UsageError

__all__ = [
    "FLAGS_FILE",
    "MODEL_FILE",
    "RESULTS_FILE",
    "decide",
    "read_flagfile",
    "save_model",
    "start",
    "write_results",
]

FLAGS_FILE = "run.flags"
RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"  # the final model, pruned and stripped


def decide(config):
    """`"new"`, `"resume"` or `"overwrite"`: what to do with `config.run_dir`.

    Raises:
        UsageError: the directory is not a kprune run, holds a finished run, or an unfinished
            one with other flags (the last two: unless `config.overwrite`).
    """
    run_dir = config.run_dir
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise UsageError(f"--model_dir={run_dir} exists and is not a directory.")
    if not any(run_dir.iterdir()):
        return "new"
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
        shutil.rmtree(run_dir)
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
    """Writes `results` as `run_dir/results.json`: from then on the run counts as finished."""
    text = json.dumps(results, indent=2, default=str) + "\n"
    write_text_atomic(pathlib.Path(run_dir) / RESULTS_FILE, text)
