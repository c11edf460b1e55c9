"""tools/bench_structured.py: widths and MACs of the real prune+shrink path, JSON, bad input."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from kprune.models import resnet18  # noqa: E402
from kprune.structured.macs import count_macs  # noqa: E402
from tools import bench_structured  # noqa: E402


def test_make_shrunk_resnet18_halves_every_coupled_width():
    model = resnet18((32, 32, 3), 10)
    shrunk = bench_structured.make_shrunk(model, 0.5)
    assert shrunk.get_layer("stem_conv").filters == 32
    assert shrunk.get_layer("stage4_block2_conv2").filters == 256
    assert shrunk.get_layer("stage2_block1_shortcut_conv").filters == 64
    assert shrunk.get_layer("logits").units == 10 and shrunk.output_shape == (None, 10)
    # Interior convs lose half their inputs and outputs (1/4 of the MACs); the stem only its
    # outputs, the classifier only its inputs (1/2): 553,648,128 / 4 + 1,769,472 / 2 + 5,120 / 2.
    assert count_macs(shrunk).macs == 139_299_328


def test_kept_rounds_like_the_engine():
    assert [bench_structured.kept(w, 0.3) for w in (64, 16, 10, 5)] == [45, 11, 7, 3]
    assert bench_structured.kept(1, 0.7) == 1


@pytest.mark.integration
def test_quick_run_writes_the_json(tmp_path):
    path = tmp_path / "bench.json"
    status = bench_structured.cli.run(
        bench_structured.main, ["--quick", "--models=tiny", "--fractions=0.5", f"--json={path}"]
    )
    assert status == 0
    data = json.loads(path.read_text())
    assert {"versions", "machine", "settings", "date", "shrunk_by", "goals"} <= set(data)
    assert data["machine"]["cpu_count"] >= 1 and data["versions"]["keras"]
    variants = data["models"]["tiny"]["variants"]
    assert sorted(variants) == ["dense_fp32", "shrunk_50"]
    dense, shrunk = variants["dense_fp32"], variants["shrunk_50"]
    assert dense["macs_ratio"] == 1.0 and 0 < shrunk["macs_ratio"] < 0.5
    assert shrunk["macs"] < dense["macs"] and shrunk["params"] < dense["params"]
    assert sorted(shrunk["latency"]) == ["1", "2"]
    for entry in shrunk["latency"].values():
        assert entry["median_ms"] > 0 and entry["runs"] == 20
        assert entry["ratio_to_dense"]["min"] <= entry["ratio_to_dense"]["median"]
    assert shrunk["predict"]["images_per_s"] > 0 and dense["predict"]["images_per_s"] > 0
    assert data["goals"] == []  # goals are only for the three benchmarked networks


@pytest.mark.parametrize(
    "argv", [["--fractions=1.5"], ["--fractions=half"], ["--models=alexnet"], ["--runs=0"], ["x"]]
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, argv):
    path = tmp_path / "bench.json"
    assert bench_structured.cli.run(bench_structured.main, [*argv, f"--json={path}"]) == 2
    assert not path.exists()
