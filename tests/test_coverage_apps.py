"""Every `keras.applications` model prunes, trains, strips and saves (slow: `-m slow`).

Run one model with `python -m pytest tests/test_coverage_apps.py -m slow -k ConvNeXtTiny`.
"""

import inspect

import keras
import numpy as np
import pytest

import kprune
from kprune.schedules import ConstantSparsity

# The smallest input each family accepts with weights=None (Keras checks it at build).
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
DEFAULT_SIZE = 32

APPLICATIONS = sorted(
    name
    for name, fn in vars(keras.applications).items()
    if name[:1].isupper() and inspect.isfunction(fn)
)


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_prunes_trains_strips_and_saves(name, tmp_path):
    size = MIN_SIZE.get(name, DEFAULT_SIZE)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=5)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, size, size, 3)).astype("float32")
    y = keras.ops.one_hot(rng.integers(0, 5, size=4), 5)

    pruned = kprune.prune(model, ConstantSparsity(0.8))
    pruned.compile(keras.optimizers.SGD(1e-3), "categorical_crossentropy")
    pruned.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()])
    assert int(pruned.optimizer.iterations.numpy()) == 2

    report = kprune.sparsity_report(pruned)
    masks = kprune.get_masks(pruned)
    total = sum(m.size for m in masks.values())
    assert report["pruned"]["total"] == total
    assert total - report["pruned"]["nonzero"] == round(0.8 * total)  # exact, global
    assert report["left_dense"] == []
    assert all(r["wrapped"] for r in report["layers"])  # every prunable tensor is pruned

    stripped = kprune.strip(pruned)
    expected = np.asarray(pruned(x, training=False))
    np.testing.assert_array_equal(np.asarray(stripped(x, training=False)), expected)
    assert kprune.sparsity_report(stripped)["prunable"] == report["pruned"]

    stripped.save(tmp_path / "stripped.keras")
    loaded = keras.models.load_model(tmp_path / "stripped.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)
    pruned.save(tmp_path / "pruned.keras")
    reloaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert list(kprune.get_masks(reloaded)) == list(masks)
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)
