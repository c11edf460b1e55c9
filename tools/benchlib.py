"""Shared helpers for the benchmark scripts in tools/ (not part of the kprune package).

Every benchmark records the library versions, the machine and its exact settings with its
numbers, and compares variants by interleaving short timed stretches (A B A B ...) so that the
slow drifts of a small shared machine hit both sides alike (see shared/DESIGN.md).

Example:

>>> sorted(environment())
['date', 'machine', 'versions']
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from kprune._internal.files import write_text_atomic
from kprune.versions import machine, versions


def environment() -> dict:
    """Date, versions and machine (`kprune.versions`) to store next to every benchmark figure."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "machine": machine(),
    }


def interleaved_ratio(run_a, run_b, *, pairs, reps):
    """Times `run_a` and `run_b` (each runs `reps` steps) in alternation, `pairs` times.

    Returns a dict with per-step medians in milliseconds for A and B and the median, min and
    max of the pairwise ratios B/A.

    Example:

    >>> def steps(n):
    ...     time.sleep(n / 1000)
    >>> result = interleaved_ratio(steps, steps, pairs=3, reps=2)
    >>> result["pairs"], result["ratio_min"] <= result["ratio_median"] <= result["ratio_max"]
    (3, True)
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
    """Writes `payload` as indented JSON, atomically, creating parent folders.

    Example:

    >>> write_json("bench.json", {"models": {}})  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
