"""`npz:` files: example counts, shapes, non-finite pixels and suspicious labels.

Errors reach the command line as a message with exit status 2 and nothing written; label
problems are WARNINGs that name the class count the labels imply.
"""

import logging

import numpy as np
import pytest

from kprune import data, train

NPZ_LOGGER = "kprune.data.npz"


def arrays(n_train=40, n_test=10, shape=(6, 6), dtype=np.uint8, classes=10):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape)).astype(dtype),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape)).astype(dtype),
        "y_test": np.arange(n_test) % classes,
    }


def write(tmp_path, values, name="a.npz"):
    path = tmp_path / name
    np.savez(path, **values)
    return f"npz:{path}"


def cli(tmp_path, name, *extra):
    run_dir = tmp_path / "run"
    status = train.cli(
        ["kprune.train", f"--dataset={name}", f"--model_dir={run_dir}", "--progress=none", *extra]
    )
    return status, run_dir


def empty(split):
    def change(a):
        a[f"x_{split}"], a[f"y_{split}"] = a[f"x_{split}"][:0], a[f"y_{split}"][:0]

    return change


def flat(a):
    a["x_train"], a["x_test"] = a["x_train"][:, 0, 0].copy(), a["x_test"][:, 0, 0].copy()


HEADER_PROBLEMS = [
    (empty("test"), "x_test has 0 examples; it needs at least 1"),
    (empty("train"), "x_train has 0 examples; it needs at least 2"),
    (
        lambda a: a.update(x_train=a["x_train"][:1], y_train=a["y_train"][:1]),
        "x_train has 1 examples; it needs at least 2",
    ),
    (flat, "x_train has shape (40,); it must be (N, features), (N, H, W) or (N, H, W, C)"),
]


@pytest.mark.parametrize(
    "change, message", HEADER_PROBLEMS, ids=["test0", "train0", "train1", "1d"]
)
def test_header_problems_name_the_count_or_the_shape(change, message, tmp_path, capsys):
    values = arrays()
    change(values)
    name = write(tmp_path, values)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.dataset_info(name)
    with pytest.raises(ValueError, match="it needs at least|it must be"):
        data.load_dataset(name, 4)
    status, run_dir = cli(tmp_path, name, "--dry_run")  # the header checks run in a dry run
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
    assert not run_dir.exists()


def test_vectors_and_single_examples_per_split_stay_valid(tmp_path):
    values = arrays(n_train=2, n_test=1, shape=(5,), dtype=np.float32, classes=2)
    values["y_test"] = np.array([1])
    info = data.dataset_info(write(tmp_path, values))
    assert (info.input_shape, info.train_size, info.test_size) == ((5,), 2, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_non_finite_pixels_are_refused_at_load_with_their_count(dtype, tmp_path):
    values = arrays(dtype=dtype)
    values["x_train"][3, 1, 1] = np.nan
    values["x_train"][5, 2, 2] = np.inf
    values["x_train"][5, 0, 0] = -np.inf
    values["x_test"][0, 0, 0] = np.nan
    name = write(tmp_path, values)
    assert data.dataset_info(name).train_size == 40  # headers and labels only: no pixel read
    with pytest.raises(ValueError, match="x_train holds 3 NaN/inf values in 2 of its 40 examples"):
        data.load_dataset(name, 4)
    values["x_train"] = np.nan_to_num(values["x_train"], posinf=0.0, neginf=0.0)
    with pytest.raises(ValueError, match="x_test holds 1 NaN/inf values in 1 of its 10 examples"):
        data.load_dataset(write(tmp_path, values, "b.npz"), 4)


def test_non_finite_pixels_exit_2_from_the_command_line_without_writing(tmp_path, capsys):
    values = arrays(dtype=np.float32)
    values["x_test"][2] = np.nan
    status, run_dir = cli(tmp_path, write(tmp_path, values), "--epochs=1", "--batch_size=8")
    err = capsys.readouterr().err
    assert status == 2
    assert "x_test holds 36 NaN/inf values in 1 of its 10 examples" in err
    assert "Traceback" not in err
    assert not run_dir.exists()


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == NPZ_LOGGER]


def test_a_class_absent_from_training_is_a_warning(tmp_path, caplog, capsys):
    values = arrays()
    values["y_train"] = np.where(values["y_train"] == 7, 3, values["y_train"])
    name = write(tmp_path, values)
    with caplog.at_level(logging.WARNING, NPZ_LOGGER):
        assert data.dataset_info(name).num_classes == 10
        data.load_dataset(name, 8)  # the same file again: no second warning
    (message,) = warnings_of(caplog)
    assert "1 of the 10 classes (7) never occur in y_train" in message
    assert "(they occur in y_test)" in message
    assert "num_classes = max label + 1 = 10" in message


def test_a_label_far_above_the_others_is_a_warning_with_the_class_count(tmp_path, caplog):
    values = arrays()
    values["y_train"][4] = 100000
    name = write(tmp_path, values)
    with caplog.at_level(logging.WARNING, NPZ_LOGGER):
        assert data.dataset_info(name).num_classes == 100001
    (message,) = warnings_of(caplog)
    assert "num_classes = max label + 1 = 100001" in message
    assert "only 11 distinct labels occur (largest: 100000, 9, 8)" in message


def test_label_warnings_reach_the_dry_run(tmp_path, caplog, capsys):
    values = arrays()
    values["y_test"][0] = 100000
    with caplog.at_level(logging.WARNING, NPZ_LOGGER):
        status, run_dir = cli(tmp_path, write(tmp_path, values), "--dry_run")
    assert status == 0 and not run_dir.exists()
    assert any("= 100001" in m for m in warnings_of(caplog))


def test_labels_covering_every_class_give_no_warning(tmp_path, caplog):
    values = arrays()
    values["y_test"] = np.zeros(10, np.int64)  # a test split may lack classes
    with caplog.at_level(logging.WARNING, NPZ_LOGGER):
        data.load_dataset(write(tmp_path, values), 8)
        data.dataset_info("digits")
    assert warnings_of(caplog) == []
