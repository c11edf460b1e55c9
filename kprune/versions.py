"""Versions of kprune and the libraries it runs on, recorded next to every result.

Example:

>>> sorted(versions())[:3]
['absl-py', 'ai-edge-litert', 'keras']
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["versions"]

# Distribution names as pip knows them; a missing optional one is recorded as None.
_PACKAGES = (
    "tensorflow",
    "keras",
    "numpy",
    "absl-py",
    "tensorflow-datasets",
    "ai-edge-litert",
)


def versions() -> dict:
    """`{"python": ..., "kprune": ..., "tensorflow": ..., ...}` for results files and reports.

    Example:

    >>> versions()["python"] == platform.python_version()
    True
    """
    import kprune

    found = {"python": platform.python_version(), "kprune": kprune.__version__}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # optional, or a source checkout without metadata
            found[name] = None
    return found
