"""Writing run outputs so that a reader, or a resumed run, never sees half a file.

Example:

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "results.json"
>>> write_text_atomic(path, "{}")
>>> path.read_text()
'{}'
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

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "results.json"
    >>> write_text_atomic(path, "first")
    >>> write_text_atomic(path, "second")
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('second', ['results.json'])
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
