"""python -m kprune.train: flagfiles, dry runs, bad input, a short real run, the quickstart."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kprune import data, models, train  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.flags"))
PROG = "kprune.train"


def run_cli(*args):
    return train.cli([PROG, *map(str, args)])


def flagfile_values(path):
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("--"):
            name, _, value = line[2:].partition("=")
            values[name] = value
    return values


# -- configs ----------------------------------------------------------------------------------
def test_every_experiment_has_a_flagfile():
    names = {path.name for path in CONFIGS}
    assert names == {
        "digits.flags",
        "lenet300.flags",
        "lenet5.flags",
        "vgg_like.flags",
        "vgg19.flags",
        "resnet18.flags",
        "resnet50.flags",
    }
    for path in CONFIGS:
        header = path.read_text().splitlines()[0]
        assert header.startswith("# "), f"{path.name} needs a comment header saying what it is"


# Building ResNet-50 takes more than 20 s on a small CPU machine.
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.integration) if p.name == "resnet50.flags" else p
        for p in CONFIGS
    ],
    ids=lambda p: p.name,
)
def test_dry_run_of_every_flagfile(path, tmp_path, capsys):
    # An empty data_dir: a dry run that tried to load MNIST or CIFAR would fail.
    args = [f"--flagfile={path}", "--dry_run", f"--data_dir={tmp_path}"]
    args.append(f"--model_dir={tmp_path / 'run'}")
    values = flagfile_values(path)
    assert values["method"] in train.METHODS
    assert run_cli(*args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    info = data.dataset_info(values["dataset"])
    expected = models.build_model(values["model"], info.input_shape, info.num_classes)
    assert re.search(rf"^params: {expected.count_params()}\b", out, re.M), out
    assert "no data loaded" in out and f"{info.train_size} train" in out
    steps = -(-info.train_size // int(values["batch_size"])) * int(values["epochs"])
    assert f"= {steps} steps" in out
    assert "mask updates" in out and "prunable weights" in out
    assert not (tmp_path / "run").exists()


def test_published_recipes_follow_methods_md():
    vgg19 = flagfile_values(ROOT / "configs" / "vgg19.flags")
    assert (vgg19["epochs"], vgg19["batch_size"], vgg19["lr"], vgg19["momentum"]) == (
        "160",
        "128",
        "0.1",
        "0.9",
    )
    assert (vgg19["lr_decay_epochs"], vgg19["weight_decay"], vgg19["model"]) == (
        "80,120",
        "5e-4",
        "vgg19",
    )
    fggp = flagfile_values(ROOT / "configs" / "resnet50.flags")
    assert (fggp["method"], fggp["epochs"], fggp["batch_size"], fggp["label_smoothing"]) == (
        "fggp",
        "160",
        "64",
        "0.1",
    )
    assert "nesterov" in fggp and fggp["lr_decay_epochs"] == "80,120"
    assert fggp["weight_decay"] == "5e-4" and fggp["exclude"] == "stem_conv"


def test_command_line_overrides_the_flagfile(tmp_path, capsys):
    path = ROOT / "configs" / "vgg19.flags"
    assert run_cli(f"--flagfile={path}", "--target_sparsity=0.5", "--epochs=130", "--dry_run") == 0
    out = capsys.readouterr().out
    assert "final_sparsity=0.5" in out and "130 epochs x 391 steps" in out


def test_no_flags_is_the_digits_flagfile(capsys):
    assert run_cli("--dry_run") == 0
    default = capsys.readouterr().out
    assert run_cli(f"--flagfile={ROOT / 'configs' / 'digits.flags'}", "--dry_run") == 0
    assert capsys.readouterr().out == default
    assert "lenet300_100" in default and "digits" in default and "final_sparsity=0.9" in default


# -- bad input: exit status 2, a clear message, nothing written --------------------------------
def bad_npz(tmp_path, drop=None, shorten=None):
    arrays = {
        "x_train": np.zeros((20, 4, 4), np.uint8),
        "y_train": np.arange(20) % 2,
        "x_test": np.zeros((5, 4, 4), np.uint8),
        "y_test": np.arange(5) % 2,
    }
    if drop:
        arrays.pop(drop)
    if shorten:
        arrays[shorten] = arrays[shorten][:-1]
    path = tmp_path / "arrays.npz"
    np.savez(path, **arrays)
    return f"--dataset=npz:{path}"


BAD_INPUTS = [
    (["--model=resnet19"], "Valid kprune models: lenet300_100"),
    (["--dataset=imagenet"], "Valid datasets: digits, mnist"),
    (["--method=magic"], "dense|linear|polynomial|cyclical"),
    (["--target_sparsity=1.0"], "--target_sparsity must be in [0, 1)"),
    (["--target_sparsity=-0.1"], "target_sparsity"),
    (["--prune_end_step=100000"], "beyond training"),
    (["--prune_begin=0.8", "--prune_end=0.5"], "must begin before it ends"),
    (["--flagfile=/nonexistent/x.flags"], "x.flags"),
    (["--method=lth", "--rewind_step=100000"], "--rewind_step must be below"),
    (["--method=lth", "--scope=layer"], "--scope=layer does not apply to --method=lth"),
    # --scope and --budget are one choice under two names (issue 14): they must agree.
    (["--method=linear", "--scope=layer", "--budget=erk"], "--budget=erk contradicts --scope"),
    (["--method=snip", "--scope=global", "--budget=uniform"], "contradicts --scope=global"),
    (["--method=lth", "--budget=uniform"], "--scope=layer does not apply to --method=lth"),
    (["--budget=hessian"], "--budget"),
    (["--method=snip", "--budget=sensitivity"], "--budget=sensitivity applies to --method=linear"),
    (["--budget=sensitivity", "--scope=layer"], "--budget=sensitivity contradicts --scope=layer"),
    (["--budget=sensitivity", "--sensitivity_batches=45"], "holds out every batch of an epoch"),
    (["--method=fggp", "--fggp_candidate_rate=0"], "--fggp_candidate_rate must be in (0, 1]"),
    (["--method=grasp", "--grasp_temperature=0"], "--grasp_temperature must be > 0"),
    (["--export_quantize=int8"], "--export_quantize needs --export"),
    (["--exclude=fc9"], "--exclude names layers that are not in model"),
    (["--lr_schedule=step", "--lr_decay_epochs=30,90"], "lr_decay_epochs"),
    (["--lr_decay_epochs=ten"], "comma-separated list of numbers"),
    (["--dataset=cifar10", "--model=resnet20", "--epochs=1"], "--data_dir"),
    (["--dataset=npz:/nonexistent/a.npz"], "file not found"),
    (["stray_argument"], "unexpected arguments"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input_exits_2_without_writing(args, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    extra = [f"--data_dir={tmp_path / 'tfds'}"] if "--dataset=cifar10" in args else []
    assert run_cli(*args, *extra, f"--model_dir={run_dir}", "--progress=none") == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize("problem", [{"drop": "y_test"}, {"shorten": "y_train"}])
def test_bad_npz_exits_2_without_writing(problem, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli(bad_npz(tmp_path, **problem), f"--model_dir={run_dir}") == 2
    err = capsys.readouterr().err
    assert ("lacks the arrays ['y_test']" in err) or ("but y_train has 19" in err)
    assert not run_dir.exists()


@pytest.mark.parametrize("args", [["--export=pdf"], ["--export=tflite", "--export_quantize=int3"]])
def test_export_hook_checks_formats_before_training(args, tmp_path, capsys):
    assert run_cli(*args, f"--model_dir={tmp_path / 'run'}") == 2
    assert "--export" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_foreign_directory_is_never_used(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run_cli(f"--model_dir={tmp_path}", "--overwrite") == 2
    assert "not a kprune run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unfinished_run_with_other_flags_is_not_resumed(tmp_path, capsys):
    (tmp_path / "run.flags").write_text("--model=lenet300_100\n--epochs=7\n")
    assert run_cli(f"--model_dir={tmp_path}") == 2
    assert "different flags" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.flags"]


def test_bad_flags_exit_2_from_the_real_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "kprune.train", "--flagfile=missing.flags", "--dry_run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "missing.flags" in result.stderr
    assert not (tmp_path / "saved_models").exists()


# -- real runs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short") / "run"
    code = run_cli(f"--model_dir={run_dir}", "--epochs=4", "--progress=none", "--seed=3")
    assert code == 0
    return run_dir


def test_short_run_writes_results_with_exact_sparsity(short_run):
    results = json.loads((short_run / "results.json").read_text())
    for key in (
        "method",
        "model",
        "dataset",
        "target_sparsity",
        "left_dense",
        "global_sparsity",
        "test_accuracy",
        "dense_params",
        "nonzero_params",
        "layers",
        "total_steps",
        "wall_time_s",
        "versions",
        "flags",
    ):
        assert key in results, key
    assert results["left_dense"] == []  # every weight of LeNet-300-100 is prunable
    assert (results["method"], results["model"], results["dataset"]) == (
        "linear",
        "lenet300_100",
        "digits",
    )
    assert results["total_steps"] == 4 * 45
    prunable = 64 * 300 + 300 * 100 + 100 * 10
    kept = prunable - round(0.9 * prunable)
    assert results["prunable_params"] == prunable
    assert results["nonzero_prunable_params"] == kept
    assert results["global_sparsity"] == 1 - kept / prunable
    assert results["dense_params"] == prunable + 300 + 100 + 10
    assert results["nonzero_params"] <= kept + 410
    assert [row["weight"] for row in results["layers"]] == [
        "fc1/kernel",
        "fc2/kernel",
        "logits/kernel",
    ]
    assert all(row["wrapped"] for row in results["layers"])
    assert sum(row["nonzero"] for row in results["layers"]) == kept
    assert results["flags"]["seed"] == 3 and results["versions"]["keras"] == keras.__version__
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert not list(short_run.glob(".*.tmp")) and not (short_run / "tmp-model.keras").exists()


def test_short_run_saves_the_stripped_model_and_logs(short_run):
    results = json.loads((short_run / "results.json").read_text())
    model = keras.saving.load_model(short_run / "model.keras")
    assert {type(layer).__name__ for layer in model.layers} == {"InputLayer", "Flatten", "Dense"}
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    assert sum(int(np.count_nonzero(k)) for k in kernels) == results["nonzero_prunable_params"]
    test = data.load_dataset("digits", batch_size=64).test
    x, y = zip(*[(xb.numpy(), yb.numpy()) for xb, yb in test])
    accuracy = np.mean(
        np.argmax(model.predict(np.concatenate(x), verbose=0), -1) == np.concatenate(y)
    )
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    for sub in ("logs/train", "logs/validation", "logs/pruning", "checkpoints"):
        assert any((short_run / sub).iterdir()), sub


def test_run_flags_reproduce_the_run_and_finished_runs_are_kept(short_run, capsys):
    flagfile = short_run / "run.flags"
    assert "--epochs=4" in flagfile.read_text() and "--seed=3" in flagfile.read_text()
    assert run_cli(f"--flagfile={flagfile}", "--dry_run") == 0
    assert "4 epochs x 45 steps" in capsys.readouterr().out
    before = (short_run / "results.json").read_bytes()
    assert run_cli(f"--flagfile={flagfile}", f"--model_dir={short_run}") == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (short_run / "results.json").read_bytes() == before


def test_layer_scope_polynomial_run_with_exclude(tmp_path):
    run_dir = tmp_path / "poly"
    args = ["--method=polynomial", "--scope=layer", "--exclude=logits", "--target_sparsity=0.8"]
    assert run_cli(*args, "--epochs=3", "--progress=none", f"--model_dir={run_dir}") == 0
    results = json.loads((run_dir / "results.json").read_text())
    rows = {row["weight"]: row for row in results["layers"]}
    for name in ("fc1/kernel", "fc2/kernel"):
        total = rows[name]["total"]
        assert rows[name]["wrapped"] and rows[name]["nonzero"] == total - round(0.8 * total)
    assert not rows["logits/kernel"]["wrapped"] and rows["logits/kernel"]["nonzero"] == 1000
    assert results["schedule"]["class"] == "PolynomialDecay" and results["scope"] == "layer"
    assert results["exclude"] == ["logits"]


PRUNABLE = 64 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100 on 8x8 digits


@pytest.mark.parametrize(
    "args",
    [
        ["--method=fggp", "--initial_sparsity=0.5"],
        ["--method=snip", "--saliency_batches=2"],
        ["--method=grasp", "--grasp_samples_per_class=4"],
        ["--method=synflow", "--synflow_iterations=10"],
        ["--method=random", "--scope=erk"],
    ],
    ids=lambda a: a[0][len("--method=") :],
)
def test_every_other_method_trains_to_the_exact_target(args, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*args, "--epochs=1", "--progress=none", f"--model_dir={run_dir}") == 0
    results = json.loads((run_dir / "results.json").read_text())
    method = args[0][len("--method=") :]
    assert results["method"] == method and results["total_steps"] == 45
    assert results["nonzero_prunable_params"] == PRUNABLE - round(0.9 * PRUNABLE)
    stripped = keras.saving.load_model(run_dir / "model.keras")
    kernels = [layer.kernel.numpy() for layer in stripped.layers if hasattr(layer, "kernel")]
    assert sum(int(np.count_nonzero(k)) for k in kernels) == results["nonzero_prunable_params"]
    if method == "fggp":
        assert results["criterion"] == {"class": "FGGP", "candidate_rate": 0.5, "gradient": "batch"}
    else:
        assert results["scope"] == ("erk" if "--scope=erk" in args else "global")
        assert results["saliency_seconds"] >= 0


def test_lth_run_writes_rounds_and_resumes_nothing_twice(tmp_path):
    run_dir = tmp_path / "lth"
    args = ["--method=lth", "--lth_rounds=2", "--rewind_step=10", "--epochs=1"]
    assert run_cli(*args, "--progress=none", f"--model_dir={run_dir}") == 0
    results = json.loads((run_dir / "results.json").read_text())
    rounds = results["rounds"]
    assert [row["round"] for row in rounds] == [0, 1, 2]
    expected = [1 - round(PRUNABLE * 0.8**r) / PRUNABLE for r in range(3)]
    assert [row["global_sparsity"] for row in rounds] == pytest.approx(expected, abs=1e-12)
    assert all(k in rounds[-1] for k in ("test_accuracy", "wall_time_s", "steps"))
    # Round 0 trains 45 steps; rounds 1-2 retrain from step 10.
    assert results["total_steps"] == 45 + 2 * (45 - 10)
    assert results["target_sparsity"] == pytest.approx(1 - 0.8**2)
    assert results["nonzero_prunable_params"] == round(PRUNABLE * 0.8**2)
    assert (run_dir / "lottery" / "round_02" / "masks.npz").exists()


def test_export_flag_writes_export_under_the_run_dir(tmp_path):
    run_dir = tmp_path / "exp"
    args = ["--epochs=1", "--export=tflite", "--export_quantize=dynamic", "--progress=none"]
    assert run_cli(*args, f"--model_dir={run_dir}") == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert (run_dir / "export" / "model.tflite").exists()
    assert (run_dir / "export" / "export_report.json").exists()
    assert results["export"]["artifacts"]["tflite"]["bytes"] > 0


@pytest.mark.slow
def test_quickstart_default_job_reaches_90_percent(tmp_path):
    """The README's default job, exactly as written: no flags, outputs under saved_models/."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "kprune.train", "--progress=epoch"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "saved_models" / "lenet300_100-digits-linear-90"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_sparsity"] == pytest.approx(0.9, abs=1e-12)
    assert results["test_accuracy"] >= 0.90
    assert str(run_dir.relative_to(tmp_path)) in result.stdout
    print(f"quickstart: accuracy {results['test_accuracy']:.4f}, {results['wall_time_s']:.1f} s")


def test_dry_run_warns_when_pruning_outlasts_the_learning_rate(capsys):
    late = ["--flagfile=configs/lenet300.flags", "--dataset=digits", "--dry_run"]
    assert run_cli(*late, "--prune_end=0.75") == 0
    out = capsys.readouterr().out
    assert re.search(r"^warning   \d+ of \d+ mask updates come after the learning rate", out, re.M)
    assert run_cli(*late) == 0  # the flagfile ends pruning before the first cut
    assert "warning" not in capsys.readouterr().out


def test_a_diverging_run_stops_and_says_so(tmp_path, capsys):
    run_dir = tmp_path / "nan"
    # Half the weights are pruned at step 0, then a huge learning rate blows the loss up.
    args = ["--epochs=3", "--lr=1e30", "--initial_sparsity=0.5", "--progress=none"]
    assert run_cli(*args, f"--model_dir={run_dir}") == train.DIVERGED == 4  # its own status
    text = (run_dir / "results.json").read_text()

    def refuse(constant):
        raise AssertionError(f"results.json holds a bare {constant}, which is not JSON")

    results = json.loads(text, parse_constant=refuse)  # strict JSON: no NaN, no Infinity
    assert results["diverged"] is True
    assert results["test_loss"] is None  # NaN, written as null
    assert None in results["history"]["loss"]
    assert results["total_steps"] < 3 * 45  # TerminateOnNaN stopped it early
    captured = capsys.readouterr()
    assert "training diverged" in captured.out
    assert "error: training diverged" in captured.err and "Traceback" not in captured.err
    assert "4 training diverged" in train.__doc__  # --help documents the status
    # Pruned positions are still exactly zero, not NaN (NaN * 0 would be NaN and count as
    # non-zero): at least the pruned half is zero (kept weights may also have hit 0).
    assert results["nonzero_prunable_params"] <= PRUNABLE - round(0.5 * PRUNABLE)
    assert results["global_sparsity"] >= 0.5
    model = keras.saving.load_model(run_dir / "model.keras")
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    assert sum(int(np.sum(k == 0)) for k in kernels) >= round(0.5 * PRUNABLE)
