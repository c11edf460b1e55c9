"""kprune.distribute and --strategy: strategies by name, mirrored and multi-worker runs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import kprune  # noqa: E402
from helpers import SCRIPTS, run_json
from kprune import distribute, train  # noqa: E402
from kprune.workflows.lottery import kept_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRUNABLE = 64 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100 on the 8x8 digits


def tf_config(ports, index, task_type="worker"):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# -- strategies by name -----------------------------------------------------------------------
def test_strategy_names_match_the_command_line():
    assert distribute.STRATEGIES == train.STRATEGY_NAMES


def test_default_and_auto_on_one_cpu_are_the_default_strategy():
    for name in ("default", "auto"):
        strategy = distribute.make_strategy(name)
        assert strategy is tf.distribute.get_strategy()
        info = distribute.describe_strategy(strategy)
        assert info["strategy"] == "default" and info["replicas"] == 1 and info["workers"] == 1


def test_mirrored_without_gpus_uses_the_cpu_devices():
    strategy = distribute.make_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    info = distribute.describe_strategy(strategy)
    assert info["replicas"] == len(tf.config.list_logical_devices("CPU"))
    assert all("CPU" in d for d in info["devices"])


def test_bad_strategies_say_what_is_missing(monkeypatch):
    with pytest.raises(ValueError, match="Valid strategies: auto, default, mirrored"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        distribute.make_strategy("multi_worker")
    for name in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="strategy 'tpu' found no TPU") as err:
        distribute.make_strategy("tpu")
    assert "Received: tpu=None" in str(err.value)


def test_cluster_task_follows_tensorflows_chief_rule():
    ports = [20001, 20002, 20003]
    task = distribute.cluster_task({"TF_CONFIG": tf_config(ports, 0)})
    assert task == distribute.ClusterTask("worker", 0, 3, True)
    task = distribute.cluster_task({"TF_CONFIG": tf_config(ports, 2)})
    assert (task.name, task.workers, task.is_chief) == ("worker_2", 3, False)
    with_chief = {
        "cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0},
    }
    task = distribute.cluster_task({"TF_CONFIG": json.dumps(with_chief)})
    assert (task.workers, task.is_chief) == (2, False)  # the chief task is the chief


@pytest.mark.parametrize(
    "value, message",
    [
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster' and a 'task'"),
        (tf_config([1, 2], 2), "task index 2 is out of range"),
        (tf_config([1, 2], 0, task_type="ps"), "is not in its cluster"),
    ],
)
def test_bad_tf_config_is_named(value, message):
    with pytest.raises(ValueError, match=message) as err:
        distribute.cluster_task({"TF_CONFIG": value})
    assert "Received:" in str(err.value)


def test_keras_fixes_are_scoped_and_restored():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    reduce, build = (
        tf_trainer.reduce_per_replica,
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build,
    )
    with pytest.raises(RuntimeError):
        with distribute._keras_multi_worker_fixes():
            assert tf_trainer.reduce_per_replica is not reduce
            with distribute._keras_multi_worker_fixes():  # nested: no second layer
                assert tf_trainer.reduce_per_replica._kprune_fix
            raise RuntimeError("restored on errors too")
    assert tf_trainer.reduce_per_replica is reduce
    assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is build
    with distribute.strategy_scope(tf.distribute.get_strategy()):  # not multi-worker: no fix
        assert tf_trainer.reduce_per_replica is reduce


def test_replica_check_on_one_device():
    model = kprune.prune(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), kprune.ConstantSparsity(0.5)
    )
    assert distribute.masks_identical_across_replicas(model)
    (mask,) = kprune.api.pruning_wrappers(model)[0].masks
    assert [v.shape for v in distribute.replica_values(mask)] == [(3, 2)]


# -- the command line -------------------------------------------------------------------------
def test_dry_run_reports_the_strategy(tmp_path, capsys, monkeypatch):
    args = ["kprune.train", "--dry_run", f"--model_dir={tmp_path / 'run'}", "--batch_size=64"]
    assert train.cli([*args, "--strategy=default"]) == 0
    out = capsys.readouterr().out
    assert "distribute default: default, 1 replica (CPU:0); global batch 64 = 64 per replica" in out
    assert train.cli([*args, "--strategy=mirrored"]) == 0  # this process has one CPU device
    out = capsys.readouterr().out
    assert "distribute mirrored: MirroredStrategy, 1 replica (CPU:0)" in out
    assert "only one device is visible, so there is no data parallelism" in out
    # A multi-worker dry run reads TF_CONFIG but joins no cluster; a worker writes elsewhere.
    monkeypatch.setenv("TF_CONFIG", tf_config([20001, 20002], 1))
    assert train.cli([*args, "--strategy=multi_worker"]) == 0
    out = capsys.readouterr().out
    assert "MultiWorkerMirroredStrategy over 2 workers from TF_CONFIG, this process worker_1" in out
    assert f"writing to {tmp_path / 'run'}.worker_1" in out
    monkeypatch.delenv("TF_CONFIG")
    assert train.cli([*args, "--strategy=multi_worker"]) == 2
    assert "--strategy=multi_worker: strategy 'multi_worker' reads" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_command_line_without_a_tpu_exits_2_before_writing(tmp_path, capsys, monkeypatch):
    for name in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    assert train.cli(["kprune.train", "--strategy=tpu", f"--model_dir={run_dir}"]) == 2
    assert "--strategy=tpu: strategy 'tpu' found no TPU" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.integration
def test_mirrored_runs_match_one_device():
    result = run_json([SCRIPTS / "mirrored_train.py", "linear", "snip", "lth", "linear_float16"])
    # The replica check can fail: a mask changed on one replica only is noticed.
    assert result.pop("tampered") == {
        "identical_before": True,
        "identical_after": False,
        "check_raised": True,
    }
    for method, r in result.items():
        assert r["replicas"] == {"mirrored": 2, "default": 1}, method
        assert r["strategy"]["mirrored"] == "MirroredStrategy", method
        assert r["identical_across_replicas"] is True, method
        assert r["total_steps"]["mirrored"] == r["total_steps"]["default"], method
    # float32: every step is the same computation on 2 replicas as on one device.
    for method in ("linear", "snip", "lth"):
        assert result[method]["equal_to_single_device"], method
        assert result[method]["mask_differences"] == 0, method
    assert sum(result["linear"]["zeros"].values()) == round(0.9 * PRUNABLE)
    assert sum(result["snip"]["zeros"].values()) == round(0.95 * PRUNABLE)
    assert sum(result["lth"]["zeros"].values()) == PRUNABLE - kept_counts(PRUNABLE, 0.5, 2)[-1]
    assert result["lth"]["round_masks_equal"] and result["lth"]["masks_compared"] == 9
    # float16 sums in another order on two replicas: a few weights at the threshold swap
    # places, the count stays exact.
    half = result["linear_float16"]
    assert sum(half["zeros"].values()) == round(0.9 * PRUNABLE)
    assert half["mask_differences"] < 0.001 * PRUNABLE


def reserved_ports(count):
    """Ports the OS picked, parked in TIME_WAIT until the workers bind them.

    A port closed right after `bind(port 0)` can be handed to another program before the
    worker binds it. One that has served a connection closed from the server side stays in
    TIME_WAIT: the OS does not hand it out again for a while, but a server that binds with
    SO_REUSEADDR (gRPC, under TensorFlow's workers) may take it.
    """
    ports = []
    for _ in range(count):
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)):
                accepted, _ = server.accept()
                accepted.close()
        ports.append(port)
    return ports


PORT_TAKEN = ("already in use", "Could not start gRPC server", "Failed to add port")


def stripped_zeros(run_dir):
    model = keras.models.load_model(run_dir / "model.keras")
    return {
        layer.name: layer.kernel.numpy() == 0 for layer in model.layers if hasattr(layer, "kernel")
    }


@pytest.mark.integration
def test_two_worker_run_matches_one_process(tmp_path):
    flags = ["--epochs=2", "--batch_size=64", "--seed=5", "--progress=none", "--lr=0.05"]
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "kprune.train", "--strategy=multi_worker"]
    command += [f"--model_dir={run_dir}", *flags]
    for attempt in range(3):  # another program may still take a port first: pick new ones
        ports = reserved_ports(2)
        logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(2)]  # noqa: SIM115
        workers = [
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=dict(env, TF_CONFIG=tf_config(ports, i)),
                stdout=logs[i],
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline and any(w.poll() is None for w in workers):
                if any(w.poll() not in (None, 0) for w in workers):
                    break  # one failed: the other would wait for it until the deadline
                time.sleep(0.2)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                w.wait(timeout=30)
            for log in logs:
                log.close()
        texts = [(tmp_path / f"worker_{i}.log").read_text() for i in range(2)]
        if all(w.returncode == 0 for w in workers) or attempt == 2:
            break
        if not any(marker in text for text in texts for marker in PORT_TAKEN):
            break  # a real failure: reported below
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(f"{run_dir}.worker_1", ignore_errors=True)
    for i, w in enumerate(workers):
        assert w.returncode == 0, f"worker {i} exited with {w.returncode}:\n{texts[i][-3000:]}"

    reference = tmp_path / "one_process"
    assert (
        train.cli(["kprune.train", f"--model_dir={reference}", "--strategy=default", *flags]) == 0
    )
    chief, other = run_dir, Path(f"{run_dir}.worker_1")  # the chief writes --model_dir
    for path, task in ((chief, "worker_0"), (other, "worker_1")):
        results = json.loads((path / "results.json").read_text())
        info = results["distribution"]
        assert info["strategy"] == "MultiWorkerMirroredStrategy", info
        assert (info["replicas"], info["workers"], info["task"]) == (2, 2, task)
        assert info["chief"] is (task == "worker_0")
        assert results["total_steps"] == 2 * 23
        assert results["nonzero_prunable_params"] == PRUNABLE - round(0.9 * PRUNABLE)
    zeros = {name: stripped_zeros(path) for name, path in [("chief", chief), ("worker", other)]}
    expected = stripped_zeros(reference)
    for layer, mask in expected.items():
        np.testing.assert_array_equal(zeros["chief"][layer], zeros["worker"][layer])
        np.testing.assert_array_equal(zeros["chief"][layer], mask)


@pytest.mark.integration
def test_bench_distributed_quick_times_both_replica_counts(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "tools/bench_distributed.py", "--quick", f"--json={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert settings["replica_devices"]["2"] == ["/device:CPU:0", "/device:CPU:1"]
    assert settings["global_batch"] == 64 and report["versions"]["keras"] == keras.__version__
    result = report["models"]["lenet300"]
    assert set(result["replicas"]) == {"1", "2"}
    for row in result["replicas"].values():
        assert row["dense_ms"] > 0 and row["pruned_ms"] > 0 and row["update_step_ms"] > 0
        assert row["dense_images_per_s"] == pytest.approx(64 / (row["dense_ms"] / 1000))
        ratio = row["pruned_over_dense"]
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert "dense_2_over_1" in result and "pruned_2_over_1" in result
    assert "lenet300" in done.stdout and "pruned/dense" in done.stdout


# Core level (no CLI): layer and global scope under MirroredStrategy.
@pytest.mark.integration
def test_mirrored_masks_identical_and_equal_to_single_device():
    result = run_json([SCRIPTS / "mirrored_pruning.py", "layer", "global"])
    for scope in ("layer", "global"):
        r = result[scope]
        assert r["replicas"] == 2
        assert r["identical_across_replicas"], r
        assert r["equal_to_single_device"], r
    # Exact counts: layer scope per kernel, global scope in total.
    assert result["layer"]["zeros"] == {"hidden/kernel": 512, "logits/kernel": 102}
    assert sum(result["global"]["zeros"].values()) == round(0.8 * (20 * 32 + 32 * 4))


@pytest.mark.integration
def test_mirrored_channel_masks_identical_and_equal_to_single_device():
    r = run_json([SCRIPTS / "mirrored_pruning.py", "channel"])["channel"]
    assert r["replicas"] == 2
    assert r["identical_across_replicas"], r
    assert r["equal_to_single_device"], r
    # round(0.8 * 32) = 26 hidden channels go: their kernel columns, biases and logit rows.
    assert r["zeros"] == {"hidden/kernel": 26 * 20, "hidden/bias": 26, "logits/kernel": 26 * 4}
