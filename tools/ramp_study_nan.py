"""Issue 14 study, part 2: the first non-finite loss of LeNet-5-Caffe with the CLI defaults.

`nan_one` trains LeNet-5-Caffe for a fixed number of steps with one configuration of
`NAN_CONFIGS` (the CLI defaults with one thing changed: initialization, input scaling, batch
size, weight decay, Nesterov, learning rate, ...) and records the first non-finite step, the
loss and gradient norm along the way, and the activation scale at initialization.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

import kprune
from kprune import data as data_lib
from kprune import models
from tools.ramp_study_runs import RampLR, Warmup, val_arrays


def standardized_copy(data_path, directory):
    """The .npz as float32 standardized by the training mean/std (as tfds' mnist), in /tmp."""
    with np.load(data_path) as arrays:
        x_train = arrays["x_train"].astype(np.float32) / 255.0
        x_test = arrays["x_test"].astype(np.float32) / 255.0
        mean, std = float(x_train.mean()), float(x_train.std())
        path = os.path.join(directory, "standardized.npz")
        np.savez(path, x_train=(x_train - mean) / std, y_train=arrays["y_train"],
                 x_test=(x_test - mean) / std, y_test=arrays["y_test"])  # fmt: skip
    return path, mean, std


NAN_CONFIGS = {
    # name: overrides of the CLI defaults (batch 32, lr 0.05, SGD Nesterov 0.9, wd 1e-4, he_normal
    # kernels, uint8 / 255 input, cosine over 60 epochs).
    "cli_defaults": {},
    "batch100": {"batch_size": 100},
    "snip_recipe": {"batch_size": 100, "lr": 0.1, "nesterov": False},
    "snip_recipe_batch32": {"lr": 0.1, "nesterov": False},
    "no_nesterov": {"nesterov": False},
    "wd0": {"weight_decay": 0.0},
    "lr0.01": {"lr": 0.01},
    "init_glorot_uniform": {"init": "glorot_uniform"},
    "init_lecun_normal": {"init": "lecun_normal"},
    "input_standardized": {"standardized": True},
    "init_glorot_batch100_lr0.1": {"init": "glorot_uniform", "batch_size": 100, "lr": 0.1},
    "relu_after_convs": {"conv_relu": True},
    "clipnorm5": {"clipnorm": 5.0},
    "init_lecun_input_standardized": {"init": "lecun_normal", "standardized": True},
    # SNIP's code (namhoonlee/snip-public): input standardized by the training mean and std,
    # kernels from TF1's variance_scaling_initializer() (scale 1, fan-in, truncated normal,
    # i.e. lecun_normal), SGD momentum 0.9, lr 0.1, batch 100.
    # Pruned to 98% at step 0 (global magnitude, as a stand-in for SNIP's mask): do the
    # sparse networks that SNIP trains diverge like the dense one?
    "sparse98_at_init": {"sparse_at_init": 0.98},
    "sparse98_at_init_snip_recipe": {
        "sparse_at_init": 0.98,
        "batch_size": 100,
        "lr": 0.1,
        "nesterov": False,
    },
    "warmup_1epoch": {"warmup_epochs": 1.0},
    "warmup_1epoch_snip_recipe": {
        "warmup_epochs": 1.0,
        "batch_size": 100,
        "lr": 0.1,
        "nesterov": False,
    },
    "snip_code": {
        "init": "lecun_normal",
        "standardized": True,
        "batch_size": 100,
        "lr": 0.1,
        "nesterov": False,
    },
}


def lenet5(input_shape, num_classes, init, conv_relu):
    if not conv_relu:
        return models.lenet5_caffe(input_shape, num_classes, kernel_initializer=init)
    # The zoo's LeNet-5-Caffe with a ReLU after each convolution (the only change), to test
    # whether the activation-free convolutions are what lets the activations grow.
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(20, 5, activation="relu", kernel_initializer=init)(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(50, 5, activation="relu", kernel_initializer=init)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(500, activation="relu", kernel_initializer=init)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def nan_one(data_path, standardized_path, name, overrides, seed, steps):
    c = {"batch_size": 32, "lr": 0.05, "nesterov": True, "weight_decay": 1e-4,
         "init": "he_normal", "standardized": False, "conv_relu": False, "clipnorm": None,
         "sparse_at_init": None, "warmup_epochs": 0.0,
         **overrides}  # fmt: skip
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    path = standardized_path if c["standardized"] else data_path
    data = data_lib.load_dataset(f"npz:{path}", c["batch_size"], seed=seed)
    model = lenet5(data.input_shape, data.num_classes, c["init"], c["conv_relu"])
    if c["sparse_at_init"]:  # pruned in the first train step (before its update)
        model = kprune.prune(
            model, kprune.ConstantSparsity(c["sparse_at_init"], begin_step=0), scope="global"
        )
    for variable in model.trainable_variables:
        if c["weight_decay"]:
            variable.regularizer = keras.regularizers.L2(c["weight_decay"] / 2.0)
    total = 60 * data.steps_per_epoch  # the CLI's 60 epochs: the cosine barely moves early on
    lr = RampLR(c["lr"], total, "cosine", 0)
    if c["warmup_epochs"]:
        lr = Warmup(lr, round(c["warmup_epochs"] * data.steps_per_epoch))
    optimizer = keras.optimizers.SGD(
        lr, momentum=0.9, nesterov=c["nesterov"], clipnorm=c["clipnorm"]
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if c["sparse_at_init"]:
        kprune.bind_optimizer(model, optimizer)
    x_first, _ = next(iter(data.train_epochs(0)))
    logits0 = model(x_first, training=False).numpy()
    # Activation scale at init, layer by layer (std over the first batch).
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers[1:]])
    outputs = probe(x_first)
    scales = {layer.name: float(np.std(out)) for layer, out in zip(model.layers[1:], outputs)}

    @tf.function
    def step_fn(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, tf.linalg.global_norm(grads), tf.reduce_max(tf.abs(logits))

    losses, grad_norms, max_logits = [], [], []
    first_bad = None
    for i, (x, y) in enumerate(data.train_epochs(0).take(steps)):
        loss, gnorm, mlogit = (float(v) for v in step_fn(x, y))
        losses.append(loss)
        grad_norms.append(gnorm)
        max_logits.append(mlogit)
        if not math.isfinite(loss):
            first_bad = i
            break
    x_val, y_val = val_arrays(data)
    acc = None
    if first_bad is None:
        acc = float(np.mean(np.argmax(model(x_val, training=False).numpy(), -1) == y_val))
    finite = [v for v in losses if math.isfinite(v)]
    result = {
        "config": name,
        "overrides": overrides,
        "seed": seed,
        "first_nonfinite_step": first_bad,
        "steps_run": len(losses),
        "init_loss": losses[0],
        "init_max_abs_logit": float(np.max(np.abs(logits0))),
        "init_activation_std": scales,
        "max_grad_norm": max(g for g in grad_norms if math.isfinite(g)) if grad_norms else None,
        "max_abs_logit": max(m for m in max_logits if math.isfinite(m)) if max_logits else None,
        "first_grad_norms": grad_norms[:10],
        "first_losses": losses[:10],
        "last_finite_loss": finite[-1] if finite else None,
        "val_acc_after": acc,
    }
    print(
        f"  {name:28s} seed={seed} first non-finite step={first_bad} init loss={losses[0]:.3g} "
        f"init max|logit|={result['init_max_abs_logit']:.3g} "
        f"max grad norm={result['max_grad_norm']:.3g} "
        f"val acc={'-' if acc is None else f'{acc * 100:.1f}'}",
        flush=True,
    )
    return result
