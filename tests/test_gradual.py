"""kprune.workflows.gradual and .training: windows, schedules, learning rate, loss, resume."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import kprune  # noqa: E402
from kprune import data  # noqa: E402
from kprune.api import pruning_wrappers  # noqa: E402
from kprune.workflows import gradual, training  # noqa: E402


def toy_data(batch_size=16, n_train=96, n_test=32, features=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, features)).astype("float32") * 2
    y = rng.integers(0, classes, n_train + n_test).astype("int32")
    x = (centers[y] + rng.normal(size=(len(y), features))).astype("float32")
    make = tf.data.Dataset.from_tensor_slices
    return data.Dataset(
        name="toy",
        input_shape=(features,),
        num_classes=classes,
        train_size=n_train,
        test_size=n_test,
        train=make((x[:n_train], y[:n_train])).shuffle(n_train, seed=seed).batch(batch_size),
        test=make((x[n_train:], y[n_train:])).batch(batch_size),
        batch_size=batch_size,
    )


def toy_model(features=16, classes=3):
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(classes, name="logits"),
        ]
    )


# -- pruning window ---------------------------------------------------------------------------
def test_fractions_become_steps_and_steps_override_them():
    assert gradual.pruning_window(1000) == gradual.PruningWindow(0, 750, 10)
    assert gradual.pruning_window(1000, begin=0.1, end=1.0, frequency=0.0001) == (
        gradual.PruningWindow(100, 999, 1)
    )
    window = gradual.pruning_window(1000, begin=0.5, begin_step=3, end_step=500, frequency_steps=7)
    assert window == gradual.PruningWindow(3, 500, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"end_step": 1000}, "beyond training: the last step is 999"),
        ({"begin": 0.5, "end": 0.5}, "must begin before it ends"),
        ({"end": 1.5}, "fraction of training"),
        ({"frequency_steps": 0}, "frequency_steps"),
        ({"begin_step": -1}, "begin_step"),
    ],
)
def test_bad_windows_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradual.pruning_window(1000, **kwargs)


# -- schedules --------------------------------------------------------------------------------
def test_make_schedule_builds_each_method():
    window = gradual.PruningWindow(10, 200, 5)
    assert gradual.make_schedule("dense", 0.9, window) is None
    linear = gradual.make_schedule("linear", 0.9, window, initial_sparsity=0.1)
    assert linear == kprune.LinearSparsity(0.1, 0.9, 10, 200, frequency=5)
    poly = gradual.make_schedule("polynomial", 0.8, window, power=2.0)
    assert poly == kprune.PolynomialDecay(0.0, 0.8, 10, 200, power=2.0, frequency=5)
    cyc = gradual.make_schedule("cyclical", 0.7, window, cycles=2, cycle_ramp="cubic")
    assert cyc == kprune.CyclicalSparsity(0.7, 10, 200, cycles=2, ramp="cubic", frequency=5)
    with pytest.raises(ValueError, match="method"):
        gradual.make_schedule("snip", 0.9, window)


@pytest.mark.parametrize("method", ["linear", "polynomial", "cyclical"])
def test_update_steps_match_the_schedule_step_by_step(method):
    schedule = gradual.make_schedule(method, 0.9, gradual.PruningWindow(3, 47, 6), cycles=2)
    expected = []
    for step in range(60):
        should, target = schedule(tf.constant(step, tf.int64))
        if bool(should):
            expected.append((step, float(target)))
    got = gradual.update_steps(schedule, 60)
    assert [s for s, _ in got] == [s for s, _ in expected]
    np.testing.assert_allclose([t for _, t in got], [t for _, t in expected], rtol=1e-6)
    assert got[-1][0] == 47  # the end step is always an update, off the 6-step grid


# -- learning rate, loss, weight decay ----------------------------------------------------------
def test_warmup_decay_values_by_hand():
    step = training.WarmupDecay(0.1, 100, kind="step", boundaries=(50, 75), warmup_steps=10)
    values = [float(step(s)) for s in (0, 4, 9, 49, 50, 74, 75, 99)]
    np.testing.assert_allclose(values, [0.01, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
    cosine = training.WarmupDecay(0.2, 101, kind="cosine")
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * s / 100)) for s in (0, 25, 50, 100)]
    np.testing.assert_allclose([float(cosine(s)) for s in (0, 25, 50, 100)], expected, atol=1e-7)
    assert float(training.WarmupDecay(0.3, 10)(9)) == pytest.approx(0.3)


def test_epochs_become_steps_in_the_optimizer():
    config = training.TrainConfig(
        epochs=10, lr_schedule="step", lr_decay_epochs=(5, 7.5), lr_warmup_epochs=1
    )
    lr = training.make_optimizer(config, steps_per_epoch=8)._learning_rate
    assert (lr.boundaries, lr.warmup_steps, lr.total_steps) == ((40, 60), 8, 80)


def test_learning_rate_and_loss_serialize_round_trip():
    lr = training.WarmupDecay(0.1, 100, kind="step", boundaries=(50,), factor=0.5, warmup_steps=3)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(lr))
    assert type(again) is training.WarmupDecay and again.get_config() == lr.get_config()
    loss = training.SparseCrossentropy(label_smoothing=0.1)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(again) is training.SparseCrossentropy and again.label_smoothing == 0.1


def test_label_smoothed_crossentropy_matches_numpy():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]], "float32")
    labels = np.array([2, 0])
    smooth = 0.1
    target = np.full((2, 3), smooth / 3) + (1 - smooth) * np.eye(3)[labels]
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = float(np.mean(-(target * log_p).sum(1)))
    assert float(training.SparseCrossentropy(smooth)(labels, logits)) == pytest.approx(expected)


def test_weight_decay_is_coupled_l2_on_every_trainable_variable():
    model = toy_model()
    model.build((None, 16))
    training.apply_weight_decay(model, 5e-4)
    penalty = float(sum(model.losses))
    squares = sum(float(np.sum(np.square(v.numpy()))) for v in model.trainable_variables)
    assert penalty == pytest.approx(5e-4 / 2 * squares, rel=1e-5)
    with tf.GradientTape() as tape:
        total = tf.add_n(model.losses)
    grads = tape.gradient(total, model.trainable_variables)
    for g, v in zip(grads, model.trainable_variables):  # d/dw (wd/2 |w|^2) = wd * w
        np.testing.assert_allclose(g.numpy(), 5e-4 * v.numpy(), rtol=1e-5, atol=1e-12)
    training.apply_weight_decay(model, 0.0)
    assert model.losses == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"lr_schedule": "step"}, "needs `lr_decay_epochs`"),
        ({"lr_decay_epochs": (20, 10)}, "strictly increasing"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_train_config_names_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**kwargs)


# -- training -----------------------------------------------------------------------------------
def test_dense_method_trains_without_wrappers():
    keras.utils.set_random_seed(0)
    stripped, results = gradual.train_gradual(
        toy_model(), toy_data(), None, training.TrainConfig(epochs=3, learning_rate=0.05), verbose=0
    )
    assert not kprune.api.pruning_wrappers(stripped)
    assert results["schedule"] is None and results["sparsity"]["pruned"] is None
    assert results["total_steps"] == 3 * 6 and results["test_accuracy"] > 0.6


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_its_schedule_from_the_checkpoint(tmp_path):
    data_ = toy_data()
    config = training.TrainConfig(epochs=4, learning_rate=0.05)
    schedule = gradual.make_schedule("linear", 0.75, gradual.PruningWindow(0, 23, 2))

    def fresh():
        keras.utils.set_random_seed(0)
        return kprune.prune(toy_model(), schedule, scope="global")

    first = fresh()
    with pytest.raises(KeyboardInterrupt):
        training.fit_and_evaluate(
            first, data_, config, run_dir=tmp_path, callbacks=[Interrupt()], verbose=0
        )
    assert int(first.optimizer.iterations.numpy()) == 12
    half = kprune.sparsity_report(first)["pruned"]["sparsity"]
    assert 0.25 < half < 0.5  # mid-schedule (about 0.75 * 11/23)
    second = fresh()
    results = training.fit_and_evaluate(second, data_, config, run_dir=tmp_path, verbose=0)
    assert results["total_steps"] == 24 and results["epochs_run"] == 2
    pruned = kprune.sparsity_report(second)["pruned"]
    assert pruned["total"] - pruned["nonzero"] == round(0.75 * pruned["total"])


def test_mixed_precision_pruning_keeps_exact_sparsity():
    """Regression: mask updates inside a bfloat16 call cast to the stored float32 dtype."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        schedule = kprune.LinearSparsity(0.0, 0.6, 0, 10, frequency=2)
        pruned = kprune.prune(toy_model(), schedule, scope="layer")
        results = training.fit_and_evaluate(
            pruned, toy_data(), training.TrainConfig(epochs=2), verbose=0
        )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert results["total_steps"] == 12
    for wrapper in kprune.api.pruning_wrappers(pruned):
        kernel = wrapper.layer.kernel
        assert kernel.dtype == "float32"
        assert np.count_nonzero(kernel.numpy()) == kernel.shape[0] * kernel.shape[1] - round(
            0.6 * kernel.shape[0] * kernel.shape[1]
        )


# -- issue 14: learning rate coupled to the window, per-tensor budgets ---------------------------
def test_hold_cosine_holds_until_the_window_end_then_decays_to_zero():
    lr = training.WarmupDecay(0.05, 641, kind="hold_cosine", hold_steps=480)
    values = [float(lr(s)) for s in (0, 240, 480, 560, 640)]
    assert values[:3] == pytest.approx([0.05] * 3)
    assert values[3] == pytest.approx(0.025, rel=1e-5) and values[4] == pytest.approx(0, abs=1e-9)
    warm = training.WarmupDecay(0.1, 100, kind="hold_cosine", hold_steps=50, warmup_steps=10)
    assert float(warm(4)) == pytest.approx(0.05) and float(warm(50)) == pytest.approx(0.1)
    # No window end: the plain cosine.
    plain = training.make_learning_rate(
        training.TrainConfig(epochs=2, lr_schedule="hold_cosine"), 5
    )
    cosine = training.make_learning_rate(training.TrainConfig(epochs=2, lr_schedule="cosine"), 5)
    assert [float(plain(s)) for s in range(10)] == [float(cosine(s)) for s in range(10)]
    config = training.TrainConfig(epochs=2, lr_schedule="hold_cosine", lr_hold_end_step=10)
    with pytest.raises(ValueError, match="beyond training"):
        training.make_learning_rate(config, 5)
    assert (
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(lr)).hold_steps
        == 480
    )


def _erk_run(seed):
    keras.utils.set_random_seed(seed)
    ds = toy_data(seed=0)
    model = toy_model()
    total = 4 * ds.steps_per_epoch
    window = gradual.pruning_window(total, end=0.5, frequency_steps=2)
    schedule = gradual.make_schedule("linear", 0.9, window)
    config = training.TrainConfig(epochs=4, learning_rate=0.05, lr_schedule="hold_cosine")
    return gradual.train_gradual(model, ds, schedule, config, budget="erk", verbose=0)


def test_erk_budget_gives_exact_counts_per_tensor_and_is_deterministic():
    from kprune.allocation import erk_prune_counts

    stripped, results = _erk_run(0)
    shapes = [(16, 32), (32, 3)]
    expected = erk_prune_counts(shapes, 0.9)
    zeros = [int(np.sum(stripped.get_layer(n).kernel.numpy() == 0)) for n in ("hidden", "logits")]
    assert zeros == expected
    assert sum(zeros) == round(0.9 * (16 * 32 + 32 * 3))
    assert results["budget"] == "erk" and results["scope"] == "erk"
    assert results["lr_hold_end_step"] == 12  # the window's end step (24 steps, end 0.5)
    again, _ = _erk_run(0)
    for a, b in zip(stripped.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_erk_ramp_is_linear_in_every_tensor():
    import tensorflow as tf

    from kprune.allocation import layer_budgets

    ds = toy_data()
    model = toy_model()
    schedule = gradual.make_schedule("linear", 0.9, gradual.PruningWindow(0, 20, 5))
    layers = [model.get_layer("hidden"), model.get_layer("logits")]
    scaled = [s for s, _ in layer_budgets(layers, schedule, "erk")]
    for s in scaled:
        targets = [float(s(tf.constant(t, tf.int64))[1]) for t in (0, 5, 10, 15, 20)]
        np.testing.assert_allclose(np.diff(targets), s.final_sparsity / 4, rtol=1e-6)
    sizes = [16 * 32, 32 * 3]
    mid = sum(float(s(tf.constant(10, tf.int64))[1]) * n for s, n in zip(scaled, sizes))
    # Halfway the total is half the final total, which is exactly round(0.9 * N).
    assert mid == pytest.approx(0.5 * round(0.9 * sum(sizes)), rel=1e-9)
    del ds


def test_prune_with_erk_budget_saves_and_loads(tmp_path):
    model = toy_model()
    schedule = gradual.make_schedule("polynomial", 0.8, gradual.PruningWindow(0, 20, 5))
    pruned = kprune.prune(model, schedule, budget="erk")
    targets = [w.schedule.final_sparsity for w in pruning_wrappers(pruned)]
    pruned.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert [w.schedule for w in pruning_wrappers(loaded)] == [
        w.schedule for w in pruning_wrappers(pruned)
    ]
    assert targets[0] > 0.8 > targets[1]  # the wide hidden kernel gives up more
    with pytest.raises(ValueError, match="contradicts"):
        kprune.prune(model, schedule, budget="global", scope="layer")
