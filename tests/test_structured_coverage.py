"""Channel pruning on the model zoo and on keras.applications: prune, one mask update, shrink.

Every model is pruned by channel at 50% with one mask update (the L1 criterion), shrunk, and
checked: the shrunk model's outputs equal the masked model's to float tolerance, it has fewer
parameters, every channel group lost exactly round(0.5 * size) channels, and named layers have
the hand-computed widths. BatchNorm statistics are randomized first, so a slice taken from the
wrong channel changes the outputs. The heavy models are `slow`:

    python -m pytest -q -m slow tests/test_structured_coverage.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import kprune  # noqa: E402
from kprune.export import export  # noqa: E402
from kprune.masks import bind_optimizer  # noqa: E402
from kprune.models import build_model  # noqa: E402
from kprune.structured.graph import trace_channels  # noqa: E402
from kprune.structured.shrink import channel_keep  # noqa: E402

APPS = keras.applications


def _randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0] if layer.gamma is not None else layer.moving_mean.shape[0]
            values = {
                "gamma": rng.uniform(0.5, 1.5, n),
                "beta": rng.normal(0.0, 0.1, n),
                "moving_mean": rng.normal(0.0, 0.1, n),
                "moving_variance": rng.uniform(0.5, 1.5, n),
            }
            for name, value in values.items():
                variable = getattr(layer, name, None)
                if variable is not None:
                    variable.assign(value.astype("float32"))


def _prune_and_shrink(model, x, sparsity=0.5):
    """Masks from one L1 update at `sparsity`, then shrink; returns what the checks need."""
    _randomize_batchnorm(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # untraceable layers: asserted below
        pruned = kprune.prune(model, kprune.ConstantSparsity(sparsity), granularity="channel")
    (group,) = bind_optimizer(pruned, keras.optimizers.SGD())
    group.update(tf.constant(sparsity, tf.float64))
    trace = trace_channels(pruned)
    keep = channel_keep(pruned, trace)
    small = kprune.shrink(pruned)
    masked = np.asarray(pruned(x, training=False))
    shrunk = np.asarray(small(x, training=False))
    # Removed channels contribute exact zeros; only the order of float sums differs.
    scale = float(np.max(np.abs(masked)))
    assert scale > 1e-3, scale  # outputs large enough for the comparison to mean something
    np.testing.assert_allclose(shrunk, masked, rtol=1e-4, atol=1e-4 * scale)
    assert small.count_params() < model.count_params()
    assert not any(isinstance(layer, kprune.PruningWrapper) for layer in small._flatten_layers())
    removed = {g.name: int((~keep[g.classes]).sum()) for g in trace.groups}
    assert removed == {g.name: round(sparsity * g.size) for g in trace.groups}
    return pruned, small, trace


def _images(shape, n=4, scale=1.0):
    return (np.random.default_rng(1).random((n, *shape), dtype="float32") * scale).astype("float32")


# -- default run: small models ----------------------------------------------------------------
def test_lenet5_shrinks_to_the_hand_computed_size():
    keras.utils.set_random_seed(0)
    model = build_model("lenet5_caffe", (16, 16, 1), 10)
    _, small, trace = _prune_and_shrink(model, _images((16, 16, 1)))
    assert trace.blocked == []
    widths = [small.get_layer(n) for n in ("conv1", "conv2", "fc1", "logits")]
    assert [widths[0].filters, widths[1].filters, widths[2].units, widths[3].units] == [
        10,
        25,
        250,
        10,
    ]
    # 16 -> conv 12 -> pool 6 -> conv 2 -> pool 1: flatten holds 25 features.
    # conv1 5*5*1*10 + 10, conv2 5*5*10*25 + 25, fc1 25*250 + 250, logits 250*10 + 10.
    assert small.count_params() == 260 + 6275 + 6500 + 2510 == 15545


def test_resnet20_projection_prunes_whole_residual_stages():
    keras.utils.set_random_seed(0)
    model = build_model("resnet20", (8, 8, 3), 10, shortcut="projection")
    _, small, trace = _prune_and_shrink(model, _images((8, 8, 3)))
    assert trace.blocked == []
    # One group per residual stage (stem/shortcut convs and every conv2 of the stage joined by
    # the Adds) and one per block's conv1: 3 + 9 groups.
    stages = [g for g in trace.groups if len(g.producers) > 1]
    assert [(g.size, len(g.producers)) for g in stages] == [(16, 4), (32, 4), (64, 4)]
    assert len(trace.groups) == 12
    for name, filters in [
        ("stem_conv", 8),
        ("stage1_block3_conv2", 8),
        ("stage2_block1_shortcut_conv", 16),
        ("stage2_block2_conv1", 16),
        ("stage3_block3_conv2", 32),
    ]:
        assert small.get_layer(name).filters == filters, name
    assert small.get_layer("logits").units == 10


def test_resnet20_zero_pad_shortcut_keeps_the_padded_stages_dense():
    # The option-A shortcut pads channels through a 5-D Reshape the tracer cannot follow: the
    # stage-1 residual channels reach it and stay dense, and the padded stages 2 and 3 join
    # channels it made (pinned) through their Adds. The convs inside the blocks are pruned.
    keras.utils.set_random_seed(0)
    model = build_model("resnet20", (8, 8, 3), 10)
    _, small, trace = _prune_and_shrink(model, _images((8, 8, 3)))
    assert [(b.layer, b.type) for b in trace.blocked] == [("stage2_block1_shortcut_5d", "Reshape")]
    assert [g.producers for g in trace.groups] == [
        (f"stage{s}_block{b}_conv1",) for s in (1, 2, 3) for b in (1, 2, 3)
    ]
    assert small.get_layer("stem_conv").filters == 16  # pinned: reaches the padding
    assert small.get_layer("stage3_block1_conv2").filters == 64
    assert small.get_layer("stage1_block1_conv1").filters == 8
    assert small.get_layer("stage3_block3_conv1").filters == 32


def test_lenet5_exports_to_tflite_with_parity(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("lenet5_caffe", (16, 16, 1), 10)
    x = _images((16, 16, 1), n=32)
    pruned, small, _ = _prune_and_shrink(model, x[:4])
    report = export(
        pruned, tmp_path / "out", formats="tflite", eval_data=x, compare_dense=False, verbose=False
    )
    assert report["parity"]["passed"] and report["parity"]["samples"] == 32
    assert report["parity"]["tflite"]["max_abs_diff"] < 1e-4
    assert report["shrink"]["params"] == {"dense": 56080, "shrunk": 15545, "ratio": 0.2772}
    shapes = {r["weight"]: r["shape"] for r in report["artifacts"]["tflite"]["weights"]}
    assert shapes["conv2/kernel"] == [25, 5, 5, 10] and shapes["fc1/kernel"] == [250, 25]


# -- slow: the big zoo models and keras.applications -----------------------------------------
@pytest.mark.slow
def test_vgg_like_shrinks():
    keras.utils.set_random_seed(0)
    model = build_model("vgg_like", (32, 32, 3), 10)
    _, small, trace = _prune_and_shrink(model, _images((32, 32, 3)))
    assert trace.blocked == [] and len(trace.groups) == 14  # 13 convs and fc1
    assert small.get_layer("block1_conv1").filters == 32
    assert small.get_layer("block5_conv3").filters == 256
    assert small.get_layer("fc1").units == 256
    # The Flatten after a 1x1 map: fc1 reads 256 features.
    assert tuple(small.get_layer("fc1").kernel.shape) == (256, 256)


@pytest.mark.slow
def test_vgg19_shrinks():
    keras.utils.set_random_seed(0)
    model = build_model("vgg19", (32, 32, 3), 10)
    _, small, trace = _prune_and_shrink(model, _images((32, 32, 3)))
    assert trace.blocked == [] and len(trace.groups) == 16
    assert small.get_layer("block1_conv1").filters == 32
    assert small.get_layer("block5_conv4").filters == 256


@pytest.mark.slow
def test_resnet18_shrinks():
    keras.utils.set_random_seed(0)
    model = build_model("resnet18", (16, 16, 3), 10)
    _, small, trace = _prune_and_shrink(model, _images((16, 16, 3)))
    assert trace.blocked == []
    stages = sorted(g.size for g in trace.groups if len(g.producers) > 1)
    assert stages == [64, 128, 256, 512]
    assert small.get_layer("stem_conv").filters == 32
    assert small.get_layer("stage4_block2_conv2").filters == 256


@pytest.mark.slow
def test_resnet50_shrinks():
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", (16, 16, 3), 10)
    _, small, trace = _prune_and_shrink(model, _images((16, 16, 3)))
    assert trace.blocked == []
    stages = sorted(g.size for g in trace.groups if len(g.producers) > 1)
    assert stages == [256, 512, 1024, 2048]
    assert small.get_layer("stage4_block3_conv3").filters == 1024
    assert small.get_layer("stage1_block1_conv1").filters == 32


APPLICATIONS = {
    "MobileNetV2": lambda: APPS.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=5, classifier_activation=None
    ),
    "ResNet50": lambda: APPS.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None
    ),
    "EfficientNetB0": lambda: APPS.EfficientNetB0(
        weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None
    ),
    "DenseNet121": lambda: APPS.DenseNet121(
        weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_application_shrinks(name):
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MobileNetV2: not a 96-224 input size
        model = APPLICATIONS[name]()
    _, small, trace = _prune_and_shrink(model, _images((32, 32, 3), scale=255.0))
    assert trace.blocked == []
    assert small.count_params() < model.count_params() / 2
    assert small.get_layer("predictions").units == 5  # outputs are never pruned
