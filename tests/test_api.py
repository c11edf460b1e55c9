"""prune / strip / get_masks / set_masks / sparsity_report, and every user error."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kprune
from kprune.schedules import ConstantSparsity, LinearSparsity
from kprune.workflows import training


def small_cnn():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="cnn")


def nested_model():
    encoder = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(16, activation="relu", name="enc_fc")],
        name="encoder",
    )
    inputs = keras.Input((10,))
    outputs = keras.layers.Dense(2, name="head")(encoder(inputs))
    return keras.Model(inputs, outputs, name="outer")


def test_prune_scope_defaults_to_global_and_layer_scope_is_per_tensor():
    # Defaults agree across prune(), PruningWrapper, masks_at_init and the CLI: "global".
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, name="a"), keras.layers.Dense(4, name="b")]
    )
    model.get_layer("a").kernel.assign(np.full((8, 16), 10.0))  # far above every weight of b
    pruned = kprune.prune(model, ConstantSparsity(0.5))
    assert {w.scope for w in kprune.api.pruning_wrappers(pruned)} == {"global"}
    assert kprune.PruningWrapper(keras.layers.Dense(2)).scope == "global"
    layer_wise = kprune.prune(model, ConstantSparsity(0.5), scope="layer")
    assert {w.scope for w in kprune.api.pruning_wrappers(layer_wise)} == {"layer"}
    x = np.ones((2, 8), "float32")
    for net in (pruned, layer_wise):
        net.compile("sgd", "mse")
        net.fit(x, np.zeros((2, 4)), epochs=1, verbose=0, callbacks=[kprune.PruningCallback()])
    zeros = {k: int((m == 0).sum()) for k, m in kprune.get_masks(pruned).items()}
    # One threshold: 96 of all 192 go, all 64 small weights of b first, then 32 of a.
    assert zeros == {"a/kernel": 32, "b/kernel": 64}
    layer_zeros = {k: int((m == 0).sum()) for k, m in kprune.get_masks(layer_wise).items()}
    assert layer_zeros == {"a/kernel": 64, "b/kernel": 32}


def test_prune_keeps_weights_and_predictions():
    model = small_cnn()
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32")
    pruned = kprune.prune(model, ConstantSparsity(0.5))
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert [
        type(layer).__name__ for layer in pruned.layers if "Wrapper" in type(layer).__name__
    ] == [
        "PruningWrapper",
        "PruningWrapper",
    ]
    # The original model is untouched (a copy is pruned, not the original).
    assert not kprune.api.pruning_wrappers(model)
    assert pruned.get_layer("conv").layer is not model.get_layer("conv")


def test_nested_models_are_pruned_and_paths_are_stable(tmp_path):
    model = nested_model()
    pruned = kprune.prune(model, ConstantSparsity(0.5))
    assert list(kprune.get_masks(pruned)) == ["encoder/enc_fc/kernel", "head/kernel"]
    x = np.random.default_rng(0).normal(size=(3, 10)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    pruned.save(tmp_path / "nested.keras")
    reloaded = keras.models.load_model(tmp_path / "nested.keras")
    assert list(kprune.get_masks(reloaded)) == ["encoder/enc_fc/kernel", "head/kernel"]


def test_exclude_keeps_layers_dense():
    pruned = kprune.prune(small_cnn(), ConstantSparsity(0.5), exclude="head")
    assert isinstance(pruned.get_layer("head"), keras.layers.Dense)
    assert list(kprune.get_masks(pruned)) == ["conv/kernel"]
    report = kprune.sparsity_report(pruned)
    assert [row["wrapped"] for row in report["layers"]] == [True, False]


def test_strip_bakes_zeros_and_matches_predictions(tmp_path):
    x = np.random.default_rng(1).normal(size=(16, 12, 12, 3)).astype("float32")
    y = np.arange(16) % 3
    pruned = kprune.prune(small_cnn(), LinearSparsity(0.0, 0.7, 0, 6, frequency=2))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[kprune.PruningCallback()])
    stripped = kprune.strip(pruned)
    assert not kprune.api.pruning_wrappers(stripped)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    before, after = kprune.sparsity_report(pruned), kprune.sparsity_report(stripped)
    assert before["prunable"] == after["prunable"]
    assert before["all_params"] == after["all_params"]
    assert after["pruned"] is None
    # The stripped file loads without kprune objects.
    stripped.save(tmp_path / "plain.keras")
    config = keras.models.load_model(tmp_path / "plain.keras").get_config()
    assert "kprune" not in str(config)


def test_sparsity_report_counts():
    model = kprune.prune(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="fc")]), None
    )
    mask = np.ones((4, 5), "float32")
    mask[0, :3] = 0
    kprune.set_masks(model, {"fc/kernel": mask})
    report = kprune.sparsity_report(model)
    assert report["layers"][0] == {
        "layer": "fc",
        "weight": "fc/kernel",
        "shape": [4, 5],
        "total": 20,
        "nonzero": 17,
        "sparsity": pytest.approx(0.15),
        "wrapped": True,
    }
    assert report["pruned"] == {"total": 20, "nonzero": 17, "sparsity": pytest.approx(0.15)}
    # All params: 20 kernel + 5 bias (bias starts at zero), masks excluded.
    assert report["all_params"]["total"] == 25 and report["all_params"]["nonzero"] == 17
    text = kprune.api.format_sparsity_report(report)
    assert "fc/kernel" in text and "15.00%" in text


def test_set_masks_validates():
    model = kprune.prune(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="fc")]), None
    )
    with pytest.raises(ValueError, match="Unknown mask paths"):
        kprune.set_masks(model, {"nope/kernel": np.ones((2, 1))})
    with pytest.raises(ValueError, match="shape"):
        kprune.set_masks(model, {"fc/kernel": np.ones((3, 1))})
    with pytest.raises(ValueError, match="only 0 and 1"):
        kprune.set_masks(model, {"fc/kernel": np.full((2, 1), 0.5)})


@pytest.mark.integration  # ~40 s on a 2-core machine
def test_mobilenet_v2_pruned_trained_and_stripped():
    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4
    )
    pruned = kprune.prune(base, ConstantSparsity(0.6), scope="global")
    assert len(kprune.api.pruning_wrappers(pruned)) == 53  # 52 conv kernels + the classifier
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    pruned.compile("sgd", "sparse_categorical_crossentropy", jit_compile=False)
    pruned.fit(x, np.arange(8) % 4, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()])
    report = kprune.sparsity_report(pruned)["pruned"]
    assert report["total"] - report["nonzero"] == round(0.6 * report["total"])
    stripped = kprune.strip(pruned)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_subclassed_model_error_points_to_wrapper():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match=r"kprune\.PruningWrapper\(keras\.layers\.Dense"):
        kprune.prune(net, ConstantSparsity(0.5))
    with pytest.raises(TypeError, match="subclassed"):
        kprune.strip(net)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: kprune.prune("model", ConstantSparsity(0.5)), TypeError, "keras.Model"),
        (lambda: kprune.prune(small_cnn(), 0.5), TypeError, "PruningSchedule"),
        (
            lambda: kprune.prune(small_cnn(), ConstantSparsity(0.5), scope="net"),
            ValueError,
            "scope",
        ),
        (
            lambda: kprune.prune(small_cnn(), ConstantSparsity(0.5), exclude=["conv", "cnv"]),
            ValueError,
            r"\['cnv'\].*Prunable layers are: \['conv', 'head'\]",
        ),
        (
            lambda: kprune.prune(small_cnn(), ConstantSparsity(0.5), exclude=["conv", "head"]),
            ValueError,
            "no prunable layer outside",
        ),
        (
            lambda: kprune.prune(
                keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()]),
                ConstantSparsity(0.5),
            ),
            ValueError,
            "no prunable layer",
        ),
        (
            lambda: kprune.prune(keras.Sequential([keras.layers.Dense(2)]), ConstantSparsity(0.5)),
            ValueError,
            "not built",
        ),
        (
            lambda: kprune.prune(
                kprune.prune(small_cnn(), ConstantSparsity(0.5)), ConstantSparsity(0.5)
            ),
            ValueError,
            "already contains PruningWrapper",
        ),
        (
            lambda: kprune.prune(
                keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, lora_rank=1)]),
                ConstantSparsity(0.5),
            ),
            ValueError,
            "LoRA",
        ),
        (lambda: kprune.get_masks(small_cnn()), ValueError, "no PruningWrapper"),
        (
            lambda: kprune.bind_optimizer(small_cnn(), keras.optimizers.SGD()),
            ValueError,
            "no PruningWrapper",
        ),
        (
            lambda: kprune.bind_optimizer(kprune.prune(small_cnn(), ConstantSparsity(0.5)), "sgd"),
            TypeError,
            "Optimizer",
        ),
    ],
)
def test_user_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_quantized_model_is_refused():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        kprune.prune(model, ConstantSparsity(0.5))


def test_global_wrappers_with_different_schedules_are_refused():
    inputs = keras.Input((4,))
    a = kprune.PruningWrapper(keras.layers.Dense(3), ConstantSparsity(0.5), scope="global")
    b = kprune.PruningWrapper(keras.layers.Dense(2), ConstantSparsity(0.7), scope="global")
    model = keras.Model(inputs, b(a(inputs)))
    with pytest.raises(ValueError, match="share one schedule"):
        kprune.bind_optimizer(model, keras.optimizers.SGD())


def test_tf_keras_style_object_is_named():
    class FakeLegacy:
        pass

    FakeLegacy.__module__ = "tf_keras.src.engine.training"
    with pytest.raises(TypeError, match="tf_keras"):
        kprune.prune(FakeLegacy(), ConstantSparsity(0.5))


def test_prune_and_strip_return_uncompiled_copies_that_load_without_kprune(tmp_path):
    model = small_cnn()
    model.compile("sgd", "mse")
    pruned = kprune.prune(model, ConstantSparsity(0.5))
    assert not pruned.compiled and model.compiled
    pruned.compile(training.make_optimizer(training.TrainConfig(), 10), "mse")
    stripped = kprune.strip(pruned)
    assert not stripped.compiled and pruned.compiled
    stripped.save(tmp_path / "plain.keras")
    # A fresh interpreter that never imports kprune loads it.
    code = (
        "import sys, keras; m = keras.models.load_model(sys.argv[1]); "
        "assert not any(k.startswith('kprune') for k in sys.modules); print(m.count_params())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plain.keras")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == stripped.count_params()


def test_pruned_positions_stay_zero_even_when_weights_are_nan():
    model = kprune.prune(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")]), None
    )
    mask = np.ones((4, 3), "float32")
    mask[0] = 0
    kprune.set_masks(model, {"fc/kernel": mask})
    kernel = model.get_layer("fc").layer.kernel
    kernel.assign(np.full((4, 3), np.nan, "float32"))
    kprune.api.apply_masks(model)
    assert np.all(kernel.numpy()[0] == 0.0) and np.all(np.isnan(kernel.numpy()[1:]))
    report = kprune.sparsity_report(model)["pruned"]
    assert report["total"] - report["nonzero"] == 3
    assert np.all(kprune.strip(model).get_layer("fc").kernel.numpy()[0] == 0.0)
