"""tools/sweep.py: a tiny sweep on the bundled digits, its reports, resume and bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tools import sweep, sweep_cells  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGFILE = ROOT / "configs" / "digits.flags"
# LeNet-300-100 on 8x8 digits: kernels 64x300, 300x100, 100x10 are the prunable weights.
PRUNABLE = 64 * 300 + 300 * 100 + 100 * 10


def run_sweep(*args):
    """Runs tools/sweep.py in this process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = sweep.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def tiny_args(out, *more):
    # lth removes half of the remaining weights per round: target 0.5 takes 1 round (exactly
    # 50%), target 0.7 takes 2 rounds and lands at 75%.
    return [
        f"--flagfile={FLAGFILE}",
        "--methods=linear,lth",
        "--sparsities=0.5,0.7",
        "--seeds=2",
        "--dense",
        f"--out={out}",
        "--in_process",
        *more,
        "--",
        "--epochs=1",
        "--lth_rate=0.5",
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "digits"
    status, stdout, stderr = run_sweep(*tiny_args(out))
    assert status == 0, stdout + stderr
    return out, stdout


def results_of(out, cell):
    return json.loads((out / cell / "results.json").read_text())


def csv_rows(out):
    with open(out / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_every_cell_is_a_run_with_its_own_seed_and_sparsity(tiny):
    out, stdout = tiny
    names = [
        "dense-seed0",
        "linear-50-seed0",
        "lth-50-seed0",
        "linear-70-seed0",
        "lth-70-seed0",
        "dense-seed1",
        "linear-50-seed1",
        "lth-50-seed1",
        "linear-70-seed1",
        "lth-70-seed1",
    ]
    for index, name in enumerate(names, 1):
        results = results_of(out, name)
        method, _, rest = name.partition("-")
        assert results["method"] == method
        assert results["flags"]["seed"] == int(name[-1])
        assert results["epochs"] == 1
        assert (out / "logs" / f"{name}.log").is_file()
        # Progress: one numbered line per cell, with its result.
        assert f"[{index:>2}/10] " in stdout
    assert "0 finished (skipped), 10 to run" in stdout
    assert "10 ran, 0 skipped, 0 failed; 10 of 10 cells finished" in stdout
    assert "[ 5/10] lth target 0.7 seed 0: done in" in stdout and "(2 rounds)" in stdout


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_csv_has_a_row_per_cell_with_exact_sparsities(tiny):
    out, _ = tiny
    rows = csv_rows(out)
    assert len(rows) == 10
    assert tuple(rows[0]) == sweep.COLUMNS
    by_cell = {row["cell"]: row for row in rows}
    for name, row in by_cell.items():
        results = results_of(out, name)
        assert row["status"] == "done"
        assert float(row["sparsity"]) == results["global_sparsity"]
        assert float(row["test_accuracy"]) == results["test_accuracy"]
        assert int(row["prunable_params"]) == PRUNABLE
    # Exact counts: round(s * N) zeros for the gradual method, none for the dense baseline.
    assert float(by_cell["linear-70-seed1"]["sparsity"]) == round(0.7 * PRUNABLE) / PRUNABLE
    assert int(by_cell["linear-70-seed1"]["nonzero_prunable_params"]) == PRUNABLE - round(
        0.7 * PRUNABLE
    )
    assert float(by_cell["dense-seed0"]["sparsity"]) == 0.0
    assert by_cell["dense-seed0"]["target_sparsity"] == "0.0"
    # lth: requested 0.7, reached in two rounds of 50%: 75% zeros, exactly.
    lth = by_cell["lth-70-seed0"]
    assert float(lth["target_sparsity"]) == 0.7
    assert lth["lth_rounds"] == "2"
    assert int(lth["nonzero_prunable_params"]) == round(PRUNABLE * 0.25)
    assert float(lth["sparsity"]) == 0.75
    assert by_cell["lth-50-seed1"]["lth_rounds"] == "1"
    assert by_cell["linear-50-seed0"]["lth_rounds"] == ""


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_markdown_and_json_summaries_match_the_runs(tiny):
    out, _ = tiny
    text = (out / "sweep.md").read_text()

    def spread(cells):
        values = [100 * results_of(out, c)["test_accuracy"] for c in cells]
        return f"{statistics.fmean(values):.2f} [{min(values):.2f}–{max(values):.2f}]"

    assert "# Sweep: lenet300_100 on digits" in text
    assert f"**Dense baseline**: {spread(['dense-seed0', 'dense-seed1'])} (n = 2)." in text
    assert "| method | 50% | 70% |" in text
    linear = f"| linear | {spread(['linear-50-seed0', 'linear-50-seed1'])} | "
    linear += f"{spread(['linear-70-seed0', 'linear-70-seed1'])} |"
    assert linear in text
    # lth at 0.7 is shown at its achieved 75%; at 0.5 it is exact, so no "@".
    lth = f"| lth | {spread(['lth-50-seed0', 'lth-50-seed1'])} | "
    lth += f"{spread(['lth-70-seed0', 'lth-70-seed1'])} @ 75.00% |"
    assert lth in text
    assert "| lth | 70.00 | 75.000 |" in text
    # The command that made it, with its date.
    assert "\n```bash\n# 20" in text and "\npython tools/sweep.py --flagfile=" in text

    payload = json.loads((out / "sweep.json").read_text())
    assert len(payload["cells"]) == 10
    assert payload["settings"]["extra"] == ["--epochs=1", "--lth_rate=0.5"]
    assert payload["machine"]["cpu_count"] == os.cpu_count()
    groups = {(g["method"], g["target_sparsity"]): g for g in payload["summary"]}
    assert set(groups) == {
        ("dense", 0.0),
        ("linear", 0.5),
        ("linear", 0.7),
        ("lth", 0.5),
        ("lth", 0.7),
    }
    assert all(g["n"] == 2 and g["seeds"] == [0, 1] for g in groups.values())
    assert groups[("lth", 0.7)]["sparsity_mean"] == 0.75


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_png_is_drawn(tiny):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out, _ = tiny
    path = out / "sweep.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (420, 640)
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_second_invocation_trains_nothing(tiny):
    out, _ = tiny
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    assert len(stamps) == 10
    status, stdout, _ = run_sweep(*tiny_args(out))
    assert status == 0
    assert "10 finished (skipped), 0 to run" in stdout
    assert "0 ran, 10 skipped, 0 failed" in stdout
    assert stdout.count(": skipped, finished: test acc ") == 10
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == stamps
    commands = (out / "sweep_commands.txt").read_text()
    assert commands.count("\npython tools/sweep.py --flagfile=") == 2  # both invocations


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_an_unfinished_cell_is_run_again_and_the_report_keeps_other_cells(tiny, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny[0], out)
    (out / "linear-70-seed1" / "results.json").unlink()  # as if killed before the end
    kept = (out / "linear-70-seed0" / "results.json").stat().st_mtime_ns
    # A smaller grid: linear only. The report still holds every finished cell of the directory.
    args = tiny_args(out)
    args[1] = "--methods=linear"
    status, stdout, _ = run_sweep(*args)
    assert status == 0, stdout
    assert "[6/6] linear target 0.7 seed 1: resuming ..." in stdout
    assert "1 ran, 5 skipped, 0 failed" in stdout
    assert (out / "linear-70-seed1" / "results.json").is_file()
    assert (out / "linear-70-seed0" / "results.json").stat().st_mtime_ns == kept
    assert len(csv_rows(out)) == 10  # lth cells of the first invocation included


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_without_matplotlib_the_tables_are_still_written(tiny, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(tiny[0], out)
    for name in ("sweep.png", "sweep.csv", "sweep.md"):
        (out / name).unlink()
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    status, stdout, _ = run_sweep(*tiny_args(out, "--report_only"))
    assert status == 0
    assert "matplotlib is not installed (pip install 'kprune[plot]')" in stdout
    assert (out / "sweep.csv").is_file() and (out / "sweep.md").is_file()
    assert not (out / "sweep.png").exists()


def test_dry_run_lists_cells_and_writes_nothing(tmp_path):
    out = tmp_path / "sweep"
    status, stdout, _ = run_sweep(
        "--methods=linear,snip",
        "--sparsities=0.9",
        "--seeds=2",
        f"--out={out}",
        "--in_process",
        "--dry_run",
    )
    assert status == 0, stdout
    assert "[1/4] linear-90-seed0: to run" in stdout and "[4/4] snip-90-seed1: to run" in stdout
    assert "--dry_run for linear target 0.9 seed 0: ok" in stdout
    assert "--dry_run for snip target 0.9 seed 0: ok" in stdout
    assert not out.exists()


@pytest.mark.integration  # one training in a subprocess (~30 s)
def test_one_cell_in_its_own_process(tmp_path):
    out = tmp_path / "sweep"
    status, stdout, _ = run_sweep(
        f"--flagfile={FLAGFILE}",
        "--methods=snip",
        "--sparsities=0.9",
        "--seeds=1",
        "--first_seed=3",
        f"--out={out}",
        "--",
        "--epochs=1",
    )
    assert status == 0, stdout
    results = results_of(out, "snip-90-seed3")
    assert results["flags"]["seed"] == 3 and results["method"] == "snip"
    assert results["global_sparsity"] == round(0.9 * PRUNABLE) / PRUNABLE
    log = (out / "logs" / "snip-90-seed3.log").read_text()
    assert log.startswith("$ ") and "-m kprune.train" in log
    assert "45/45" in log and "Trained lenet300_100 on digits with snip pruning" in log


def test_bad_input_for_a_cell_stops_the_sweep(tmp_path):
    out = tmp_path / "sweep"
    # LeNet-5 needs at least 16x16 images: kprune.train rejects it (exit status 2) before
    # training, and so would every other cell.
    status, stdout, stderr = run_sweep(
        "--methods=linear",
        "--sparsities=0.5,0.9",
        "--seeds=1",
        f"--out={out}",
        "--in_process",
        "--",
        "--model=lenet5_caffe",
    )
    assert status == 2
    assert "[1/2] linear target 0.5 seed 0: FAILED (exit status 2)" in stdout
    assert "at least 16x16" in stdout  # the tail of the cell's log
    assert "[2/2]" not in stdout
    assert "bad input for linear target 0.5 seed 0" in stderr
    assert "0 of 2 cells finished" not in stdout  # exits with the error, after the reports
    assert (out / "sweep.csv").is_file() and len(csv_rows(out)) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods=linear,magic"], "unknown method(s) ['magic'] in --methods=linear,magic"),
        (["--methods=magic"], "Available: dense, linear, polynomial"),
        (["--sparsities=0.5,1.0"], "in [0, 1), 1 excluded. Received: 1.0"),
        (["--sparsities=-0.1"], "Received: -0.1"),
        (["--sparsities=0.5,high"], "Received: --sparsities=0.5,high"),
        (["--sparsities=nan"], "Received: nan"),
        (["--sparsities=0.98,0.9800000001"], "too close to tell apart"),
        (["--seeds=0"], "--seeds must be at least 1. Received: --seeds=0"),
        (["--flagfile=/nonexistent/x.flags"], "--flagfile=/nonexistent/x.flags is not a file"),
        (["--", "--seed=3"], "--seed=3 cannot be passed through"),
        (["--extra=--target_sparsity=0.5"], "--target_sparsity=0.5 cannot be passed through"),
        (["--", "--lth_rounds=3"], "cannot be passed through"),
        (["--", "epochs=3"], "written --name=value. Received: 'epochs=3'"),
        (["--report_only"], "--report_only: there is no sweep in --out="),
    ],
)
def test_bad_input_is_refused_before_anything_runs(tmp_path, args, message):
    out = tmp_path / "sweep"
    base = ["--methods=linear", "--sparsities=0.5", f"--out={out}"]
    status, stdout, stderr = run_sweep(*base, *args)
    assert status == 2
    assert message in stderr
    assert not out.exists()


@pytest.mark.integration  # the tiny sweep fixture trains 10 cells (~2 min on 2 cores)
def test_a_sweep_directory_keeps_its_shared_settings(tiny):
    out, _ = tiny
    for more in ([], ["--dry_run"], ["--report_only"]):
        args = tiny_args(out, *more)
        args[-1] = "--lth_rate=0.2"
        status, _, stderr = run_sweep(*args)
        assert status == 2
        assert "different shared settings (extra" in stderr and "--lth_rate=0.2" in stderr


def test_summarize_and_cell_names():
    rows = [
        {
            "method": "snip",
            "target_sparsity": 0.9,
            "status": "done",
            "sparsity": 0.9,
            "test_accuracy": accuracy,
            "best_test_accuracy": accuracy + 0.01,
            "seed": seed,
            "total_steps": 100 * (seed + 1),
            "cell": f"snip-90-seed{seed}",
            "model": "lenet300",
            "dataset": "digits",
            "epochs": 1,
        }
        for seed, accuracy in enumerate((0.90, 0.93, 0.96))
    ]
    rows.append({**rows[0], "status": "missing", "seed": 3, "total_steps": 10_000})
    (group,) = sweep.summarize(rows)
    # The cost column: mean steps of the finished seeds only (100, 200, 300).
    assert group["steps_mean"] == pytest.approx(200.0)
    from tools import sweep_report

    report = sweep_report.markdown_report(rows, [group])
    assert "| training steps | n |" in report and "| 94.00 | 200 | 3 |" in report
    assert group["n"] == 3 and group["seeds"] == [0, 1, 2]
    assert (group["min"], group["max"]) == (0.90, 0.96)
    assert group["mean"] == pytest.approx(0.93) and group["best_mean"] == pytest.approx(0.94)
    assert sweep.Cell("lth", 0.9797, 2).name == "lth-97.97-seed2"
    assert sweep.Cell("dense", None, 0).name == "dense-seed0"
    # Directory names parse back into the same cells.
    for cell in (sweep.Cell("lth", 0.9797, 2), sweep.Cell("snip", 0.5, 10)):
        match = sweep_cells._CELL_NAME.match(cell.name)
        assert (match["method"], float(match["percent"]) / 100, int(match["seed"])) == (
            cell.method,
            cell.target,
            cell.seed,
        )


def test_digits_in_mnist_layout(tmp_path):
    import numpy as np

    from kprune import data, models
    from tools import make_digits28

    path = tmp_path / "digits28.npz"
    assert make_digits28.main(["--out", str(path)]) == 0
    with np.load(path) as arrays, np.load(data.digits_path()) as digits:
        for split in ("train", "test"):
            x, source = arrays[f"x_{split}"], digits[f"x_{split}"]
            assert x.shape == (len(source), 28, 28, 1) and x.dtype == np.uint8
            np.testing.assert_array_equal(arrays[f"y_{split}"], digits[f"y_{split}"])
            # A 4-pixel black border around the 20x20 box, as MNIST centres its digits.
            box = np.zeros((28, 28), bool)
            box[4:24, 4:24] = True
            assert not x[:, ~box].any() and x.max() == 255
            # Bilinear scaling keeps each image's mean brightness (0..16 becomes 0..255).
            scaled = x[:, 4:24, 4:24, 0].reshape(len(x), -1).mean(axis=1)
            original = source.reshape(len(source), -1).mean(axis=1) * 255 / 16
            np.testing.assert_allclose(scaled, original, rtol=0.05, atol=2.0)
    info = data.dataset_info(f"npz:{path}")
    assert (info.input_shape, info.num_classes, info.train_size) == ((28, 28, 1), 10, 1438)
    assert models.build_model("lenet5_caffe", info.input_shape, 10).count_params() == 431080


def test_a_diverged_cell_counts_as_finished_and_is_reported_as_diverged(tmp_path):
    from tools import sweep_report, sweep_run

    config = sweep_cells.SweepConfig(("linear",), (0.9,), (0,), False, None, (), tmp_path)
    cell = sweep_cells.Cell("linear", 0.9, 0)
    (tmp_path / cell.name).mkdir()
    results = {"global_sparsity": 0.9, "test_accuracy": None, "diverged": True}
    (tmp_path / cell.name / sweep_cells.RESULTS).write_text(json.dumps(results))
    row = sweep_cells.read_cell(config, cell)
    assert row["status"] == "diverged"
    assert sweep_run._result_line(row) == "diverged (loss NaN or infinite) at sparsity 0.9000"
    report = sweep_report.markdown_report([row], sweep_report.summarize([row]))
    assert f"Diverged (loss NaN or infinite; 1): {cell.name}." in report
    assert "Not finished" not in report
