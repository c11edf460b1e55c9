"""Defaults that train (issue 14, part 5): every zoo model, CLI defaults, a few steps.

Only --model, --dataset, --epochs and --batch_size are set (plus where the run goes); the loss
must stay finite and fall. The data are small synthetic npz files, MNIST-shaped (28x28x1) and
CIFAR-shaped (32x32x3) uint8 images whose class is a bright patch at a class-dependent place,
so a few steps can learn something. VGG-19, VGG-like, ResNet-18 and ResNet-50 (11-24M
parameters) take tens of seconds each on a small CPU: they are marked slow; ResNet-20 and
ResNet-32 take 15-30 s each: integration.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kprune import models, train  # noqa: E402

HEAVY = {"vgg_like", "vgg19", "resnet18", "resnet50"}
MEDIUM = {"resnet20", "resnet32"}
# VGG-like and VGG-19 need at least 32x32 images.
SHAPES = {"mnist": (28, 28, 1), "cifar": (32, 32, 3)}


def patch_images(path, shape, n_train=96, n_test=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n_train + n_test)
    x = rng.integers(0, 60, (len(y), *shape)).astype(np.uint8)
    size = shape[0] // 4
    for i, label in enumerate(y):
        row, col = divmod(int(label), 4)
        x[i, row * size : (row + 1) * size, col * size : (col + 1) * size] = 255
    if shape[-1] == 1:
        x = x[..., 0]  # as MNIST is stored: (n, 28, 28)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return path


def cases():
    for name in models.MODEL_NAMES:
        for kind, shape in SHAPES.items():
            if name.startswith("vgg") and shape[0] < 32:
                continue
            marks = [pytest.mark.slow] if name in HEAVY else []
            marks += [pytest.mark.integration] if name in MEDIUM else []
            yield pytest.param(name, kind, marks=marks, id=f"{name}-{kind}")


@pytest.mark.parametrize("name, kind", list(cases()))
def test_zoo_model_trains_with_cli_defaults(name, kind, tmp_path):
    path = patch_images(tmp_path / f"{kind}.npz", SHAPES[kind])
    run_dir = tmp_path / "run"
    args = [f"--model={name}", f"--dataset=npz:{path}", "--epochs=3", "--batch_size=16"]
    status = train.cli(["kprune.train", *args, f"--model_dir={run_dir}", "--progress=none"])
    results = json.loads((run_dir / "results.json").read_text())
    losses = results["history"]["loss"]
    assert status == 0 and not results.get("diverged"), losses
    assert len(losses) == 3 and all(v is not None and math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses  # 18 steps at the default rate: it learns
