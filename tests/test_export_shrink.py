"""kprune.export of a channel-pruned model: the shrunk model is written, checked and measured."""

import json
import os
import subprocess
import sys
import types
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import kprune
from kprune.experiment import runner
from kprune.export import ParityError, export, format_export_report, shrinking
from kprune.export import __main__ as export_cli
from kprune.masks import bind_optimizer

L = keras.layers


def _tiny_conv():
    """Conv2D(8, 3) on 8x8x3 (valid: 6x6 out), BatchNorm, ReLU, pooling, Dense(4)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3), name="image"),
            L.Conv2D(8, 3, name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(name="relu"),
            L.GlobalAveragePooling2D(name="pool"),
            L.Dense(4, name="logits"),
        ],
        name="tiny_conv",
    )


def _channel_pruned(sparsity=0.5):
    pruned = kprune.prune(_tiny_conv(), kprune.ConstantSparsity(sparsity), granularity="channel")
    (group,) = bind_optimizer(pruned, keras.optimizers.SGD())
    group.update(tf.constant(sparsity, tf.float64))
    return pruned


def _images(n=64):
    return np.random.default_rng(1).random((n, 8, 8, 3), dtype="float32")


# Hand-computed. Dense: conv 3*3*3*8 + 8 = 224, BN 4*8 = 32, logits 8*4 + 4 = 36.
# Shrunk to 4 channels: conv 3*3*3*4 + 4 = 112, BN 16, logits 4*4 + 4 = 20.
DENSE_PARAMS, SHRUNK_PARAMS = 224 + 32 + 36, 112 + 16 + 20
# MACs: conv 6*6 positions * 27 * filters, logits filters * 4.
DENSE_MACS, SHRUNK_MACS = 36 * 27 * 8 + 8 * 4, 36 * 27 * 4 + 4 * 4


@pytest.fixture(scope="module")
def shrunk_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("shrunk")
    pruned = _channel_pruned()
    report = export(pruned, root / "out", eval_data=_images(), verbose=False)
    return root / "out", pruned, report


def test_files_hold_the_shrunk_model(shrunk_export):
    out, pruned, report = shrunk_export
    assert sorted(os.listdir(out)) == [
        "export_report.json",
        "model.keras",
        "model.tflite",
        "saved_model",
    ]
    with open(out / "export_report.json") as f:
        assert json.load(f) == report
    shapes = {r["weight"]: r["shape"] for r in report["artifacts"]["tflite"]["weights"]}
    assert shapes == {"conv/kernel": [4, 3, 3, 3], "logits/kernel": [4, 4]}
    saved = {r["weight"]: r["shape"] for r in report["artifacts"]["saved_model"]["weights"]}
    assert saved == {"conv/kernel": [3, 3, 3, 4], "logits/kernel": [4, 4]}
    assert type(pruned.get_layer("conv")).__name__ == "PruningWrapper"  # input left as it was


def test_report_gives_params_macs_and_bytes_dense_vs_shrunk(shrunk_export):
    _, _, report = shrunk_export
    section = report["shrink"]
    assert section["source"] == "channel masks of the pruned model"
    assert section["params"] == {
        "dense": DENSE_PARAMS,
        "shrunk": SHRUNK_PARAMS,
        "ratio": round(SHRUNK_PARAMS / DENSE_PARAMS, 4),
    }
    assert section["macs"] == {
        "dense": DENSE_MACS,
        "shrunk": SHRUNK_MACS,
        "ratio": round(SHRUNK_MACS / DENSE_MACS, 4),
    }
    assert section["channels_removed"] == 4
    assert section["channels"] == [{"layer": "conv", "kept": 4, "total": 8}]
    assert sorted(section["bytes"]) == ["keras", "saved_model", "tflite"]
    for name, sizes in section["bytes"].items():
        artifact = report["artifacts"][name]
        assert (sizes["dense"], sizes["shrunk"]) == (artifact["dense_bytes"], artifact["bytes"])
    # TFLite folds the BatchNorm into the conv: 224 + 36 against 112 + 20 stored floats, 512
    # bytes fewer.
    assert section["bytes"]["tflite"]["dense"] - section["bytes"]["tflite"]["shrunk"] >= 512
    assert report["keras_sparsity"]["all_params"]["total"] == SHRUNK_PARAMS
    table = format_export_report(report)
    assert (
        f"params {DENSE_PARAMS} -> {SHRUNK_PARAMS} (0.507x), MACs 7,808 -> 3,904 (0.500x), "
        f"saved_model bytes {section['bytes']['saved_model']['dense']:,} -> " in table
    )
    assert "channels kept: conv 4/8" in table


def test_parity_against_the_masked_model(shrunk_export):
    out, pruned, report = shrunk_export
    parity = report["parity"]
    assert parity["passed"] and parity["samples"] == 64 and parity["failures"] == []
    for name in ("saved_model", "tflite", "keras"):
        assert parity[name]["max_abs_diff"] < 1e-5, (name, parity[name])
        assert parity[name]["top1_agreement"] == 1.0
    # The reference is the masked model: its predictions, not the shrunk model's.
    interpreter = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
    runner_fn = interpreter.get_signature_runner("serving_default")
    x = _images(1)
    (tflite_out,) = runner_fn(image=x).values()
    np.testing.assert_allclose(tflite_out, np.asarray(pruned(x, training=False)), atol=1e-5)


def test_keras_file_holds_plain_keras_layers(shrunk_export):
    out, pruned, _ = shrunk_export
    with zipfile.ZipFile(out / "model.keras") as archive:
        config = archive.read("config.json")
    assert b"kprune" not in config  # no kprune class to look up: loads with keras alone
    loaded = keras.models.load_model(out / "model.keras")
    assert loaded.count_params() == SHRUNK_PARAMS
    x = _images(4)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)), np.asarray(pruned(x, training=False)), atol=1e-5
    )


@pytest.mark.slow  # a fresh Python that imports TensorFlow
def test_keras_file_loads_in_a_process_without_kprune(shrunk_export):
    out, pruned, _ = shrunk_export
    x = _images(2)
    np.save(out.parent / "x.npy", x)
    code = (
        "import sys, keras, numpy as np\n"
        f"model = keras.models.load_model({str(out / 'model.keras')!r})\n"
        f"y = model(np.load({str(out.parent / 'x.npy')!r}), training=False)\n"
        "print(model.count_params(), [type(l).__name__ for l in model.layers])\n"
        "print(any(m.startswith('kprune') for m in sys.modules))\n"
        f"np.save({str(out.parent / 'y.npy')!r}, np.asarray(y))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # kprune cannot be imported from there
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == (
        f"{SHRUNK_PARAMS} ['Conv2D', 'BatchNormalization', 'ReLU', 'GlobalAveragePooling2D', "
        "'Dense']"
    )
    assert lines[-1] == "False"
    y = np.load(out.parent / "y.npy")
    np.testing.assert_allclose(y, np.asarray(pruned(x, training=False)), atol=1e-5)


def test_stripped_model_shrinks_with_shrink_true_only(tmp_path):
    pruned = _channel_pruned()
    stripped = kprune.strip(pruned)
    exported, reference, section = shrinking._models_to_export(stripped, "auto")
    assert exported is reference and section is None  # auto: no masks, exported as before
    report = export(
        stripped, tmp_path / "b", formats="tflite", compare_dense=False, shrink=True, verbose=False
    )
    assert report["shrink"]["source"] == "all-zero channels of the stripped model"
    assert report["shrink"]["params"]["shrunk"] == SHRUNK_PARAMS
    assert report["shrink"]["channels"] == [{"layer": "conv", "kept": 4, "total": 8}]
    assert report["shrink"]["bytes"]["tflite"]["dense"] is None  # compare_dense=False
    assert report["parity"]["passed"]


def test_shrink_false_exports_the_masked_model_with_its_zeros(tmp_path):
    report = export(
        _channel_pruned(),
        tmp_path / "out",
        formats="tflite",
        compare_dense=False,
        shrink=False,
        verbose=False,
    )
    assert "shrink" not in report and "keras" not in report["parity"]
    rows = {r["weight"]: r for r in report["artifacts"]["tflite"]["weights"]}
    assert rows["conv/kernel"]["shape"] == [8, 3, 3, 3]
    assert rows["conv/kernel"]["nonzero"] == 4 * 27


def test_weight_level_models_are_exported_as_before(tmp_path):
    model = keras.Sequential([keras.Input((6,)), L.Dense(5, name="h"), L.Dense(3, name="out")])
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5))
    report = export(pruned, tmp_path / "out", formats="tflite", compare_dense=False, verbose=False)
    assert "shrink" not in report and "shrunk" not in format_export_report(report)
    with pytest.raises(ValueError, match="weight-level masks"):
        export(pruned, tmp_path / "bad", shrink=True, verbose=False)
    with pytest.raises(ValueError, match=r"shrink='yes'"):
        export(pruned, tmp_path / "bad", shrink="yes", verbose=False)
    assert not (tmp_path / "bad").exists()


def test_shrink_true_without_zero_channels_warns_and_keeps_the_model_whole():
    with pytest.warns(UserWarning, match="nothing is removed"):
        exported, reference, section = shrinking._models_to_export(_tiny_conv(), True)
    assert section["channels_removed"] == 0
    assert section["params"]["shrunk"] == DENSE_PARAMS == exported.count_params()
    assert exported is not reference  # still the rebuilt model that export writes


def test_a_wrong_shrunk_model_fails_the_parity_gate(tmp_path, monkeypatch):
    rebuild = shrinking._rebuild

    def off_by_a_bit(plain, trace, keep):
        small = rebuild(plain, trace, keep)
        bias = small.get_layer("logits").bias
        bias.assign(bias + 0.05)  # the same shift for every logit: top-1 is unchanged
        return small

    monkeypatch.setattr(shrinking, "_rebuild", off_by_a_bit)
    pruned = _channel_pruned()
    with pytest.raises(ParityError) as info:
        export(pruned, tmp_path / "out", formats="tflite", compare_dense=False, verbose=False)
    failures = info.value.report["parity"]["failures"]
    assert len(failures) == 1 and failures[0].startswith("keras (shrunk model): max |difference|")
    assert (tmp_path / "out" / "model.keras").exists()  # kept for inspection


def test_cli_shrink_flag(tmp_path, capsys, monkeypatch):
    path = tmp_path / "pruned.keras"
    _channel_pruned().save(path)

    def cli(*args):
        fv = flags.FlagValues()
        export_cli.define_flags(fv)
        fv(["export", f"--model={path}", "--formats=tflite", "--compare_dense=false", *args])
        return export_cli.run(fv), capsys.readouterr()

    status, out = cli(f"--out={tmp_path / 'auto'}")
    assert status == 0, out.err
    assert f"params {DENSE_PARAMS} -> {SHRUNK_PARAMS} (0.507x), MACs 7,808 -> 3,904" in out.out
    assert (tmp_path / "auto" / "model.keras").exists()
    seen = []
    monkeypatch.setattr(export_cli, "export", lambda *a, **kw: seen.append(kw["shrink"]) or {})
    monkeypatch.setattr(export_cli, "format_export_report", lambda report: "")
    for value in ("true", "false", "auto"):
        assert cli(f"--out={tmp_path / value}", f"--shrink={value}")[0] == 0
    assert seen == [True, False, "auto"]
    with pytest.raises(flags.IllegalFlagValueError, match=r"<auto\|true\|false>"):
        cli(f"--out={tmp_path / 'bad'}", "--shrink=yes")


def test_training_cli_export_shrinks_channel_runs(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "export", lambda model, out, **kw: seen.append(kw) or {})
    monkeypatch.setattr(runner, "format_export_report", lambda report: "")

    def ctx(granularity):
        config = types.SimpleNamespace(
            export=("tflite",), export_quantize=None, granularity=granularity
        )
        data = types.SimpleNamespace(train=None, test=None)
        return types.SimpleNamespace(
            config=config, distribution={"replicas": 1}, data=data, run_dir=tmp_path
        )

    runner._export(ctx("channel"), None, None, echo=lambda text: None)
    runner._export(ctx("weight"), None, None, echo=lambda text: None)
    assert [kw.get("shrink") for kw in seen] == [True, None]  # None: export's default, "auto"
