"""Package hygiene and the README: what users copy must run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_touch_legacy_keras_or_tfmot():
    code = (
        "import os, sys; import kprune; "
        "bad = [m for m in sys.modules if m.startswith(('tf_keras', "
        "'tensorflow_model_optimization'))]; "
        "print(bad, os.environ.get('TF_USE_LEGACY_KERAS'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[] None"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.split("# README: test command\n", 1)[1].strip().splitlines()[0]
    assert f"```bash\n{command}\n```" in readme


def readme_blocks():
    readme = (ROOT / "README.md").read_text()
    marker = r"<!-- ([\w-]+): tests/test_package.py runs this block as written -->"
    pattern = marker + r"\n```python\n(.*?)```"
    return re.findall(pattern, readme, re.S)


def test_readme_has_runnable_blocks():
    assert {name for name, _ in readme_blocks()} >= {"quickstart", "custom-loop"}


# Each block trains in a subprocess (~10-20 s each), yet it stays in the default run: the
# README's examples are what users copy first, so CI runs them as written.
@pytest.mark.parametrize("name, code", readme_blocks(), ids=[n for n, _ in readme_blocks()])
def test_readme_block_runs_as_written(name, code, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    if name == "quickstart":
        assert (tmp_path / "pruned.keras").exists()
        lines = out.stdout.strip().splitlines()
        assert lines[-1] == "{'total': 22200, 'nonzero': 2220, 'sparsity': 0.9}", lines[-1]
        accuracy = float(re.search(r"'accuracy': ([0-9.]+)", lines[-2]).group(1))
        assert accuracy >= 0.9, lines[-2]
    if name == "sensitivity":  # exact counts on the sensitivity budget
        lines = out.stdout.strip().splitlines()
        assert lines[-1] == "{'total': 22200, 'nonzero': 2220, 'sparsity': 0.9}", lines[-1]
        assert (tmp_path / "curves.json").exists()
    if name == "channel":  # half the channels of each conv: about a quarter of the weights
        dense, small = map(int, re.search(r"^(\d+) (\d+)$", out.stdout, re.M).groups())
        assert small < dense / 3, (dense, small)
        accuracy = float(re.search(r"'accuracy': ([0-9.]+)", out.stdout).group(1))
        assert accuracy >= 0.8, out.stdout
        assert (tmp_path / "small.keras").exists() and (tmp_path / "small_export").is_dir()
    if name == "nm":  # both kernels hold 2:4 exactly after training
        assert out.stdout.strip().splitlines()[-1] == "[True, True]", out.stdout
        accuracy = float(re.search(r"'accuracy': ([0-9.]+)", out.stdout).group(1))
        assert accuracy >= 0.8, out.stdout
    if name == "custom-loop":
        assert "'sparsity': 0.79" in out.stdout, out.stdout
    if name == "distributed":  # one CPU: one replica; 16896 - round(0.9 * 16896) kept
        assert "1 {'total': 16896, 'nonzero': 1690," in out.stdout, out.stdout  # round(.9 N)
