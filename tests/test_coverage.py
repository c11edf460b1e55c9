"""Every Keras model prunes: operator nodes, layers that own layers, RNNs; nothing left dense
silently (issue 12)."""

import math
import warnings

import keras
import numpy as np
import pytest

import kprune
from kprune.schedules import ConstantSparsity

SPARSITY = 0.6


def _train_two_steps(model, x, y, jit_compile=False):
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=jit_compile)
    model.fit(
        x, y, batch_size=len(x) // 2, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()]
    )
    assert int(model.optimizer.iterations.numpy()) == 2


def _round_trip(model, path):
    model.save(path)
    return keras.models.load_model(path)


def _check_pruned_model(model, x, y, tmp_path, expected_paths, jit_compile=False):
    """prune (per tensor) -> 2 steps -> exact zeros -> strip parity -> .keras round trips."""
    pruned = kprune.prune(model, ConstantSparsity(SPARSITY), scope="layer")
    assert list(kprune.get_masks(pruned)) == expected_paths
    _train_two_steps(pruned, x, y, jit_compile=jit_compile)

    masks = kprune.get_masks(pruned)
    weights = {path: np.asarray(w.numpy()) for path, w, _ in kprune.api.pruned_variables(pruned)}
    for path, mask in masks.items():
        # Exactly round(s * n) weights removed per tensor, and they are zero in the variable.
        assert int((mask == 0).sum()) == round(SPARSITY * mask.size), path
        assert not weights[path][mask == 0].any(), path
    report = kprune.sparsity_report(pruned)
    assert [r["weight"] for r in report["layers"] if r["wrapped"]] == expected_paths
    assert report["pruned"]["nonzero"] == sum(int(m.sum()) for m in masks.values())
    assert report["left_dense"] == []

    stripped = kprune.strip(pruned)
    assert not kprune.api.pruning_wrappers(stripped)
    # Eager calls: predict() of a model compiled with jit_compile=True would run XLA, whose
    # rounding differs from the eager kernels' by an ulp.
    expected = np.asarray(pruned(x, training=False))
    np.testing.assert_array_equal(np.asarray(stripped(x, training=False)), expected)
    stripped_report = kprune.sparsity_report(stripped)
    assert [r["weight"] for r in stripped_report["layers"]] == expected_paths
    assert stripped_report["prunable"] == report["pruned"]

    loaded = _round_trip(pruned, tmp_path / "pruned.keras")
    assert list(kprune.get_masks(loaded)) == expected_paths
    for path, mask in kprune.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[path])
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)
    loaded_stripped = _round_trip(stripped, tmp_path / "stripped.keras")
    np.testing.assert_array_equal(np.asarray(loaded_stripped(x, training=False)), expected)
    assert kprune.sparsity_report(loaded_stripped)["prunable"] == report["pruned"]
    return pruned


# -- operator nodes --------------------------------------------------------------------------
def test_functional_model_with_operator_nodes_prunes_trains_strips_and_saves(tmp_path):
    # `x + y` and keras.ops calls are Keras Operations, not Layers, in the functional graph.
    inner_in = keras.Input((8,))
    inner_out = keras.ops.tanh(keras.layers.Dense(8, name="inner_fc")(inner_in)) * 2.0
    inner = keras.Model(inner_in, inner_out, name="inner")
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, name="fc1")(inputs) + inputs
    h = keras.ops.relu(h)
    h = keras.ops.concatenate([inner(h), keras.ops.square(h)], axis=-1)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = keras.Model(inputs, outputs, name="ops")
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    before = np.asarray(model.predict(x, verbose=0))

    pruned = _check_pruned_model(
        model, x, y, tmp_path, ["fc1/kernel", "inner/inner_fc/kernel", "head/kernel"]
    )
    assert model.get_layer("fc1").kernel.numpy().all()  # the original is untouched
    np.testing.assert_array_equal(np.asarray(model.predict(x, verbose=0)), before)
    # Operator nodes are shared with the original graph, which stays callable.
    assert [type(op).__name__ for op in pruned.operations if "Add" in type(op).__name__]


def test_global_scope_over_operator_graph_prunes_exactly_the_target():
    inputs = keras.Input((6,))
    h = keras.ops.relu(keras.layers.Dense(6, name="a")(inputs) + inputs)
    outputs = keras.layers.Dense(2, name="b")(h)
    pruned = kprune.prune(keras.Model(inputs, outputs), ConstantSparsity(0.8))
    kprune.bind_optimizer(pruned, keras.optimizers.SGD())
    kprune.api.pruning_wrappers(pruned)[0]._group.update(0.8)
    total = sum(m.size for m in kprune.get_masks(pruned).values())
    zeros = sum(int((m == 0).sum()) for m in kprune.get_masks(pruned).values())
    assert (total, zeros) == (48, round(0.8 * 48))


# -- layers that own layers ------------------------------------------------------------------
def _mha():
    inputs = keras.Input((5, 8))
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(inputs, inputs)
    h = keras.layers.LayerNormalization(name="ln")(h + inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h)), [
        "mha/query/kernel",
        "mha/key/kernel",
        "mha/value/kernel",
        "mha/attention_output/kernel",
    ]


def _time_distributed():
    inputs = keras.Input((5, 8))
    h = keras.layers.TimeDistributed(keras.layers.Dense(6, name="fc"), name="td")(inputs)
    return keras.Model(inputs, keras.layers.Flatten()(h)), ["td/fc/kernel"]


def _bidirectional():
    inputs = keras.Input((5, 8))
    h = keras.layers.Bidirectional(keras.layers.LSTM(4, name="lstm"), name="bi")(inputs)
    return keras.Model(inputs, h), [
        "bi/forward_lstm/lstm_cell/kernel",
        "bi/forward_lstm/lstm_cell/recurrent_kernel",
        "bi/backward_lstm/lstm_cell/kernel",
        "bi/backward_lstm/lstm_cell/recurrent_kernel",
    ]


def _rnn(cls, cell):
    def build():
        inputs = keras.Input((5, 8))
        h = cls(6, return_sequences=True, name="rnn")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="head")(h[:, -1])), [
            f"rnn/{cell}/kernel",
            f"rnn/{cell}/recurrent_kernel",
            "head/kernel",
        ]

    return build


def _conv_lstm():
    inputs = keras.Input((5, 8))
    h = keras.layers.Reshape((5, 8, 1))(inputs)
    h = keras.layers.ConvLSTM1D(3, 3, name="convlstm")(h)
    return keras.Model(inputs, keras.layers.Flatten()(h)), [
        "convlstm/conv_lstm_cell/kernel",
        "convlstm/conv_lstm_cell/recurrent_kernel",
    ]


def _rnn_of_cell():
    inputs = keras.Input((5, 8))
    h = keras.layers.RNN(keras.layers.LSTMCell(4, name="cell"), name="rnn")(inputs)
    return keras.Model(inputs, h), ["rnn/cell/kernel", "rnn/cell/recurrent_kernel"]


NESTED = {
    "MultiHeadAttention": _mha,
    "TimeDistributed": _time_distributed,
    "Bidirectional(LSTM)": _bidirectional,
    "LSTM": _rnn(keras.layers.LSTM, "lstm_cell"),
    "GRU": _rnn(keras.layers.GRU, "gru_cell"),
    "SimpleRNN": _rnn(keras.layers.SimpleRNN, "simple_rnn_cell"),
    "ConvLSTM1D": _conv_lstm,
    "RNN(LSTMCell)": _rnn_of_cell,
}


@pytest.mark.parametrize("kind", list(NESTED))
def test_nested_kernels_prune_with_exact_counts_strip_and_save(kind, tmp_path):
    model, paths = NESTED[kind]()
    x = np.random.default_rng(0).normal(size=(8, 5, 8)).astype("float32")
    y = np.asarray(model(x)) + 0.1
    pruned = _check_pruned_model(model, x, y, tmp_path, paths)
    # One wrapper around the whole layer; its masks are named by their path inside it.
    assert len(kprune.api.pruning_wrappers(pruned)) == len({p.split("/")[0] for p in paths})
    names = [m.name for w in kprune.api.pruning_wrappers(pruned) for m in w.masks]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_cells_prune_under_xla(kind, tmp_path):
    model, paths = NESTED[kind]()
    x = np.random.default_rng(0).normal(size=(8, 5, 8)).astype("float32")
    _check_pruned_model(model, x, np.asarray(model(x)), tmp_path, paths, jit_compile=True)


def test_sparsity_report_of_unpruned_containers_counts_nested_kernels():
    model, paths = _mha()
    report = kprune.sparsity_report(model)
    assert [r["weight"] for r in report["layers"]] == paths
    assert report["pruned"] is None
    assert report["prunable"]["total"] == 4 * 8 * 2 * 4


def test_container_can_be_excluded_as_a_whole():
    model, _ = _mha()
    inputs = model.input
    outputs = keras.layers.Dense(2, name="head")(model.output)
    pruned = kprune.prune(keras.Model(inputs, outputs), ConstantSparsity(0.5), exclude="mha")
    assert list(kprune.get_masks(pruned)) == ["head/kernel"]
    report = kprune.sparsity_report(pruned)
    assert [r["weight"] for r in report["layers"] if not r["wrapped"]][0] == "mha/query/kernel"
    assert report["left_dense"] == []  # excluded on purpose: not "left dense"


def test_custom_block_that_owns_layers_is_wrapped_as_a_whole(tmp_path):
    @keras.saving.register_keras_serializable(package="test_coverage")
    class Block(keras.layers.Layer):
        def __init__(self, units=6, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.fc = keras.layers.Dense(units, name="fc")
            self.norm = keras.layers.LayerNormalization(name="norm")

        def build(self, shape):
            self.fc.build(shape)
            self.norm.build((*shape[:-1], self.units))

        def call(self, x):
            return self.norm(keras.ops.gelu(self.fc(x)))

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(Block(name="block")(inputs)))
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    _check_pruned_model(
        model, x, np.asarray(model(x)), tmp_path, ["block/fc/kernel", "head/kernel"]
    )


# -- what stays dense is listed -------------------------------------------------------------
@keras.saving.register_keras_serializable(package="test_coverage")
class OwnKernel(keras.layers.Layer):
    """A custom layer with its own kernel and no get_prunable_weights()."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 4), name="w")
        self.b = self.add_weight(shape=(4,), initializer="zeros", name="b")

    def call(self, x):
        return x @ self.w + self.b


def test_weights_kprune_cannot_prune_are_warned_once_and_reported():
    shared = keras.layers.Dense(3, name="captured")
    shared.build((None, 4))
    inputs = keras.Input((6,))
    h = OwnKernel(name="custom")(inputs)
    h = keras.layers.Lambda(lambda t: shared(t), output_shape=(3,), name="lam")(h)
    h = keras.layers.PReLU(name="prelu")(keras.layers.Dense(5, name="fc")(h))
    model = keras.Model(inputs, h)
    expected = ["custom/w", "lam/captured/kernel"]
    assert kprune.sparsity_report(model)["left_dense"] == expected

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = kprune.prune(model, ConstantSparsity(0.5))
    messages = [str(w.message) for w in caught if "leaves" in str(w.message)]
    assert len(messages) == 1
    assert all(path in messages[0] for path in expected)
    report = kprune.sparsity_report(pruned)
    assert report["left_dense"] == expected
    assert [r["weight"] for r in report["layers"] if r["wrapped"]] == ["fc/kernel"]
    assert kprune.sparsity_report(kprune.strip(pruned))["left_dense"] == expected


def test_no_warning_when_everything_prunable_is_pruned():
    model, _ = _bidirectional()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kprune.prune(model, ConstantSparsity(0.5))


def test_total_counts_are_exact_for_a_mixed_model():
    model, paths = _bidirectional()
    sizes = [8 * 16, 4 * 16, 8 * 16, 4 * 16]
    report = kprune.sparsity_report(kprune.prune(model, ConstantSparsity(0.5)))
    assert [r["total"] for r in report["layers"]] == sizes
    assert report["pruned"]["total"] == sum(sizes)
    assert math.isclose(report["pruned"]["sparsity"], 0.0)
