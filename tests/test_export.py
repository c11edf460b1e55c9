"""Tests for kprune.export: SavedModel + sparse TFLite export, read-back, parity, CLI."""

import doctest
import gzip
import json
import logging
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import kprune
from kprune import export as export_lib
from kprune.export import (
    ConversionError,
    ParityError,
    compare_outputs,
    convert_to_tflite,
    export,
    make_interpreter,
    read_tflite_weights,
)
from kprune.export import __main__ as export_cli
from kprune.export import inputs as export_inputs
from kprune.export import parity as export_parity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- fixtures -------------------------------------------------------------------------------
def _mlp(name="tiny"):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,), name="features"),
            keras.layers.Dense(48, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name=name,
    )


def _pruned_mlp(sparsity=0.8, seed=0):
    """A wrapped MLP whose masks remove exactly round(sparsity * n) random weights per kernel."""
    pruned = kprune.prune(_mlp(), None)
    rng = np.random.default_rng(seed)
    masks = {}
    for key, mask in kprune.get_masks(pruned).items():
        flat = np.ones(mask.size, "float32")
        flat[rng.permutation(mask.size)[: round(sparsity * mask.size)]] = 0
        masks[key] = flat.reshape(mask.shape)
    kprune.set_masks(pruned, masks)
    return pruned


def _kernels(model):
    return {layer.name: layer.kernel.numpy() for layer in model.layers}


def _inputs(n, seed=1):
    return np.random.default_rng(seed).random((n, 64), dtype="float32")


def _decode_csr(interpreter, detail):
    """Dense matrix from a 2-D CSR tensor, using the interpreter's view of the file."""
    meta = detail["sparsity_parameters"]
    assert list(meta["traversal_order"]) == [0, 1] and len(meta["block_map"]) == 0
    rows = meta["dim_metadata"][0]["dense_size"]
    segments = np.asarray(meta["dim_metadata"][1]["array_segments"])
    indices = np.asarray(meta["dim_metadata"][1]["array_indices"])
    values = interpreter.get_tensor(detail["index"])
    dense = np.zeros(detail["shape"], values.dtype)
    for r in range(rows):
        dense[r, indices[segments[r] : segments[r + 1]]] = values[segments[r] : segments[r + 1]]
    return dense


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    """One float32 export of a pruned (wrapped) MLP, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("fp32")
    pruned = _pruned_mlp()
    stripped = kprune.strip(pruned)
    report = export(pruned, root / "out", verbose=False)
    return root, pruned, stripped, report


# -- float32 export -------------------------------------------------------------------------
def test_fp32_export_writes_artifacts_and_nothing_else(fp32_export):
    root, pruned, _, report = fp32_export
    assert sorted(os.listdir(root)) == ["out"]  # no temporary directories left behind
    out = root / "out"
    assert sorted(os.listdir(out)) == ["export_report.json", "model.tflite", "saved_model"]
    assert (out / "saved_model" / "saved_model.pb").exists()
    with open(out / "export_report.json") as f:
        assert json.load(f) == report
    # The wrapped model handed in is left as it was (export strips a copy).
    assert type(pruned.get_layer("hidden")).__name__ == "PruningWrapper"


def test_fp32_tflite_holds_exactly_the_pruned_weights(fp32_export):
    root, _, stripped, report = fp32_export
    kernels = _kernels(stripped)
    rows = {r["weight"]: r for r in report["artifacts"]["tflite"]["weights"]}
    assert sorted(rows) == ["hidden/kernel", "logits/kernel"]
    for name, kernel in kernels.items():
        row = rows[f"{name}/kernel"]
        assert row["encoding"] == "sparse" and row["dtype"] == "float32"
        assert row["total"] == kernel.size
        assert row["nonzero"] == np.count_nonzero(kernel) == kernel.size - round(0.8 * kernel.size)
        assert row["keras_nonzero"] == row["nonzero"]
    # Independent decoding of the sparse tensors through the interpreter's tensor details.
    interpreter, _ = make_interpreter(str(root / "out" / "model.tflite"), xnnpack=False)
    decoded = [
        _decode_csr(interpreter, d)
        for d in interpreter.get_tensor_details()
        if d["sparsity_parameters"]
    ]
    assert len(decoded) == 2
    for kernel in kernels.values():  # TFLite stores FULLY_CONNECTED weights as (out, in)
        assert any(d.shape == kernel.T.shape and np.array_equal(d, kernel.T) for d in decoded)


def test_fp32_sizes_and_dense_baseline(fp32_export):
    root, _, _, report = fp32_export
    tflite = report["artifacts"]["tflite"]
    data = (root / "out" / "model.tflite").read_bytes()
    assert tflite["bytes"] == len(data)
    assert tflite["gzip_bytes"] == len(gzip.compress(data, compresslevel=9, mtime=0))
    # 80% zeros stored as CSR: well under the dense float32 file of the same architecture.
    assert tflite["dense_bytes"] > 4 * (64 * 48 + 48 * 10)
    assert tflite["ratio"] == pytest.approx(tflite["bytes"] / tflite["dense_bytes"])
    assert tflite["ratio"] < 0.6
    saved = report["artifacts"]["saved_model"]
    total = sum(
        os.path.getsize(os.path.join(r, f))
        for r, _, files in os.walk(root / "out" / "saved_model")
        for f in files
    )
    assert saved["bytes"] == total
    # A SavedModel stores variables densely: same bytes as the dense twin (up to names), but
    # its zeros compress.
    assert saved["ratio"] == pytest.approx(1.0, abs=0.02)
    assert saved["gzip_ratio"] < 0.9


def test_fp32_parity_and_saved_model_signature(fp32_export):
    root, _, stripped, report = fp32_export
    parity = report["parity"]
    assert parity["passed"] and parity["failures"] == []
    assert parity["samples"] == 256 and parity["data"].startswith("synthetic")
    for name in ("saved_model", "tflite"):
        assert parity[name]["gated"]
        assert parity[name]["top1_agreement"] == 1.0
        assert parity[name]["max_abs_diff"] < 1e-5
    # The serving signature takes the input by its keras.Input name.
    loaded = tf.saved_model.load(str(root / "out" / "saved_model"))
    x = _inputs(7)
    out = loaded.signatures["serving_default"](features=tf.constant(x))
    np.testing.assert_allclose(out["output_0"].numpy(), stripped(x).numpy(), atol=1e-5)
    rows = {r["weight"]: r for r in report["artifacts"]["saved_model"]["weights"]}
    for name, kernel in _kernels(stripped).items():
        assert rows[f"{name}/kernel"]["nonzero"] == np.count_nonzero(kernel)


def test_report_table_and_read_back_agree(fp32_export):
    root, _, _, report = fp32_export
    table = export_lib.format_export_report(report)
    assert re.search(
        r"tflite \(none, sparse\)\s+" + f"{report['artifacts']['tflite']['bytes']:,}", table
    )
    assert "hidden/kernel" in table and "parity: ok" in table
    direct = read_tflite_weights(root / "out" / "model.tflite")
    assert [r["nonzero"] for r in direct] == [
        r["nonzero"] for r in report["artifacts"]["tflite"]["weights"]
    ]


# -- quantized export -----------------------------------------------------------------------
@pytest.mark.parametrize("quantize", ["dynamic", "int8"])
def test_quantized_export_keeps_sparse_int8_weights(tmp_path, quantize):
    pruned = _pruned_mlp()
    stripped = kprune.strip(pruned)
    data = _inputs(64)
    report = export(
        pruned,
        tmp_path / "out",
        formats=("tflite",),
        quantize=quantize,
        representative_data=data if quantize == "int8" else None,
        eval_data=data,
        verbose=False,
    )
    assert sorted(os.listdir(tmp_path / "out")) == ["export_report.json", "model.tflite"]
    rows = {r["weight"]: r for r in report["artifacts"]["tflite"]["weights"]}
    hidden = rows["hidden/kernel"]
    kept = np.count_nonzero(stripped.get_layer("hidden").kernel.numpy())
    assert hidden["dtype"] == "int8" and hidden["encoding"] == "sparse"
    # Quantization may round a few tiny weights to zero, never the other way.
    assert 0.95 * kept <= hidden["nonzero"] <= kept
    tflite = report["artifacts"]["tflite"]
    assert tflite["quantize"] == quantize
    # Smaller than the dense file with the same quantization, and than dense float32 (tiny
    # models carry a few KB of fixed overhead, so the ratios are far from LeNet's).
    assert tflite["ratio"] < 0.95
    assert tflite["bytes"] < tflite["dense_fp32_bytes"] / 2
    result = report["parity"]["tflite"]
    assert not result["gated"] and report["parity"]["passed"]
    assert result["top1_agreement"] >= 0.8  # random weights and inputs: a loose sanity bound
    interpreter, _ = make_interpreter(str(tmp_path / "out" / "model.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32  # float interface kept


def test_int8_without_representative_data_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        export(_pruned_mlp(), tmp_path / "out", quantize="int8", verbose=False)
    assert os.listdir(tmp_path) == []


# -- errors and atomicity -------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"formats": ("onnx",)}, r"formats=\['onnx'\]"),
        ({"formats": ()}, "formats"),
        ({"quantize": "int4"}, "quantize='int4'"),
        ({"formats": "saved_model", "quantize": "dynamic"}, "no 'tflite'"),
        ({"min_fp32_agreement": 1.5}, "min_fp32_agreement=1.5"),
        ({"num_eval_samples": 0}, "num_eval_samples=0"),
        ({"runtime": "tpu"}, "runtime='tpu'"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export(_mlp(), tmp_path / "out", verbose=False, **kwargs)
    assert os.listdir(tmp_path) == []


def test_model_must_be_a_keras_model(tmp_path):
    with pytest.raises(TypeError, match="load_keras_model"):
        export("model.keras", tmp_path / "out")


def test_subclassed_model_without_inputs_gets_a_recipe(tmp_path):
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(3)

        def call(self, x):
            return self.fc(x)

    model = Classifier()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=r"keras.Model\(inputs, model\(inputs\)\)"):
        export(model, tmp_path / "out", verbose=False)
    assert os.listdir(tmp_path) == []
    inputs = keras.Input((4,), name="x")
    report = export(keras.Model(inputs, model(inputs)), tmp_path / "out", verbose=False)
    assert report["parity"]["passed"]
    # A subclassed part cannot be cloned: the dense baseline falls back to the same weights.
    assert report["dense_baseline"].startswith("same weights stored densely")
    assert report["artifacts"]["tflite"]["dense_bytes"] > 0


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ConversionError("converter exploded")

    monkeypatch.setattr(export_lib, "_convert_saved_model", fail)
    with pytest.raises(ConversionError, match="exploded"):
        export(_mlp(), tmp_path / "new" / "nested" / "out", verbose=False)
    assert os.listdir(tmp_path) == []  # not even the parent directories it created
    # An existing export survives a failed overwrite untouched.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous export")
    with pytest.raises(ConversionError):
        export(_mlp(), tmp_path / "out", overwrite=True, verbose=False)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_failure_after_conversion_also_cleans_up(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("interpreter crashed")

    monkeypatch.setattr(export_parity, "_run_tflite", fail)
    with pytest.raises(RuntimeError, match="interpreter crashed"):
        export(_mlp(), tmp_path / "out", compare_dense=False, verbose=False)
    assert os.listdir(tmp_path) == []


def test_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="overwrite=True"):
        export(_mlp(), out, verbose=False)
    export(_mlp(), out, formats="tflite", overwrite=True, compare_dense=False, verbose=False)
    assert sorted(os.listdir(out)) == ["export_report.json", "model.tflite"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


@keras.saving.register_keras_serializable(package="kprune_tests")
class GaussianQuantile(keras.layers.Layer):
    """Uses erfinv, which TFLite has no builtin kernel for."""

    def call(self, x):
        return keras.ops.erfinv(keras.ops.tanh(x) * 0.5)


def test_unsupported_op_names_the_layer(tmp_path):
    inputs = keras.Input((8,), name="x")
    block = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="inner"), GaussianQuantile(name="gauss")],
        name="block",
    )
    outputs = keras.layers.Dense(2, name="head")(block(keras.layers.Dense(4, name="fc")(inputs)))
    model = keras.Model(inputs, outputs, name="odd")
    with pytest.raises(ConversionError, match=r"\['Erfinv'\] in layer 'block/gauss'") as info:
        export(model, tmp_path / "out", verbose=False)
    assert info.value.layers == ["block/gauss"] and info.value.ops == ["Erfinv"]
    assert os.listdir(tmp_path) == []


def test_parity_failure_is_loud_but_keeps_the_files(tmp_path, monkeypatch):
    run_tflite = export_parity._run_tflite

    def wrong_sign(*args, **kwargs):  # flips every logit: argmax becomes argmin
        return {k: -v for k, v in run_tflite(*args, **kwargs).items()}

    monkeypatch.setattr(export_parity, "_run_tflite", wrong_sign)
    with pytest.raises(ParityError, match="tflite: top-1 agreement") as info:
        export(_pruned_mlp(), tmp_path / "out", compare_dense=False, verbose=False)
    parity = info.value.report["parity"]
    assert not parity["passed"] and parity["tflite"]["top1_agreement"] < 0.5
    assert parity["saved_model"]["top1_agreement"] == 1.0
    with open(tmp_path / "out" / "export_report.json") as f:
        assert json.load(f)["parity"]["passed"] is False


def test_compare_outputs_hand_computed():
    reference = {"logits": np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 5.0, 0.0], [1, 2, 3]])}
    outputs = {"logits": np.array([[0.0, 1.0, 2.5], [0.0, 3.0, 0.0], [0.0, 5.0, 0.0], [1, 2, 3]])}
    result = compare_outputs(reference, outputs)
    assert result["top1_agreement"] == 0.75  # only the second sample changes its argmax
    assert result["max_abs_diff"] == 3.0
    single = compare_outputs({"p": np.array([[0.2], [0.9]])}, {"p": np.array([[0.25], [0.9]])})
    assert single["top1_agreement"] is None
    assert single["max_abs_diff"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="names"):
        compare_outputs({"a": np.zeros((1, 2))}, {"b": np.zeros((1, 2))})


def test_multi_input_dict_output_model(tmp_path):
    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    block = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="inner")], name="block")
    h = block(keras.layers.Dense(8, name="fc")(keras.layers.Concatenate()([a, b])))
    model = keras.Model(
        [a, b], {"scores": keras.layers.Dense(3)(h), "gate": keras.layers.Dense(1)(h)}
    )
    rng = np.random.default_rng(0)
    batches = tf.data.Dataset.from_tensor_slices(
        ({"a": rng.random((40, 6), "float32"), "b": rng.random((40, 4), "float32")}, np.zeros(40))
    ).batch(16)
    report = export(model, tmp_path / "out", eval_data=batches, verbose=False)
    parity = report["parity"]
    assert parity["samples"] == 40 and parity["data"] == "eval_data"
    for name in ("saved_model", "tflite"):
        outputs = parity[name]["outputs"]
        assert sorted(outputs) == ["gate", "scores"]
        assert outputs["gate"]["top1_agreement"] is None  # one unit: checked by difference
        assert outputs["scores"]["top1_agreement"] == 1.0
        assert outputs["gate"]["max_abs_diff"] < 1e-5
    saved = [r["weight"] for r in report["artifacts"]["saved_model"]["weights"]]
    assert "block/inner/kernel" in saved


# -- input data forms -----------------------------------------------------------------------
def test_take_samples_accepts_the_documented_forms():
    spec = export_inputs._InputSpec(_mlp())
    x = _inputs(10)
    take = export_inputs._take_samples
    assert np.array_equal(take(x, 4, spec, "d")["features"], x[:4])
    assert np.array_equal(take({"features": x}, 20, spec, "d")["features"], x)
    pairs = tf.data.Dataset.from_tensor_slices((x, np.arange(10))).batch(3)
    assert np.array_equal(take(pairs, 7, spec, "d")["features"], x[:7])
    singles = tf.data.Dataset.from_tensor_slices(x)  # unbatched samples
    assert take(singles, 5, spec, "d")["features"].shape == (5, 64)
    generator = ((row, 0) for row in x)
    assert take(generator, 2, spec, "d")["features"].shape == (2, 64)
    with pytest.raises(ValueError, match=r"input 'features' expects samples of shape \(64,\)"):
        take(np.zeros((3, 63)), 3, spec, "eval_data")
    with pytest.raises(TypeError, match="representative_data must be"):
        take(42, 3, spec, "representative_data")


# -- interpreters ---------------------------------------------------------------------------
def test_interpreter_falls_back_to_tf_lite_without_litert(monkeypatch):
    flatbuffer = convert_to_tflite(_mlp())
    x = _inputs(3)
    expected = _mlp()(x).numpy()
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import now fails
    interpreter, info = make_interpreter(flatbuffer)
    assert info["runtime"].startswith("tf.lite.Interpreter")
    out = interpreter.get_signature_runner("serving_default")(features=x)["output_0"]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(ImportError, match=r"kprune\[litert\]"):
        make_interpreter(flatbuffer, runtime="litert")


def test_interpreter_retries_without_xnnpack(monkeypatch):
    real_class, resolvers, _ = export_parity._interpreter_module("auto")

    class RefusingXnnpack(real_class):
        def __init__(self, *args, experimental_op_resolver_type, **kwargs):
            super().__init__(
                *args, experimental_op_resolver_type=experimental_op_resolver_type, **kwargs
            )
            self._refuse = experimental_op_resolver_type == resolvers.AUTO

        def allocate_tensors(self):
            if self._refuse:
                raise RuntimeError("failed to delegate FULLY_CONNECTED node #1")
            return super().allocate_tensors()

    monkeypatch.setattr(
        export_parity, "_interpreter_module", lambda runtime: (RefusingXnnpack, resolvers, "fake")
    )
    interpreter, info = make_interpreter(convert_to_tflite(_mlp()))
    assert info["xnnpack"] is False and "XNNPACK could not prepare" in info["note"]
    out = interpreter.get_signature_runner("serving_default")(features=_inputs(2))["output_0"]
    np.testing.assert_allclose(out, _mlp()(_inputs(2)).numpy(), atol=1e-5)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("ai_edge_litert") is None,
    reason="ai-edge-litert not installed",
)
def test_litert_is_used_when_installed():
    _, info = make_interpreter(convert_to_tflite(_mlp()))
    assert info["runtime"].startswith("ai_edge_litert")


def test_verbose_logs_the_table_and_prints_nothing(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="kprune.export"):
        export(_mlp(), tmp_path / "out", formats="tflite", compare_dense=False)
    assert capsys.readouterr().out == ""  # library code does not print
    logged = [r.getMessage() for r in caplog.records if r.name == "kprune.export"]
    assert len(logged) == 1 and "parity: ok" in logged[0] and "tflite (none, sparse)" in logged[0]


# -- command line ---------------------------------------------------------------------------
def _cli(args, capsys):
    fv = flags.FlagValues()
    export_cli.define_flags(fv)
    fv(["export", *args])
    status = export_cli.run(fv)
    return status, capsys.readouterr()


@pytest.fixture(scope="module")
def saved_pruned(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "pruned.keras"
    _pruned_mlp().save(path)
    return path


def test_cli_exports_a_saved_pruned_model(tmp_path, saved_pruned, capsys):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, features=_inputs(40))
    status, captured = _cli(
        [
            f"--model={saved_pruned}",
            f"--out={tmp_path / 'out'}",
            "--formats=tflite",
            "--quantize=int8",
            f"--data_npz={npz}",
            "--nocompare_dense",
        ],
        capsys,
    )
    assert status == 0, captured.err
    with open(tmp_path / "out" / "export_report.json") as f:
        report = json.load(f)
    assert report["quantize"] == "int8" and report["parity"]["samples"] == 40
    hidden = next(
        r for r in report["artifacts"]["tflite"]["weights"] if r["weight"] == "hidden/kernel"
    )
    assert hidden["encoding"] == "sparse" and hidden["dtype"] == "int8"
    assert "parity: ok" in captured.out


def test_cli_errors(tmp_path, saved_pruned, capsys, monkeypatch):
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    status, captured = _cli([f"--model={text}", f"--out={tmp_path / 'o1'}"], capsys)
    assert status == export_cli.EXIT_USAGE and "is not a Keras model file" in captured.err

    saved_model_dir = tmp_path / "sm"
    _mlp().export(str(saved_model_dir), verbose=False)
    status, captured = _cli([f"--model={saved_model_dir}", f"--out={tmp_path / 'o2'}"], capsys)
    assert status == export_cli.EXIT_USAGE and "SavedModel directory" in captured.err

    status, captured = _cli(
        [f"--model={saved_pruned}", f"--out={tmp_path / 'o3'}", "--quantize=int8"], capsys
    )
    assert status == export_cli.EXIT_USAGE and "representative_data" in captured.err

    # A tfds dataset that is not prepared offline: a clear error naming --data_dir.
    empty = tmp_path / "tfds"
    empty.mkdir()
    status, captured = _cli(
        [
            f"--model={saved_pruned}",
            f"--out={tmp_path / 'o4'}",
            "--dataset=mnist",
            f"--data_dir={empty}",
        ],
        capsys,
    )
    assert status == export_cli.EXIT_USAGE and "--data_dir" in captured.err
    assert sorted(os.listdir(tmp_path)) == ["notes.keras", "sm", "tfds"]


def test_cli_parity_failure_exit_status(tmp_path, saved_pruned, capsys, monkeypatch):
    monkeypatch.setattr(
        export_parity, "compare_outputs", lambda r, o: {"max_abs_diff": 1.0, "top1_agreement": 0.5}
    )
    status, captured = _cli(
        [f"--model={saved_pruned}", f"--out={tmp_path / 'out'}", "--nocompare_dense"], capsys
    )
    assert status == export_cli.EXIT_PARITY and "disagrees" in captured.err
    assert (tmp_path / "out" / "model.tflite").exists()


def test_cli_docstring_examples_run():
    # pytest's --doctest-modules never collects __main__.py files, so run its examples here.
    result = doctest.testmod(export_cli)
    assert result.failed == 0 and result.attempted >= 5


def test_python_m_kprune_export(tmp_path, saved_pruned):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kprune.export",
            f"--model={saved_pruned}",
            f"--out={tmp_path / 'out'}",
            "--formats=saved_model,tflite",
            "--eval_samples=32",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity: ok" in result.stdout
    assert sorted(os.listdir(tmp_path / "out")) == [
        "export_report.json",
        "model.tflite",
        "saved_model",
    ]


def test_importing_is_cheap_and_defines_no_flags():
    code = (
        "import sys, kprune\n"
        "assert 'kprune.export' not in sys.modules\n"
        "from kprune.export import export\n"
        "from absl import flags\n"
        "assert 'quantize' not in flags.FLAGS and 'model' not in flags.FLAGS\n"
        "assert 'ai_edge_litert' not in sys.modules\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


# -- README ---------------------------------------------------------------------------------
def test_readme_export_example_runs(tmp_path, monkeypatch):
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    marker = "<!-- export: tests/test_export.py runs this block as written -->"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    with open(tmp_path / "lenet_export" / "export_report.json") as f:
        report = json.load(f)
    assert report["parity"]["passed"] and report["artifacts"]["tflite"]["ratio"] < 0.25


# -- benchmark script -----------------------------------------------------------------------
@pytest.mark.slow
def test_bench_tflite_quick(tmp_path):
    pytest.importorskip("kprune.models")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "tools/bench_tflite.py", "--quick", f"--json={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        bench = json.load(f)
    assert {"lenet300_100", "mobilenet_v2", "vgg_like"} <= set(bench["models"])
