"""Writing run outputs so that a reader, or a resumed run, never sees half a file.

Example:

>>> write_text_atomic(Path("results.json"), "{}\\n")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_text_atomic", "write_bytes_atomic"]


def write_text_atomic(path, text):
    """Writes `text` to `path` through a hidden temporary file and a rename.

    The rename is atomic on one file system, so `path` holds either its old content or all
    of `text`, even if the process is killed while writing.

    Example:

    >>> write_text_atomic("run/results.json", "{}\\n")  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_bytes_atomic(path, data):
    """`write_text_atomic` for bytes (e.g. an `.npz` archive built in memory).

    Example:

    >>> write_bytes_atomic("saved_models/data/digits28.npz", b"...")  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
