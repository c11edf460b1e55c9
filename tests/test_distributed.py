"""tf.distribute: masks computed once from mirrored weights, identical on every replica."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mirrored_masks_identical_and_equal_to_single_device():
    result = run_script("mirrored_pruning.py", "layer", "global")
    for scope in ("layer", "global"):
        r = result[scope]
        assert r["replicas"] == 2
        assert r["identical_across_replicas"], r
        assert r["equal_to_single_device"], r
    # Exact counts: layer scope per kernel, global scope in total.
    assert result["layer"]["zeros"] == {"hidden/kernel": 512, "logits/kernel": 102}
    assert sum(result["global"]["zeros"].values()) == round(0.8 * (20 * 32 + 32 * 4))
