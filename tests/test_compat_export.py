"""Tests of the TFLite internals in kprune._internal.compat: each fails loudly if TF moves them."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kprune._internal import compat


def _flatbuffer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def test_tflite_schema_parses_a_converted_file():
    schema = compat.tflite_schema()
    model = schema.Model.GetRootAs(bytearray(_flatbuffer()), 0)
    assert model.SubgraphsLength() == 1
    codes = {model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())}
    assert schema.BuiltinOperator.FULLY_CONNECTED in codes


def test_tflite_schema_missing_names_the_tensorflow_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow.lite.python.schema_py_generated", None)
    with pytest.raises(RuntimeError, match=rf"schema_py_generated.*TensorFlow {tf.__version__}"):
        compat.tflite_schema()


# tf.lite.Interpreter warns that it is deprecated in favour of ai_edge_litert (an optional extra).
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_interpreter_ops_details_lists_the_nodes():
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = tf.lite.Interpreter(
        model_content=_flatbuffer(), experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ones((1, 4), "float32"))
    interpreter.invoke()
    ops = compat.interpreter_ops_details(interpreter)
    assert [op["op_name"] for op in ops] == ["FULLY_CONNECTED"]


def test_interpreter_ops_details_missing_names_the_tensorflow_version():
    class Interpreter:  # an interpreter of a release without _get_ops_details
        pass

    expected = rf"TensorFlow {tf.__version__}\) has no _get_ops_details"
    with pytest.raises(RuntimeError, match=expected):
        compat.interpreter_ops_details(Interpreter())
