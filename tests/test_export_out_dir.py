"""kprune.export's output directory: normal permissions, and what interrupted exports left."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402
import select  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

from kprune.export import export  # noqa: E402
from kprune.export import out_dir as out_dir_lib  # noqa: E402

# A second process holding a directory as a live export holds its temporary directory (an
# flock on the directory), until its stdin closes.
HOLD_DIR = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((16,), name="features"), keras.layers.Dense(4, name="logits")], name="tiny"
    )


def _quick_export(path, **kwargs):
    return export(_mlp(), path, formats="tflite", compare_dense=False, verbose=False, **kwargs)


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield 0o750
    finally:
        os.umask(previous)


def test_export_dir_gets_the_umask_permissions(tmp_path, umask_027):
    _quick_export(tmp_path / "out")
    assert (tmp_path / "out").stat().st_mode & 0o777 == umask_027  # not mkdtemp's 0700
    (tmp_path / "out" / "keep").mkdir()
    _quick_export(tmp_path / "out", overwrite=True)  # a replaced export too
    assert (tmp_path / "out").stat().st_mode & 0o777 == umask_027
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no .old- directory left


def test_next_export_removes_what_an_interrupted_one_left(tmp_path, caplog):
    stale = [".out.tmp-k3j_x9q0", ".out.old-0a1b2c3d", ".out.tmp-deadbeef"]  # mkdtemp, ours
    for name in stale:
        (tmp_path / name / "saved_model").mkdir(parents=True)
        (tmp_path / name / "saved_model" / "saved_model.pb").write_bytes(b"half")
    others = [
        ".out.tmp-short",  # not the 8-character suffix
        ".out.tmp-k3j_x9q0x",
        ".out2.tmp-k3j_x9q0",  # another export's
        "out.tmp-k3j_x9q0",
        ".OUT.tmp-k3j_x9q0",
        "notes",
    ]
    for name in others:
        (tmp_path / name).mkdir()
    (tmp_path / ".out.tmp-filefile").write_text("a file, not a directory")
    with caplog.at_level(logging.INFO, logger="kprune.export.out_dir"):
        _quick_export(tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == sorted(["out", ".out.tmp-filefile", *others])
    for name in stale:
        assert f"Removed {tmp_path / name}, left by an interrupted export" in caplog.text


def test_a_live_exports_temporary_directory_is_left_alone(tmp_path):
    live = tmp_path / ".out.tmp-a1b2c3d4"
    live.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_DIR, str(live)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 60)
        assert ready and holder.stdout.readline().strip() == "locked"
        assert out_dir_lib.remove_stale_temp_dirs(str(tmp_path / "out")) == []
        assert live.is_dir()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # Its process gone, the directory is stale.
    assert out_dir_lib.remove_stale_temp_dirs(str(tmp_path / "out")) == [str(live)]
    assert not live.exists()


def test_temp_dir_is_held_and_named_for_clean_up(tmp_path):
    target = str(tmp_path / "out")
    with out_dir_lib.temp_dir(target) as tmp:
        assert os.path.basename(tmp).startswith(".out.tmp-")
        assert out_dir_lib.remove_stale_temp_dirs(target) == []  # held: not stale
    assert out_dir_lib.remove_stale_temp_dirs(target) == [tmp]  # left behind after the block
