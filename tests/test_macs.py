"""count_macs: hand-computed MACs per layer type, nesting, wrappers, closed forms of the zoo."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

import kprune  # noqa: E402
from kprune.models import resnet18, vgg19  # noqa: E402
from kprune.structured.macs import MacsReport, count_macs  # noqa: E402

L = keras.layers


def single(layer, input_shape, batch=1):
    """MACs of `layer` alone on `input_shape` (one example, or `batch`)."""
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, layer(inputs))
    (row,) = count_macs(model, batch=batch).rows
    return row


# 8x8x3 input, 3x3 kernel, 4 filters: out positions x 4 filters x 27 (= 3x3x3) products.
@pytest.mark.parametrize(
    "strides, padding, out_side",
    [(1, "same", 8), (1, "valid", 6), (2, "same", 4), (2, "valid", 3)],
)
def test_conv2d_strides_and_padding(strides, padding, out_side):
    row = single(L.Conv2D(4, 3, strides=strides, padding=padding), (8, 8, 3))
    assert row.output_shape == (1, out_side, out_side, 4)
    assert row.macs == out_side * out_side * 4 * 27
    assert row.params == 27 * 4 + 4


def test_conv2d_known_values():
    assert single(L.Conv2D(4, 3, padding="same"), (8, 8, 3)).macs == 6912
    assert single(L.Conv2D(4, 3, strides=2, padding="valid"), (8, 8, 3)).macs == 972


def test_conv_groups_dilation_1d_3d_channels_first():
    # groups=2: every filter sees 4 / 2 = 2 input channels: 36 x 4 x 9 x 2.
    assert single(L.Conv2D(4, 3, groups=2), (8, 8, 4)).macs == 2592
    # dilation 2 makes a 3x3 kernel span 5x5: 4x4 outputs x 2 filters x 9.
    assert single(L.Conv2D(2, 3, dilation_rate=2), (8, 8, 1)).macs == 288
    assert single(L.Conv1D(6, 5), (20, 3)).macs == 16 * 6 * 5 * 3
    assert single(L.Conv3D(2, 3), (5, 5, 5, 2)).macs == 27 * 2 * 27 * 2
    # channels_first: the channels are axis 1, positions 6x6.
    row = single(L.Conv2D(4, 3, data_format="channels_first"), (3, 8, 8))
    assert row.output_shape == (1, 4, 6, 6) and row.macs == 36 * 4 * 27


def test_conv_transpose_counts_input_positions():
    # 4x4 inputs x 3 channels x 9 x 2 filters, whatever the stride does to the output.
    row = single(L.Conv2DTranspose(2, 3, strides=2, padding="same"), (4, 4, 3))
    assert row.output_shape == (1, 8, 8, 2) and row.macs == 864
    assert single(L.Conv1DTranspose(5, 3), (10, 2)).macs == 10 * 2 * 3 * 5


def test_depthwise_and_separable():
    # 64 positions x (3 channels x multiplier 2) x 9.
    assert single(L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (8, 8, 3)).macs == 3456
    # Depthwise 64 x 3 x 9 = 1728, then pointwise 64 x 3 x 5 = 960.
    assert single(L.SeparableConv2D(5, 3, padding="same"), (8, 8, 3)).macs == 2688
    # Strided: 4x4 outputs, multiplier 2: 16 x 6 x 9 + 16 x 6 x 5.
    row = single(L.SeparableConv2D(5, 3, strides=2, padding="same", depth_multiplier=2), (8, 8, 3))
    assert row.macs == 16 * 6 * 9 + 16 * 6 * 5
    assert single(L.DepthwiseConv1D(3), (10, 4)).macs == 8 * 4 * 3


def test_dense_on_rank3_input_and_batch():
    assert single(L.Dense(3), (7, 5)).macs == 105
    assert single(L.Dense(3), (7, 5), batch=4).macs == 420
    assert single(L.Dense(3), (7, 5), batch=4).output_shape == (4, 7, 3)


def test_einsum_dense():
    assert single(L.EinsumDense("abc,cd->abd", output_shape=(None, 6)), (7, 5)).macs == 210
    # Two output axes from the kernel: 7 x 5 x 2 x 3.
    row = single(L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3)), (7, 5))
    assert row.macs == 210
    # Ellipsis: the batch and the 7 positions are in "...": 7 x 5 x 6 per example, x2 batch.
    row = single(L.EinsumDense("...b,bc->...c", output_shape=6), (7, 5), batch=2)
    assert row.macs == 420


def test_zero_mac_layers_and_batchnorm_params():
    inputs = keras.Input((8, 8, 4))
    x = L.BatchNormalization(name="bn")(inputs)
    x = L.ReLU(name="relu")(x)
    y = L.MaxPooling2D(name="pool")(x)
    z = L.AveragePooling2D(2, name="avg")(x)
    out = L.GlobalAveragePooling2D(name="gap")(L.Add(name="add")([y, z]))
    report = count_macs(keras.Model(inputs, out))
    assert report.macs == 0 and report.uncounted == ()
    assert {row.name: row.params for row in report.rows}["bn"] == 16  # gamma, beta, mean, var


def test_nested_model_and_shared_layer():
    inner = keras.Sequential([keras.Input((3,)), L.Dense(4, name="inner_fc")], name="block")
    inputs = keras.Input((3,))
    x = inner(inputs)
    shared = L.Dense(4, name="shared")
    out = L.Dense(2, name="head")(shared(shared(x)))
    report = count_macs(keras.Model(inputs, out))
    rows = {row.name: row for row in report.rows}
    assert rows["block/inner_fc"].macs == 12
    assert rows["shared"].macs == 2 * 16 and rows["shared"].calls == 2
    assert report.macs == 12 + 32 + 8
    # The nested model called twice counts twice; its weights once.
    inputs = keras.Input((3,))
    twice = keras.Model(inputs, L.Add()([inner(inputs), inner(inputs)]))
    report = count_macs(twice)
    assert report.macs == 24 and report.params == 16 == twice.count_params()


def test_pruning_wrapper_is_looked_through():
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.Flatten(), L.Dense(10)])
    pruned = kprune.prune(model, None)
    dense, wrapped = count_macs(model), count_macs(pruned)
    assert wrapped.macs == dense.macs == 3888 + 144 * 10
    assert wrapped.params == dense.params == model.count_params()  # masks not counted
    assert [row.type for row in wrapped.rows] == ["Conv2D", "Flatten", "Dense"]


def test_time_distributed_and_uncounted_layers():
    row = single(L.TimeDistributed(L.Dense(3)), (4, 5))
    assert row.macs == 4 * 5 * 3 and row.type == "Dense"
    inputs = keras.Input((6, 4))
    out = L.LSTM(3, name="lstm")(inputs)
    report = count_macs(keras.Model(inputs, out))
    assert report.uncounted == ("lstm",) and report.macs == 0
    assert "not counted (no MACs rule): lstm" in report.format()


def test_report_dict_and_format():
    report = count_macs(keras.Sequential([keras.Input((5,)), L.Dense(3, name="fc")]), batch=2)
    data = report.to_dict()
    assert data["macs"] == 30 and data["params"] == 18 and data["batch"] == 2
    assert data["layers"] == [
        {
            "name": "fc",
            "type": "Dense",
            "output_shape": [2, 3],
            "params": 18,
            "macs": 30,
            "calls": 1,
        }
    ]
    assert report.format().splitlines()[-1].split() == ["total", "18", "30"]
    assert isinstance(report, MacsReport)


def test_bad_input():
    with pytest.raises(TypeError, match="keras.Model"):
        count_macs("model")
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    with pytest.raises(ValueError, match="batch"):
        count_macs(model, batch=0)
    inputs = keras.Input((None, 3))
    with pytest.raises(ValueError, match="fixed input shape"):
        count_macs(keras.Model(inputs, L.Dense(2, name="fc")(inputs)))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed"):
        count_macs(Sub())


def resnet18_closed_form(classes=10):
    """ResNet-18 on 32x32: stem 3x3, four stages of two basic blocks, 1x1 projections."""
    total = 32 * 32 * 64 * 3 * 9  # stem
    side, in_ch = 32, 64
    for stage, width in enumerate((64, 128, 256, 512)):
        if stage:
            side //= 2
            total += side * side * width * in_ch  # 1x1 projection shortcut
        total += side * side * width * in_ch * 9  # first conv of the stage
        total += 3 * side * side * width * width * 9  # the other three convs
        in_ch = width
    return total + 512 * classes


def vgg19_closed_form(classes=10):
    """VGG-19 on 32x32: (64x2, 128x2, 256x4, 512x4 at 4x4, 512x4 at 2x2), 2x2 pools between."""
    total, in_ch = 0, 3
    for side, width, count in ((32, 64, 2), (16, 128, 2), (8, 256, 4), (4, 512, 4), (2, 512, 4)):
        for _ in range(count):
            total += side * side * width * in_ch * 9
            in_ch = width
    return total + 512 * classes


def test_resnet18_and_vgg19_cifar_against_closed_forms():
    assert resnet18_closed_form() == 555_422_720  # the "0.56 GMACs" of the literature
    assert vgg19_closed_form() == 398_136_320  # "0.40 GMACs"
    resnet = resnet18((32, 32, 3), 10)
    report = count_macs(resnet)
    assert report.macs == resnet18_closed_form()
    assert report.params == resnet.count_params()
    model = vgg19((32, 32, 3), 10)
    report = count_macs(model, batch=2)
    assert report.macs == 2 * vgg19_closed_form()
    assert report.params == model.count_params()


def test_mobilenet_v2_published_total():
    # Sandler et al. (2018), table 3, and the keras.applications docs: 300M MACs at 224x224.
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    report = count_macs(model)
    assert abs(report.macs - 300e6) < 0.01 * 300e6
    assert report.params == model.count_params() and report.uncounted == ()
