"""The libraries and the machine behind a result, recorded next to every result.

`versions()` and `machine()` are what results files and every benchmark's JSON report, so a
figure can be traced to the code and the hardware that produced it.

Example:

>>> sorted(versions())[:3]
['absl-py', 'ai-edge-litert', 'keras']
>>> sorted(machine())[:3]
['affinity_cpus', 'arch', 'cpu_count']
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tensorflow as tf

__all__ = ["versions", "machine"]

# Distribution names as pip knows them; a missing optional one is recorded as None.
_PACKAGES = (
    "tensorflow",
    "keras",
    "numpy",
    "absl-py",
    "tensorflow-datasets",
    "ai-edge-litert",
)


def versions(extra=()) -> dict:
    """`{"python": ..., "kprune": ..., "tensorflow": ..., ...}` for results files and reports.

    Args:
        extra: more distribution names to record (e.g. `("tf-keras",)`), None where missing.

    Example:

    >>> versions()["python"] == platform.python_version()
    True
    >>> versions(extra=("no-such-distribution",))["no-such-distribution"] is None
    True
    """
    import kprune  # the package imports this module: resolved at call time, not import time

    found = {"python": platform.python_version(), "kprune": kprune.__version__}
    for name in (*_PACKAGES, *extra):
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # optional, or a source checkout without metadata
            found[name] = None
    return found


def _cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus():
    """One entry per GPU TensorFlow sees: device name, model and compute capability."""
    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        found.append(
            {
                "device": device.name,
                "model": details.get("device_name"),
                "compute_capability": None
                if capability is None
                else ".".join(map(str, capability)),
            }
        )
    return found


def machine() -> dict:
    """Cores, CPU model, architecture, platform and GPUs of this machine, for reports.

    `cpu_count` is every core of the machine, `affinity_cpus` those this process may run on
    (None where the platform cannot tell); `gpus` lists TensorFlow's physical GPUs
    (`tf.config.list_physical_devices`) and is empty on a CPU-only machine. A script that
    configures TensorFlow's devices (visible or logical devices) does so before calling it.

    Example:

    >>> facts = machine()
    >>> facts["cpu_count"] == os.cpu_count(), isinstance(facts["gpus"], list)
    (True, True)
    """
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": None if affinity is None else len(affinity),
        "cpu_model": _cpu_model(),
        "arch": platform.machine().lower(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": _gpus(),
    }
