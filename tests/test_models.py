"""Model zoo: parameter counts against the published numbers, shapes, names, shortcuts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import kprune  # noqa: E402
from kprune import models  # noqa: E402


def trainable_count(model):
    """PyTorch-style parameter count: trainable variables only (no BatchNorm statistics)."""
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def conv_params(layers, in_ch, kernel=3, bias=False):
    """Independent count for a chain of convolutions `in_ch -> layers[0] -> layers[1] ...`."""
    total = 0
    for out_ch in layers:
        total += kernel * kernel * in_ch * out_ch + (out_ch if bias else 0)
        in_ch = out_ch
    return total


def reference_counts():
    """Exact trainable counts of the reference architectures, computed by hand (CIFAR-10)."""
    bn = 2  # scale and offset per channel
    vgg_d = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    vgg_e = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
    vgg_like = conv_params(vgg_d, 3, bias=True) + bn * sum(vgg_d)
    vgg_like += 512 * 512 + 512 + bn * 512 + 512 * 10 + 10
    vgg19 = conv_params(vgg_e, 3, bias=True) + bn * sum(vgg_e) + 512 * 10 + 10

    def basic(c_in, c_out, projection):
        n = conv_params([c_out, c_out], c_in) + 2 * bn * c_out
        return n + (c_in * c_out + bn * c_out if projection else 0)

    def bottleneck(c_in, width, projection):
        out = 4 * width
        n = c_in * width + 9 * width * width + width * out + bn * (2 * width + out)
        return n + (c_in * out + bn * out if projection else 0)

    resnet18 = 27 * 64 + bn * 64 + 512 * 10 + 10
    c_in = 64
    for c in (64, 128, 256, 512):
        resnet18 += basic(c_in, c, c_in != c) + basic(c, c, False)
        c_in = c
    resnet50 = 27 * 64 + bn * 64 + 2048 * 10 + 10
    c_in = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for i in range(blocks):
            resnet50 += bottleneck(c_in, width, i == 0)
            c_in = 4 * width

    def cifar_resnet(n):
        total = 27 * 16 + bn * 16 + 64 * 10 + 10
        c_in = 16
        for c in (16, 32, 64):
            for _ in range(n):
                total += basic(c_in, c, False)  # option A shortcuts have no parameters
                c_in = c
        return total

    return {
        "lenet300_100": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
        "lenet5_caffe": 25 * 20 + 20 + 25 * 20 * 50 + 50 + 800 * 500 + 500 + 500 * 10 + 10,
        "vgg_like": vgg_like,
        "vgg19": vgg19,
        "resnet18": resnet18,
        "resnet50": resnet50,
        "resnet20": cifar_resnet(3),
        "resnet32": cifar_resnet(5),
    }


# Published counts, in the precision the sources give them. Tolerance: half a unit of the last
# published digit (e.g. 11.2M covers 11.15M-11.25M), since that is all a rounded figure says;
# the LeNets are published exactly (Han et al. 2015; SNIP) and must match exactly.
PUBLISHED = {
    "lenet300_100": (266_610, 0),  # exact
    "lenet5_caffe": (431_080, 0),  # exact
    "vgg_like": (15.0e6, 0.05e6),  # SNIP Table 2: 15.0m (their count: no BN scale/offset)
    "vgg19": (20.0e6, 0.05e6),  # GraSP: VGG-19 ~20.0M
    "resnet18": (11.2e6, 0.05e6),  # CIFAR ResNet-18: 11.2M
    "resnet50": (23.5e6, 0.05e6),  # CIFAR ResNet-50: 23.5M
    "resnet20": (0.27e6, 0.005e6),  # He et al. 2016, Table 6: 0.27M
    "resnet32": (0.46e6, 0.005e6),  # He et al. 2016, Table 6: 0.46M
}


def input_for(name):
    return (28, 28, 1) if name.startswith("lenet") else (32, 32, 3)


@pytest.fixture(scope="module")
def built():
    keras.backend.clear_session()
    return {name: models.build_model(name, input_for(name), 10) for name in models.MODEL_NAMES}


def test_model_names_are_the_documented_zoo():
    assert set(models.MODEL_NAMES) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_reference_and_published_number(built, name):
    model = built[name]
    count = trainable_count(model)
    assert count == reference_counts()[name]
    published, tolerance = PUBLISHED[name]
    if name == "vgg_like":  # SNIP's count leaves out BatchNorm's scale and offset
        count = sum(
            int(np.prod(v.shape))
            for layer in model.layers
            if not isinstance(layer, keras.layers.BatchNormalization)
            for v in layer.trainable_weights
        )
    assert abs(count - published) <= tolerance, (name, count, published)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_models_output_logits_for_the_dataset_shape(built, name):
    model = built[name]
    assert model.output_shape == (None, 10)
    assert model.input_shape == (None, *input_for(name))
    assert model.layers[-1].name == "logits"
    assert model.layers[-1].activation is keras.activations.linear
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))


def test_class_count_and_input_shape_come_from_arguments():
    model = models.build_model("resnet20", (16, 16, 3), 100)
    assert model.output_shape == (None, 100) and model.input_shape == (None, 16, 16, 3)
    out = models.lenet300_100((8, 8, 1), 10)(np.zeros((2, 8, 8, 1), "float32"))
    assert tuple(out.shape) == (2, 10)


def test_small_models_run_and_prune_every_conv_and_dense():
    model = models.resnet20((32, 32, 3), 10)
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5))
    wrapped = len(kprune.api.pruning_wrappers(pruned))
    convs_and_dense = sum(
        isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) for layer in model.layers
    )
    assert wrapped == convs_and_dense == 20  # 19 convolutions + the classifier
    assert tuple(pruned(np.zeros((1, 32, 32, 3), "float32")).shape) == (1, 10)


def test_zero_pad_shortcut_subsamples_and_pads_channels_with_zeros():
    model = models.resnet20((8, 8, 3), 10)
    block_input = model.get_layer("stage1_block3_out").output
    shortcut = model.get_layer("stage2_block1_shortcut_4d").output
    probe = keras.Model(model.input, [block_input, shortcut])
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    before, after = (np.asarray(t) for t in probe(x))
    expected = np.zeros((2, 4, 4, 32), "float32")
    expected[..., 8:24] = before[:, ::2, ::2, :]  # 16 channels padded by 8 on each side
    np.testing.assert_array_equal(after, expected)


def test_projection_shortcut_option_matches_open_lth_count():
    model = models.resnet20((32, 32, 3), 10, shortcut="projection")
    # Two 1x1 projections with BatchNorm: 16*32 + 2*32 and 32*64 + 2*64.
    assert trainable_count(model) == reference_counts()["resnet20"] + 16 * 32 + 64 + 32 * 64 + 128
    with pytest.raises(ValueError, match="shortcut"):
        models.resnet20((32, 32, 3), 10, shortcut="B")


def test_stripped_zoo_model_reloads_without_kprune_objects(tmp_path):
    model = models.resnet20((8, 8, 3), 10)
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5))
    path = tmp_path / "m.keras"
    kprune.strip(pruned).save(path)
    reloaded = keras.saving.load_model(path, custom_objects={}, safe_mode=True)
    assert not any("kprune" in type(layer).__module__ for layer in reloaded.layers)
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_allclose(reloaded(x), kprune.strip(pruned)(x), rtol=1e-5, atol=1e-6)


def test_keras_applications_by_name_give_logits():
    model = models.build_model("MobileNetV2", (32, 32, 3), 7)
    assert model.output_shape == (None, 7)
    assert model.layers[-1].activation is keras.activations.linear
    assert "MobileNetV2" in models.keras_application_names()


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        models.build_model("resnet19", (32, 32, 3), 10)
    for name in models.MODEL_NAMES:
        assert name in str(err.value)
    assert "keras.applications" in str(err.value)


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("lenet5_caffe", (8, 8, 1), "16x16"),
        ("vgg19", (28, 28, 1), "32x32"),
        ("resnet18", (64,), "height, width"),
        ("MobileNetV2", (8, 8), "cannot be built"),
    ],
)
def test_shapes_a_model_cannot_take_are_refused(name, shape, match):
    with pytest.raises(ValueError, match=match):
        models.build_model(name, shape, 10)


def test_bad_class_count_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        models.build_model("lenet300_100", (8, 8, 1), 1)
