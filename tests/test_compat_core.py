"""The Keras/TF internals kprune's core relies on (kprune._internal.compat): one test per entry.

Each test asserts that the internal still exists and still behaves as kprune relies on, so a
Keras or TensorFlow release that changes it fails here, by name, rather than deep in training.
"""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kprune._internal import compat
from kprune._internal.walk import is_graph_model


# -- Keras model and layer internals ----------------------------------------------------------
def test_child_layers_lists_direct_sublayers_only():
    assert hasattr(keras.layers.Layer, "_flatten_layers")

    class Block(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="block")
            self.fc = keras.layers.Dense(2, name="fc")
            self.inner = keras.Sequential([keras.layers.Dense(2, name="deep")], name="inner")

        def call(self, x):
            return self.inner(self.fc(x))

    block = Block()
    assert [layer.name for layer in compat.child_layers(block)] == ["fc", "inner"]  # not "deep"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="m")
    # A Sequential lists its InputLayer (kprune's walk skips it), never itself.
    assert [type(layer).__name__ for layer in compat.child_layers(model)] == ["InputLayer", "Dense"]


def test_missing_internal_names_the_installed_versions():
    with pytest.raises(compat.MissingInternalError) as err:
        compat.child_layers(object())
    assert "_flatten_layers" in str(err.value)
    assert keras.__version__ in str(err.value) and tf.__version__ in str(err.value)


def test_no_autocast_reads_stored_float32_inside_a_mixed_precision_call():
    seen = {}

    class Probe(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(2,), initializer="ones")

        def call(self, x):
            seen["autocast"] = self.w.value.dtype
            with compat.no_autocast():
                seen["stored"] = self.w.value.dtype
            seen["after"] = self.w.value.dtype
            return x * self.w

    Probe(dtype="mixed_float16")(np.ones((1, 2), "float32"))
    assert (seen["autocast"], seen["stored"], seen["after"]) == (tf.float16, tf.float32, tf.float16)


def test_public_functional_check_matches_keras_functional_class():
    # `is_graph_model` uses the public `keras.Function` instead of importing Keras' private
    # Functional class; that relies on Functional subclassing Function.
    functional = importlib.import_module("keras.src.models.functional").Functional
    assert issubclass(functional, keras.Function)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert isinstance(model, functional) and is_graph_model(model)
    assert is_graph_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    class FunctionalSub(keras.Model):  # a subclass built as a graph is functional too
        def __init__(self):
            inputs = keras.Input((3,))
            super().__init__(inputs, keras.layers.Dense(2)(inputs))

    assert not is_graph_model(Sub()) and is_graph_model(FunctionalSub())


# -- tf.distribute internals ------------------------------------------------------------------
def test_maybe_merge_call_runs_once_in_cross_replica_context():
    assert callable(tf.__internal__.distribute.interim.maybe_merge_call)
    default = tf.distribute.get_strategy()
    assert compat.maybe_merge_call(lambda strategy, x: (strategy, x + 1), default, 1) == (
        default,
        2,
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    calls = []

    def fn(given):
        calls.append(tf.distribute.in_cross_replica_context())
        return tf.constant(3)

    @tf.function
    def step():
        return compat.maybe_merge_call(fn, strategy)

    result = strategy.run(step)
    assert calls == [True] and int(strategy.experimental_local_results(result)[0]) == 3


def test_multi_worker_trainer_fixes_patch_only_while_active():
    trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    reduce, build = trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build
    asked = []

    def is_multi_worker(strategy):
        asked.append(strategy)
        return False

    with pytest.raises(RuntimeError, match="restored on errors too"):
        with compat.multi_worker_trainer_fixes(is_multi_worker):
            assert trainer.reduce_per_replica is not reduce
            assert trainer.TensorFlowTrainer._maybe_symbolic_build is not build
            with compat.multi_worker_trainer_fixes(is_multi_worker):  # nested: one layer
                assert trainer.reduce_per_replica._kprune_fix
            # Not multi-worker: Keras' own reduction, unchanged.
            value = tf.constant([1.0, 2.0])
            out = trainer.reduce_per_replica(value, tf.distribute.get_strategy(), "auto")
            np.testing.assert_array_equal(np.asarray(out), [1.0, 2.0])
            assert asked
            raise RuntimeError("restored on errors too")
    assert trainer.reduce_per_replica is reduce
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is build


@pytest.mark.parametrize(
    "missing", ["reduce_per_replica", "TensorFlowTrainer._maybe_symbolic_build"]
)
def test_multi_worker_trainer_fixes_raise_if_keras_moved_them(monkeypatch, missing):
    trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    owner, name = (
        (trainer.TensorFlowTrainer, "_maybe_symbolic_build")
        if "." in missing
        else (trainer, missing)
    )
    monkeypatch.delattr(owner, name)
    with pytest.raises(compat.MissingInternalError, match=name):
        with compat.multi_worker_trainer_fixes(lambda strategy: True):
            pass


def test_legacy_keras_objects_are_told_by_their_module():
    legacy = type("Sequential", (), {"__module__": "tf_keras.src.engine.sequential"})()
    assert compat.is_legacy_keras_object(legacy)
    assert not compat.is_legacy_keras_object(keras.Sequential())
