"""Shared helpers for the benchmark scripts in tools/ (not part of the kprune package).

Every benchmark records the library versions, the machine and its exact settings with its
numbers, and compares variants by interleaving short timed stretches (A B A B ...) so that the
slow drifts of a small shared machine hit both sides alike (see shared/DESIGN.md).

Example:

>>> info = environment()
>>> sorted(info)[:2]
['cpu_count', 'cpu_model']
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Versions and machine facts to store next to every benchmark figure."""
    import tensorflow as tf

    from kprune.versions import versions

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def interleaved_ratio(run_a, run_b, *, pairs, reps):
    """Times `run_a` and `run_b` (each runs `reps` steps) in alternation, `pairs` times.

    Returns a dict with per-step medians in milliseconds for A and B and the median, min and
    max of the pairwise ratios B/A.
    """
    times_a, times_b, ratios = [], [], []
    for _ in range(pairs):
        start = time.perf_counter()
        run_a(reps)
        mid = time.perf_counter()
        run_b(reps)
        end = time.perf_counter()
        a, b = (mid - start) / reps, (end - mid) / reps
        times_a.append(a)
        times_b.append(b)
        ratios.append(b / a)
    return {
        "a_ms": 1000 * statistics.median(times_a),
        "b_ms": 1000 * statistics.median(times_b),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pairs": pairs,
        "steps_per_stretch": reps,
    }


def write_json(path, payload) -> None:
    """Writes `payload` as indented JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
