"""The private Keras APIs of the coverage work (kprune._internal.compat, Keras section)."""

import keras
import pytest

from kprune._internal import compat


def test_call_has_training_arg_reads_the_call_signature():
    class WithTraining(keras.layers.Layer):
        def call(self, x, training=None):
            return x

    assert compat.call_has_training_arg(WithTraining()) is True
    assert compat.call_has_training_arg(keras.layers.LSTM(2)) is True
    assert compat.call_has_training_arg(keras.layers.Flatten()) is False
    with pytest.raises(TypeError, match="keras.layers.Layer"):
        compat.call_has_training_arg(object())
