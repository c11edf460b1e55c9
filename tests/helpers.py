"""Helpers shared by the tests (imported as `helpers`: pytest puts tests/ on sys.path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"


def run_json(args, *, python=None, env=None, timeout=600):
    """Runs `python *args` from the repository root with kprune importable.

    Fails the test (showing stderr) on a non-zero exit; returns the JSON value printed on the
    last line of stdout. `env` replaces os.environ (PYTHONPATH and TF_CPP_MIN_LOG_LEVEL are set
    on top); `python` defaults to this interpreter.
    """
    env = dict(os.environ if env is None else env)
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [python or sys.executable, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
