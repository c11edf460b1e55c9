"""Shared test set-up: quiet TensorFlow, fresh Keras state and fixed seeds for every test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Layer-name counters and the global RNG are process-wide; reset them so every test sees
    # the same names ("dense", "dense_1", ...) and the same initial weights.
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield
