"""The run directory's faults: a second run into a live one, stale locks, unwritable places."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kprune import train  # noqa: E402
from kprune.experiment import config, run_dir, runner  # noqa: E402

# A second process holding a run directory's lock as kprune.experiment.run_dir.lock() does (an
# flock on run.lock, "PID host" written in it), until its stdin closes or it is killed. Plain
# fcntl keeps it fast (no TensorFlow import); a change of lock() to another kind of lock (lockf
# locks do not see flock ones) makes the test fail.
HOLD_LOCK = """
import fcntl, os, socket, sys
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], "run.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


def run_cli(*args):
    return train.cli(["kprune.train", *map(str, args)])


def fake_config(path, lines=None, overwrite=False):
    return types.SimpleNamespace(run_dir=path, flag_lines=lines or {}, overwrite=overwrite)


@pytest.fixture
def holder(tmp_path):
    """Starts a process holding the lock of `tmp_path/run`; yields it once the lock is taken."""
    target = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().strip() == "locked", "the holder did not lock"
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def test_second_run_into_a_live_run_dir_exits_2_naming_the_process(holder, capsys, caplog):
    target, proc = holder
    assert run_cli(f"--model_dir={target}", "--epochs=1", "--progress=none") == 2
    err = capsys.readouterr().err
    assert f"in use by another kprune run (PID {proc.pid} on " in err
    assert f"kill {proc.pid}" in err and "Traceback" not in err
    # Nothing written: the directory holds the live run's lock file and nothing else.
    assert sorted(p.name for p in target.iterdir()) == ["run.lock"]
    # The holder dies without releasing anything by hand (as in a crash): its lock file stays,
    # and the next run takes it over silently, but for a log line.
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (target / "run.lock").read_text().split()[0] == str(proc.pid)
    with caplog.at_level(logging.INFO, logger="kprune.experiment.run_dir"):
        assert run_cli(f"--model_dir={target}", "--epochs=1", "--progress=none") == 0
    assert f"from PID {proc.pid} on " in caplog.text and "no longer running" in caplog.text
    assert json.loads((target / "results.json").read_text())["total_steps"] == 45
    assert (target / "run.lock").read_text().split()[0] == str(os.getpid())


def test_lock_is_exclusive_and_released_on_exit(tmp_path):
    target = tmp_path / "run"
    with run_dir.lock(target) as lock_path:
        assert lock_path == target / "run.lock"
        # Another open file description conflicts, even in the same process.
        with pytest.raises(config.UsageError, match=rf"PID {os.getpid()} on .*kill {os.getpid()}"):
            with run_dir.lock(target):
                pass
        with pytest.raises(config.UsageError, match="in use by another kprune run"):
            run_dir.decide(fake_config(target))
        assert run_dir.decide(fake_config(target), locked=True) == "new"
    with run_dir.lock(target):  # released: taken again
        pass
    assert run_dir.decide(fake_config(target)) == "new"  # a lock file alone is not a run


def test_lock_file_without_a_pid_is_reported_as_unknown(tmp_path):
    with run_dir.lock(tmp_path):
        (tmp_path / "run.lock").write_text("")  # as if the holder had not written it yet
        with pytest.raises(config.UsageError, match=r"PID unknown.*stop it and rerun"):
            run_dir.decide(fake_config(tmp_path))


def test_overwrite_keeps_the_lock_file(tmp_path):
    lines = {"epochs": "--epochs=4"}
    with run_dir.lock(tmp_path):
        run_dir.start(fake_config(tmp_path, lines), "new")
        (tmp_path / "checkpoints").mkdir()
        run_dir.write_results(tmp_path, {"a": 1})
        decision = run_dir.decide(fake_config(tmp_path, lines, overwrite=True), locked=True)
        assert decision == "overwrite"
        run_dir.start(fake_config(tmp_path, lines), decision)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.flags", "run.lock"]


def test_run_dir_changed_while_starting_is_refused(tmp_path, monkeypatch, capsys):
    # Another run may start or finish while this one loads its data: the decision is taken
    # again under the lock, and a different answer stops the run before it writes anything.
    answers = iter(["new", "resume"])
    monkeypatch.setattr(run_dir, "decide", lambda config, locked=False: next(answers))
    assert run_cli(f"--model_dir={tmp_path / 'run'}", "--progress=none") == 2
    assert "changed while this run was starting" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.lock"]


# -- a --model_dir that cannot be written: exit status 2, a message, nothing written ---------
def test_model_dir_below_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for target in (tmp_path / "notes.txt" / "run", tmp_path / "notes.txt" / "a" / "b"):
        assert run_cli(f"--model_dir={target}", "--progress=none") == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # A dry run writes nothing, so it does not care.
    assert run_cli(f"--model_dir={tmp_path / 'notes.txt' / 'run'}", "--dry_run") == 0


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a read-only (0555) directory regardless"
)
def test_read_only_model_dir_exits_2(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert run_cli(f"--model_dir={parent / 'run'}", "--progress=none") == 2
        err = capsys.readouterr().err
        assert f"cannot be created: {parent} is not writable" in err
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_unwritable_run_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    # os.access stands in for a read-only directory, which root (the test user here) would
    # write into anyway; the check itself is what a non-root user gets.
    readonly = {tmp_path / "ro", tmp_path / "ro_run"}
    real_access = os.access
    monkeypatch.setattr(
        run_dir.os, "access", lambda path, mode: path not in readonly and real_access(path, mode)
    )
    (tmp_path / "ro").mkdir()
    with pytest.raises(config.UsageError, match=r"deeper cannot be created: .*/ro is not writ"):
        run_dir.decide(fake_config(tmp_path / "ro" / "run" / "deeper"))
    (tmp_path / "ro_run").mkdir()
    (tmp_path / "ro_run" / "run.flags").write_text("--epochs=4\n")
    with pytest.raises(config.UsageError, match=r"ro_run is not writable by this user"):
        run_dir.decide(fake_config(tmp_path / "ro_run", {"epochs": "--epochs=4"}))
    assert run_dir.decide(fake_config(tmp_path / "rw")) == "new"
    assert not (tmp_path / "ro" / "run").exists()


def test_lock_turns_os_errors_into_usage_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(config.UsageError, match=r"notes.txt/run cannot be written: .*Errno"):
        with run_dir.lock(tmp_path / "notes.txt" / "run"):
            pass


# -- results.json is strict JSON ---------------------------------------------------------
def test_results_json_writes_non_finite_numbers_as_null(tmp_path):
    nan = float("nan")
    results = {
        "test_loss": nan,
        "history": {"loss": [0.5, float("inf")], "accuracy": np.array([0.1, -np.inf])},
        "best": np.float32("nan"),
        "steps": np.int64(7),
        "rows": ({"x": -float("inf")},),
        "path": tmp_path,
    }
    run_dir.write_results(tmp_path, results)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "test_loss": None,
        "history": {"loss": [0.5, None], "accuracy": [pytest.approx(0.1), None]},
        "best": None,
        "steps": 7,
        "rows": [{"x": None}],
        "path": str(tmp_path),
    }
    assert results["test_loss"] is nan  # the caller's dict is left as it was


def test_a_lottery_round_with_a_nan_loss_counts_as_diverged():
    assert not runner._diverged({"test_loss": 0.3, "rounds": [{"test_loss": 0.4}]})
    assert runner._diverged({"test_loss": 0.3, "rounds": [{"test_loss": float("nan")}]})
    assert runner._diverged({"test_loss": np.float32("inf")})
    assert runner._diverged({"test_loss": 0.3, "diverged": True})
