"""tools/structured_accuracy.py: the --quick run's JSON, its exact counts, and bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402

from tools import cli, structured_accuracy  # noqa: E402

# LeNet-5-Caffe on 28x28x1: kernels 5x5x1x20, 5x5x20x50, 800x500, 500x10.
DENSE_KERNELS = 5 * 5 * 20 + 5 * 5 * 20 * 50 + 800 * 500 + 500 * 10
# Half of every group removed: 10 and 25 filters, 250 units; fc1 reads 4x4x25 = 400 inputs.
HALF_KERNELS = 5 * 5 * 10 + 5 * 5 * 10 * 25 + 400 * 250 + 250 * 10
HALF_MACS = 24 * 24 * 25 * 10 + 8 * 8 * 250 * 25 + 400 * 250 + 250 * 10
DENSE_MACS = 24 * 24 * 25 * 20 + 8 * 8 * 500 * 50 + 800 * 500 + 500 * 10


def run_tool(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.run(structured_accuracy.main, [str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


@pytest.mark.integration
def test_quick_run_writes_json_with_exact_counts(tmp_path):
    path = tmp_path / "acc.json"
    status, out, err = run_tool("--quick", f"--json={path}")
    assert status == 0, err
    payload = json.loads(path.read_text())
    assert payload["benchmark"] == "structured_accuracy" and payload["complete"] is True
    assert {"versions", "machine", "date", "settings", "runs", "summary"} <= set(payload)
    assert payload["settings"]["quick"] is True and payload["settings"]["train_images"] == 256
    runs = {r["method"]: r for r in payload["runs"]}
    assert sorted(runs) == ["channel", "dense", "weight"]
    dense, channel, weight = runs["dense"], runs["channel"], runs["weight"]
    assert dense["kernel_params"] == DENSE_KERNELS and dense["macs"] == DENSE_MACS
    assert dense["params"] == 431080
    # Channel pruning at 0.5: the shrunk model's exact sizes.
    assert channel["fraction"] == 0.5
    assert channel["kernel_params"] == HALF_KERNELS and channel["macs"] == HALF_MACS
    # The shrunk model scores exactly what the masked one scores.
    assert channel["shrunk_test_accuracy"] == channel["test_accuracy"]
    assert channel["max_logit_diff"] < 1e-3
    # Unstructured pruning at equal kernel weights, at dense MACs.
    assert weight["kernel_params"] == HALF_KERNELS and weight["macs"] == DENSE_MACS
    assert weight["weight_sparsity"] == pytest.approx(1 - HALF_KERNELS / DENSE_KERNELS)
    for row in payload["runs"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["fit_time_s"] > 0
        assert row["total_steps"] == 2 * 8  # 2 epochs of 256 / 32 batches
    summary = {s["method"]: s for s in payload["summary"]}
    assert summary["channel"]["shrunk_equals_masked"] is True
    assert summary["weight"]["test_accuracy"]["n"] == 1
    assert "lenet5" in out and "wrote" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fractions=1.5"], "--fractions must be in (0, 1)"),
        (["--fractions=half"], "--seeds and --fractions take numbers"),
        (["--models=vgg19"], "unknown"),
        (["--epochs=1"], "--epochs must be at least 2"),
        (["--weight_budget=none"], "--weight_budget"),
        (["stray"], "unexpected arguments"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    path = tmp_path / "acc.json"
    status, _, err = run_tool(*args, f"--json={path}")
    assert status == 2
    assert message in err
    assert not path.exists()
