"""Every private Keras/TensorFlow API kprune uses, in one place.

Each entry names the public gap it fills and checks that what it reaches for still exists, so
a Keras or TensorFlow release that moves an internal fails here, loudly, with the version
named, instead of somewhere deep in a training run. `tests/test_compat.py` has a test per
entry.
"""

from __future__ import annotations

# -- Keras model and layer internals (api, wrapper) ------------------------------------------


# -- tf.distribute internals (distribute, wrapper) -------------------------------------------


# -- TFLite internals (export) ---------------------------------------------------------------
