"""The command lines of the tools/ scripts, on absl flags, with the rules of `kprune.train`.

Every script defines its flags on its own `flags.FlagValues()` rather than on absl's global
`flags.FLAGS`: that one belongs to `kprune.train`, which the sweep runs in its own process
(`--in_process`) and whose flag names (`--dry_run`, `--seed`, ...) the tools would collide with.
absl reads `--flagfile=PATH` itself, accepts `--name=value` and `--name value`, `--flag` /
`--noflag` for booleans and comma-separated lists for list flags. Bad input (an unknown flag, a
value of the wrong type, a missing flagfile, or a check of `kprune._internal.validate` that
fails) prints one line `error: ...` and exits with status 2, like `kprune.train`; `--help`
prints the script's docstring and its flags and exits with status 0.

Example:

>>> from absl import flags
>>> fv = flags.FlagValues()
>>> _ = flags.DEFINE_integer("runs", 3, "timed runs", flag_values=fv)
>>> parse(fv, ["--runs=5", "extra"], "doc"), fv.runs
(['extra'], 5)
>>> parse(fv, ["--runs=five"], "doc")
Traceback (most recent call last):
tools.cli.UsageError: flag --runs=five: invalid literal for int() with base 10: 'five'
"""

from __future__ import annotations

import sys

from absl import flags

HELP = ("--help", "-help", "-h", "--helpfull", "--helpshort")


class UsageError(ValueError):
    """Bad command-line input, found before anything runs; the script exits with status 2."""


def parse(flag_values, argv, usage):
    """Parses `argv` (without the program name) into `flag_values`; returns what is left.

    Flags are reset to their defaults first, so that calls in one process (tests) do not leak
    into each other. `--help` anywhere prints `usage` and the flags, then exits with status 0.

    Raises:
        UsageError: an unknown flag, a bad value, a missing flagfile.
    """
    argv = list(argv)
    if any(arg in HELP for arg in argv):
        print(usage.rstrip() + "\n\nFlags:" + flag_values.get_help())
        raise SystemExit(0)
    flag_values.unparse_flags()
    try:
        return flag_values(["tool", *argv])[1:]
    except flags.Error as err:
        raise UsageError(str(err)) from err


def no_arguments(rest):
    """Refuses positional arguments (every input is a flag), as `kprune.train` does.

    Example:

    >>> no_arguments(["stray"])
    Traceback (most recent call last):
    tools.cli.UsageError: unexpected arguments ['stray']; flags are written --name=value.
    """
    if rest:
        raise UsageError(f"unexpected arguments {rest}; flags are written --name=value.")


def checked(check, *args):
    """Runs a check of `kprune._internal.validate`; its ValueError becomes a `UsageError`.

    Example:

    >>> from kprune._internal.validate import check_at_least
    >>> checked(check_at_least, "--runs", 0, 1)
    Traceback (most recent call last):
    tools.cli.UsageError: --runs must be at least 1. Received: --runs=0
    """
    try:
        return check(*args)
    except ValueError as err:
        raise UsageError(str(err)) from err


def run(main, argv=None):
    """`main(argv)`'s exit status (None counts as 0); a `UsageError` is reported, status 2.

    Example:

    >>> def main(argv):
    ...     raise UsageError("--runs must be at least 1")
    >>> run(main, [])  # and "error: --runs must be at least 1" on stderr
    2
    """
    try:
        return main(sys.argv[1:] if argv is None else list(argv)) or 0
    except UsageError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
