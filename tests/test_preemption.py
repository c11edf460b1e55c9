"""Preemption: a run killed mid-epoch and started again ends exactly like an uninterrupted one.

`python -m kprune.train` writes a checkpoint (weights, masks, optimizer state and step, epoch)
after every epoch and trains on a stream whose epoch `e` depends on the seed and `e` only, so a
restarted run redoes the interrupted epoch on the same batches, from the same state.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import kprune  # noqa: E402
from kprune import data, models, train  # noqa: E402
from kprune.workflows import checkpoint, training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# 180 steps per epoch (1438 digits, batch 8), 540 in all; masks change every 5 steps until 405.
FLAGS = [
    "--epochs=3",
    "--batch_size=8",
    "--seed=2",
    "--method=linear",
    "--target_sparsity=0.9",
    "--lr=0.02",
]


def final_kernels(run_dir):
    model = keras.models.load_model(run_dir / "model.keras")
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


@pytest.mark.integration
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    assert train.cli(["kprune.train", f"--model_dir={reference}", "--progress=none", *FLAGS]) == 0

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "kprune.train", f"--model_dir={run_dir}", *FLAGS]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    log = tmp_path / "killed.log"
    # The checkpoint manager writes its state file once the first checkpoint (epoch 1) is
    # complete; the run is then in epoch 2, which takes seconds: kill it there.
    state_file = run_dir / "checkpoints" / "checkpoint"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        killed = False
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if state_file.exists():
                    process.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.01)
        finally:
            if process.poll() is None and not killed:
                process.kill()
            process.wait(timeout=30)
    assert killed, f"no checkpoint was written:\n{log.read_text()[-2000:]}"
    assert process.returncode == -signal.SIGKILL
    # Killed mid-epoch: the checkpoint is still the one written after epoch 1, no results.
    assert not (run_dir / "results.json").exists()
    assert checkpoint.saved_epochs(run_dir / "checkpoints") == [1]
    assert "--strategy" not in (run_dir / "run.flags").read_text()  # may resume elsewhere

    restarted = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert f"Resuming the unfinished run in {run_dir}" in restarted.stdout
    resumed = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert resumed["resumed_at_epoch"] == 1 and resumed["epochs_run"] == 2
    assert resumed["total_steps"] == expected["total_steps"] == 3 * 180
    # Same state at the restart and the same batches after it: every epoch's metrics agree,
    # including the redone second epoch and the sparsity reached at the end of each epoch.
    assert set(resumed["history"]) == set(expected["history"])
    for key, values in expected["history"].items():
        assert resumed["history"][key] == pytest.approx(values, rel=1e-6, abs=1e-7), key
    assert resumed["history"]["sparsity"][-1] == pytest.approx(0.9, abs=1e-4)
    kernels, expected_kernels = final_kernels(run_dir), final_kernels(reference)
    for name, kernel in expected_kernels.items():
        np.testing.assert_array_equal(kernels[name] == 0, kernel == 0, err_msg=name)
        np.testing.assert_allclose(kernels[name], kernel, rtol=1e-5, atol=1e-6)
    assert resumed["nonzero_prunable_params"] == 50200 - round(0.9 * 50200)


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("damage", ["latest_cut_short", "state_file_damaged"])
def test_a_damaged_checkpoint_still_resumes_exactly(damage, tmp_path, caplog):
    """A checkpoint cut short falls back to the previous one; a damaged state file hides none."""
    config = training.TrainConfig(epochs=3, learning_rate=0.05, lr_schedule="cosine")

    def run(run_dir, callbacks=()):
        keras.utils.set_random_seed(4)
        digits = data.load_dataset("digits", batch_size=128, seed=4)  # 12 steps per epoch
        base = models.lenet300_100(digits.input_shape, digits.num_classes)
        schedule = kprune.LinearSparsity(0.0, 0.8, begin_step=0, end_step=30, frequency=3)
        model = kprune.prune(base, schedule, scope="global")
        return model, training.fit_and_evaluate(
            model, digits, config, run_dir=run_dir, callbacks=callbacks, verbose=0
        )

    reference, expected = run(tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", callbacks=[StopAfter(1)])  # checkpoints after epochs 1 and 2
    saved = tmp_path / "run" / "checkpoints"
    assert checkpoint.saved_epochs(saved) == [1, 2]
    if damage == "latest_cut_short":  # e.g. the disk filled up while it was written
        (latest,) = saved.glob("ckpt-2.data-*")
        latest.write_bytes(latest.read_bytes()[:1000])
        resumes_at = 1  # from the previous checkpoint
    else:  # the manager's state file, cut short: the checkpoints are found from their files
        state = saved / "checkpoint"
        state.write_text(state.read_text()[:10])
        resumes_at = 2
    with caplog.at_level(logging.WARNING, logger="kprune.workflows.checkpoint"):
        resumed_model, resumed = run(tmp_path / "run")
    if damage == "latest_cut_short":
        assert "ckpt-2 cannot be read" in caplog.text and "falling back" in caplog.text
    assert resumed["resumed_at_epoch"] == resumes_at
    assert resumed["epochs_run"] == 3 - resumes_at
    assert resumed["total_steps"] == expected["total_steps"] == 36
    masks, expected_masks = kprune.get_masks(resumed_model), kprune.get_masks(reference)
    for path, mask in expected_masks.items():
        np.testing.assert_array_equal(masks[path], mask, err_msg=path)
    assert resumed["history"]["sparsity"] == pytest.approx(expected["history"]["sparsity"])
    for a, b in zip(resumed_model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)  # bit for bit: same state, same batches
    assert checkpoint.saved_epochs(saved) == [2, 3]  # the previous one is kept
