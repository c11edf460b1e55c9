"""Where an export is written: a temporary directory next to `out_dir`, then one rename.

An export builds its files in `.<name>.tmp-XXXXXXXX` next to `out_dir` (`<name>` its base name)
and renames it to `out_dir` at the end; an `out_dir` being replaced is parked in
`.<name>.old-XXXXXXXX` meanwhile. Both are held with an `flock` while in use, which the kernel
drops when the process dies, so directories with these names that nobody holds are what an
interrupted export left behind: the next export to the same place removes them (and nothing
else: other names, files, other exports' directories are left alone). Directories are made
with `os.mkdir`'s mode, so the final `out_dir` gets the permissions of the process umask (as
`os.makedirs` would), not `tempfile.mkdtemp`'s owner-only 0700.

Example:

>>> import tempfile
>>> parent = tempfile.mkdtemp()
>>> os.mkdir(os.path.join(parent, ".export.tmp-3f2a9c1b"))  # left by a killed export
>>> os.mkdir(os.path.join(parent, "keep"))
>>> [os.path.basename(p) for p in remove_stale_temp_dirs(os.path.join(parent, "export"))]
['.export.tmp-3f2a9c1b']
>>> sorted(os.listdir(parent))
['keep']
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil

__all__ = ["prepare_out_dir", "remove_stale_temp_dirs", "replace_dir", "temp_dir"]

_logger = logging.getLogger(__name__)

# tempfile.mkdtemp's 8 characters (earlier kprune versions) and secrets.token_hex(4)'s.
_SUFFIX = r"[a-z0-9_]{8}"


def _temp_name_pattern(out_dir):
    base = re.escape(os.path.basename(out_dir))
    return re.compile(rf"\.{base}\.(?:tmp|old)-{_SUFFIX}\Z")


def prepare_out_dir(out_dir, overwrite):
    """`(absolute out_dir, parents created)`: checks `out_dir` and creates its parent.

    Raises:
        ValueError: `out_dir` is a file, or a non-empty directory without `overwrite`.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"`out_dir` is an existing file, not a directory: {out_dir!r}")
        if os.listdir(out_dir) and not overwrite:
            raise ValueError(
                f"`out_dir` {out_dir!r} exists and is not empty; pass overwrite=True (CLI: "
                "--overwrite) to replace it."
            )
    created, parent = [], os.path.dirname(out_dir)
    while parent and not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    return out_dir, created


@contextlib.contextmanager
def temp_dir(out_dir, kind="tmp"):
    """Creates `.<name>.<kind>-XXXXXXXX` next to `out_dir` and holds it for the `with` block.

    The directory is not removed on exit (it may have become `out_dir`); the caller removes
    it on failure. While held, `remove_stale_temp_dirs` of another process leaves it alone.
    """
    parent, base = os.path.split(out_dir)
    while True:
        path = os.path.join(parent, f".{base}.{kind}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)  # mode 0o777 minus the umask: what out_dir will have
        except FileExistsError:
            continue
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another export's clean-up may have taken it between mkdir and flock: try again.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        yield path
    finally:
        os.close(fd)  # releases the flock


def remove_stale_temp_dirs(out_dir):
    """Removes the temporary directories interrupted exports to `out_dir` left; returns them.

    Only directories named like this module's (`.<name>.tmp-XXXXXXXX`, `.<name>.old-...`) that
    no live process holds are removed.
    """
    parent = os.path.dirname(out_dir)
    pattern = _temp_name_pattern(out_dir)
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not pattern.match(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live export is writing it
            os.close(fd)
            continue
        try:
            shutil.rmtree(path)
        except OSError as err:
            _logger.warning("Could not remove %s, left by an interrupted export: %s", path, err)
        else:
            _logger.info("Removed %s, left by an interrupted export.", path)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def replace_dir(tmp, out_dir):
    """Moves the finished `tmp` into place; an old `out_dir` is removed only afterwards."""
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if os.path.exists(out_dir):
        with temp_dir(out_dir, "old") as old:
            os.rename(out_dir, os.path.join(old, "previous"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)
