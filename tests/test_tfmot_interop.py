"""tfmot interoperability: tfmot schedules in kprune, kprune schedules in tfmot.

Everything that imports TensorFlow Model Optimization runs in a subprocess: importing it sets
TF_USE_LEGACY_KERAS and switches `tf.keras` to tf_keras for the whole process. The subprocess
runs `$KPRUNE_TFMOT_PYTHON` when set (a Python with `kprune[tfmot]` installed: tfmot pins old
packages, e.g. absl-py 1.x, so .ci/run keeps it in a venv of its own), else this interpreter.
Those tests skip when that interpreter lacks the `tfmot` extra (tensorflow-model-optimization,
tf-keras).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SCRIPTS, run_json
from kprune import LinearSparsity, tfmot_interop

ROOT = Path(__file__).resolve().parents[1]
TFMOT_PYTHON = os.environ.get("KPRUNE_TFMOT_PYTHON") or sys.executable
_EXTRA = ("tensorflow_model_optimization", "tf_keras")
HAVE_TFMOT_HERE = all(importlib.util.find_spec(name) is not None for name in _EXTRA)


def _interpreter_has_tfmot():
    if TFMOT_PYTHON == sys.executable:
        return HAVE_TFMOT_HERE
    code = f"import importlib.util as u; print(all(u.find_spec(n) for n in {_EXTRA!r}))"
    try:
        out = subprocess.run(
            [TFMOT_PYTHON, "-c", code], capture_output=True, text=True, timeout=120
        )
    except OSError:
        return False
    return out.stdout.strip() == "True"


HAVE_TFMOT = _interpreter_has_tfmot()
needs_tfmot = pytest.mark.skipif(
    not HAVE_TFMOT,
    reason='needs the tfmot extra: pip install -e ".[tfmot]" (or set KPRUNE_TFMOT_PYTHON)',
)


def run_python(args, *, legacy_keras=False, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    return run_json(args, python=TFMOT_PYTHON, env=env, timeout=timeout)


def run_script(name, **kwargs):
    return run_python([SCRIPTS / name], **kwargs)


def test_importing_the_module_does_not_import_tfmot():
    code = (
        "import json, os, sys; import kprune.tfmot_interop as t; "
        "print(json.dumps([sorted({m.split('.')[0] for m in sys.modules "
        "if m.startswith(('tf_keras', 'tensorflow_model_optimization'))}), "
        "os.environ.get('TF_USE_LEGACY_KERAS'), sorted(t.__all__)]))"
    )
    modules, env, exported = run_python(["-c", code])
    assert modules == [] and env is None
    assert exported == ["TfmotSchedule", "from_tfmot", "to_tfmot"]


def test_arguments_are_checked_before_tfmot_is_needed():
    with pytest.raises(TypeError, match="already a kprune.PruningSchedule"):
        tfmot_interop.from_tfmot(LinearSparsity(0.0, 0.5, 0, 10))
    with pytest.raises(TypeError, match=r"tfmot PruningSchedule.*Received: schedule=0\.5"):
        tfmot_interop.TfmotSchedule(0.5)
    with pytest.raises(TypeError, match=r"kprune.PruningSchedule.*Received: schedule='linear'"):
        tfmot_interop.to_tfmot("linear")
    with pytest.raises(ValueError, match="tfmot_class"):
        tfmot_interop.TfmotSchedule.from_config(
            {"tfmot_class": "PolynomialDecay", "tfmot_config": {}}
        )
    with pytest.raises(TypeError, match="tfmot_class"):
        tfmot_interop.TfmotSchedule.from_config(
            {"tfmot_class": "kprune.schedules.LinearSparsity", "tfmot_config": {}}
        )


@pytest.mark.skipif(HAVE_TFMOT_HERE, reason="checks the message shown when the extra is missing")
def test_to_tfmot_without_the_extra_says_what_to_install():
    with pytest.raises(ImportError, match=r"kprune\[tfmot\]"):
        tfmot_interop.to_tfmot(LinearSparsity(0.0, 0.5, 0, 10))


@needs_tfmot
def test_kprune_schedule_drives_tfmot_prune_low_magnitude():
    r = run_script("tfmot_runs_kprune_schedule.py", legacy_keras=True)
    assert r["legacy_keras"].startswith("tf_keras") and r["is_tfmot_schedule"]
    # LinearSparsity(0, 0.9, 0, 13, frequency=5) updates on batches 0, 5, 10 and (forced) 13,
    # as it would under kprune; tfmot keeps max(round((1 - s) * N), 1) weights per variable.
    sizes = (16 * 128, 128 * 2)
    expected, current = [], [0, 0]
    for batch in range(16):  # 2 epochs of 8 batches
        if batch in (0, 5, 10, 13):
            s = 0.9 * batch / 13
            current = [n - max(round((1 - s) * n), 1) for n in sizes]
        expected.append(list(current))
    assert r["zeros_per_batch"] == expected
    # The final count is kprune's round(s * N) too: 1843 of 2048 and 230 of 256.
    assert expected[-1] == [round(0.9 * n) for n in sizes] == [1843, 230]
    assert r["kernel_zeros"] == [1843, 230]
    assert r["aligned"]
    # Round-trips: layer config, .h5 and .keras files, the schedule's own config.
    assert r["loaded"] == {
        "h5": {"schedule_equal": True, "masks_equal": True},
        "keras": {"schedule_equal": True, "masks_equal": True},
    }
    assert r["layer_from_config_equal"] and r["config_round_trip_equal"]
    assert r["config"] == {
        "class_name": "kprune>KpruneScheduleForTfmot",
        "config": {
            "schedule": {
                "module": "kprune.schedules",
                "class_name": "LinearSparsity",
                "config": {
                    "initial_sparsity": 0.0,
                    "final_sparsity": 0.9,
                    "begin_step": 0,
                    "end_step": 13,
                    "frequency": 5,
                },
                "registered_name": "kprune>LinearSparsity",
            },
            "align_steps": True,
        },
    }
    assert set(r["errors"]) == {"kprune_type", "tfmot_type"}
    assert "Received: schedule=0.9" in r["errors"]["kprune_type"]


@needs_tfmot
def test_tfmot_schedule_drives_kprune_like_tfmot_itself():
    r = run_script("kprune_runs_tfmot_schedule.py")
    assert r["lazy"] == {"tfmot_imported": False, "tf_keras_imported": False, "legacy_env": None}
    # Same schedule, same batches: the masks of both frameworks change on the same batches to
    # the same counts (tfmot: PolynomialDecay(0, 0.9, 3, 23, frequency=5) from its step 1).
    assert r["kprune_zeros"] == r["tfmot_zeros"]
    changes = [b for b in range(1, 32) if r["kprune_zeros"][b] != r["kprune_zeros"][b - 1]]
    assert changes == [7, 12, 17, 22]  # tfmot steps 8, 13, 18, 23 (step 3 prunes to 0)
    assert r["kprune_zeros"][-1] == [1843, 230]
    assert r["stripped_kernel_zeros"] == [1843, 230]
    assert sum(r["global_zeros"][-1]) == round(0.9 * (16 * 128 + 128 * 2))
    # The wrapper returns tfmot's own values, one step ahead (aligned) or at the same step.
    assert r["aligned_values"] == r["native_values"]
    assert r["unaligned_values"] == r["native_values_same_step"]
    assert r["aligned_values"] != r["unaligned_values"]
    assert r["config"] == {
        "tfmot_class": (
            "tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule."
            "PolynomialDecay"
        ),
        "tfmot_config": {
            "initial_sparsity": 0.0,
            "final_sparsity": 0.9,
            "power": 3,
            "begin_step": 3,
            "end_step": 23,
            "frequency": 5,
        },
        "align_steps": True,
        "allows_regrowth": False,
    }
    assert r["config_round_trip_equal"] and r["hash_equal"]
    assert r["reloaded_equal"] and r["reloaded_type"] == "TfmotSchedule"
    assert r["reloaded_masks_equal"]
    assert r["final_sparsity"] == 0.9 and r["last_update_step"] == 22
    assert r["constant_final_sparsity"] == 0.5 and r["constant_last_update_step"] is None
    assert set(r["errors"]) == {"kprune_schedule", "number", "align_steps"}
    assert "Received: align_steps='yes'" in r["errors"]["align_steps"]


def readme_blocks():
    readme = (ROOT / "README.md").read_text()
    pattern = (
        r"<!-- ([\w-]+): tests/test_tfmot_interop.py runs this block as written -->\n"
        r"```python\n(.*?)```"
    )
    return dict(re.findall(pattern, readme, re.S))


def test_readme_has_both_interop_blocks():
    assert set(readme_blocks()) == {"tfmot-in-kprune", "kprune-in-tfmot"}


@needs_tfmot
@pytest.mark.parametrize("name", ["tfmot-in-kprune", "kprune-in-tfmot"])
def test_readme_block_runs_as_written(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(readme_blocks()[name])
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [TFMOT_PYTHON, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    # 64 x 128 and 128 x 2 kernels at 0.8: 6554 and 205 zeros under either framework's rule.
    if name == "tfmot-in-kprune":
        assert last == "{'total': 8448, 'nonzero': 1689, 'sparsity': 0.8000710227272727}", last
    else:
        assert last == "[6554, 205]", last
