"""PruningWrapper: supported layers, masks in build, exact zeros in forward and after updates."""

import keras
import numpy as np
import pytest

import kprune
from kprune import PruningWrapper
from kprune.schedules import ConstantSparsity, LinearSparsity


@pytest.mark.parametrize(
    "layer, input_shape, n_masks",
    [
        (keras.layers.Dense(5), (None, 4), 1),
        (keras.layers.EinsumDense("ab,bc->ac", output_shape=5), (None, 4), 1),
        (keras.layers.Conv1D(3, 2), (None, 8, 2), 1),
        (keras.layers.Conv2D(3, 3), (None, 8, 8, 2), 1),
        (keras.layers.Conv3D(3, 2), (None, 4, 4, 4, 2), 1),
        (keras.layers.Conv2DTranspose(3, 3), (None, 6, 6, 2), 1),
        (keras.layers.DepthwiseConv2D(3), (None, 8, 8, 2), 1),
        (keras.layers.SeparableConv2D(4, 3), (None, 8, 8, 2), 2),
        (keras.layers.Embedding(20, 4), (None, 6), 1),
    ],
)
def test_supported_layers_forward_with_masked_weights(layer, input_shape, n_masks):
    wrapper = PruningWrapper(layer, ConstantSparsity(0.5))
    wrapper.build(input_shape)
    assert len(wrapper.masks) == n_masks
    rng = np.random.default_rng(0)
    shape = (2,) + input_shape[1:]
    x = (
        rng.integers(0, 20, size=shape)
        if isinstance(layer, keras.layers.Embedding)
        else (rng.normal(size=shape).astype("float32"))
    )
    # Zero half of each mask by hand, without touching the weights: the forward pass must
    # still behave as if those weights were zero.
    reference_weights = []
    for w, m in zip(wrapper.pruned_weights, wrapper.masks):
        mask = (rng.random(tuple(m.shape)) < 0.5).astype("float32")
        m.assign(mask)
        reference_weights.append(w.numpy() * mask)
    got = np.asarray(wrapper(x))
    for w, value in zip(wrapper.pruned_weights, reference_weights):
        w.assign(value)
    expected = np.asarray(layer(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dense_subclass_and_custom_prunable_layer():
    class MyDense(keras.layers.Dense):
        pass

    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")
            self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros")

        def call(self, x):
            return x * self.w + self.b

        def get_prunable_weights(self):
            return [self.w]

    sub = PruningWrapper(MyDense(3), ConstantSparsity(0.5))
    sub.build((None, 4))
    custom = PruningWrapper(Scale(), ConstantSparsity(0.5))
    custom.build((None, 4))
    assert [m.shape for m in sub.masks] == [(4, 3)]
    # Exactly the weight get_prunable_weights() names is masked, the bias is not.
    assert [id(w) for w in custom.pruned_weights] == [id(custom.layer.w)]
    assert [tuple(m.shape) for m in custom.masks] == [(4,)]
    custom.masks[0].assign([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(np.asarray(custom(np.ones((1, 4), "float32"))), [[1, 0, 1, 0]])


def test_bad_wrapper_arguments():
    with pytest.raises(TypeError, match="Keras 3 layer"):
        PruningWrapper("dense")
    with pytest.raises(ValueError, match="BatchNormalization"):
        PruningWrapper(keras.layers.BatchNormalization())
    with pytest.raises(ValueError, match="already a PruningWrapper"):
        PruningWrapper(PruningWrapper(keras.layers.Dense(2)))
    with pytest.raises(TypeError, match="schedule"):
        PruningWrapper(keras.layers.Dense(2), schedule=0.5)
    with pytest.raises(ValueError, match="scope.*'channel'"):
        PruningWrapper(keras.layers.Dense(2), scope="channel")


def test_lora_and_quantized_layers_are_refused():
    with pytest.raises(ValueError, match="LoRA"):
        PruningWrapper(keras.layers.Dense(4, lora_rank=2))
    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    dense.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        PruningWrapper(dense)


def test_wrapper_serialization_round_trip():
    wrapper = PruningWrapper(
        keras.layers.Dense(3, activation="relu"), LinearSparsity(0.0, 0.5, 0, 10), scope="global"
    )
    config = keras.saving.serialize_keras_object(wrapper)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, PruningWrapper) and restored.scope == "global"
    assert restored.schedule == wrapper.schedule
    assert restored.layer.get_config()["activation"] == "relu"
    assert restored.name == wrapper.name


def test_training_without_bound_optimizer_explains_what_to_do():
    model = kprune.prune(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), ConstantSparsity(0.5)
    )
    model.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="PruningCallback"):
        model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0)


def test_user_constraint_is_kept():
    layer = keras.layers.Dense(3, kernel_constraint=keras.constraints.NonNeg())
    model = kprune.prune(keras.Sequential([keras.Input((4,)), layer]), ConstantSparsity(0.5))
    model.compile(keras.optimizers.SGD(1.0), "mse", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, -np.ones((32, 3)), epochs=2, verbose=0, callbacks=[kprune.PruningCallback()])
    kernel = model.layers[0].layer.kernel.numpy()
    mask = model.layers[0].masks[0].numpy()
    assert kernel.min() >= 0.0  # NonNeg still applied
    assert np.all(kernel[mask == 0] == 0.0) and (mask == 0).sum() == 6
