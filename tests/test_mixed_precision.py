"""Mixed precision: float16/bfloat16 compute, float32 variables, exact zeros and exact counts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import kprune  # noqa: E402
from kprune import data, models, train  # noqa: E402
from kprune.masks import optimizer_slots  # noqa: E402
from kprune.workflows import training  # noqa: E402


@pytest.fixture
def policy(request):
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(request.param)
    yield request.param
    keras.mixed_precision.set_dtype_policy(previous)


def toy(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 20)).astype("float32")
    y = rng.integers(0, 4, 256).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(4, name="logits"),
        ]
    )
    return model, x, y


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_masks_and_schedule_under_mixed_precision(policy):
    keras.utils.set_random_seed(0)
    model, x, y = toy()
    schedule = kprune.LinearSparsity(0.0, 0.7, begin_step=0, end_step=30, frequency=5)
    pruned = kprune.prune(model, schedule, scope="layer")
    pruned.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Keras wraps the optimizer for float16 (dynamic loss scaling); its step is the inner one's.
    expected_optimizer = "LossScaleOptimizer" if policy == "mixed_float16" else "SGD"
    assert type(pruned.optimizer).__name__ == expected_optimizer
    pruned.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[kprune.PruningCallback()])
    assert int(pruned.optimizer.iterations.numpy()) == 40  # no step skipped here
    compute = policy.split("_")[1]
    for wrapper in kprune.api.pruning_wrappers(pruned):
        assert wrapper.compute_dtype == compute
        kernel, mask = wrapper.layer.kernel, wrapper.masks[0]
        assert kernel.dtype == "float32" and mask.dtype == "float32"
        values, bits = kernel.numpy(), mask.numpy()
        assert set(np.unique(bits)) == {0.0, 1.0}
        assert np.count_nonzero(bits == 0) == round(0.7 * bits.size)  # exact count per tensor
        assert np.all(values[bits == 0] == 0.0)  # exact zeros, not float16 underflow
        assert np.count_nonzero(values[bits == 1]) == np.count_nonzero(bits)
        # The momentum of pruned weights is zero: the slot lookup reaches the inner optimizer.
        slots = optimizer_slots(pruned.optimizer, kernel)
        assert [s.name.rsplit("_", 1)[-1] for s in slots] == ["momentum"]
        assert np.all(slots[0].numpy()[bits == 0] == 0.0)
    assert pruned(x[:4]).dtype == compute


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_steps_skipped_by_loss_scaling_do_not_advance_the_schedule(policy):
    keras.utils.set_random_seed(0)
    model, x, y = toy()
    # The schedule ends beyond training, so the final sparsity tells at which step the last
    # update ran: s(t) = 0.9 * t / 100.
    schedule = kprune.LinearSparsity(0.0, 0.9, begin_step=0, end_step=100, frequency=1)
    pruned = kprune.prune(model, schedule, scope="global")
    # A loss scale of 2**40 overflows float16 gradients: the first steps are skipped (weights,
    # step and learning rate unchanged) while the scale halves until the gradients are finite.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9), initial_scale=2.0**40, dynamic_growth_steps=10**6
    )
    pruned.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = 5 * 8
    pruned.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[kprune.PruningCallback()])
    steps = int(pruned.optimizer.iterations.numpy())
    skipped = batches - steps
    assert skipped > 0
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** (40 - skipped)
    total = 20 * 32 + 32 * 4
    zeros = kprune.sparsity_report(pruned)["pruned"]
    # The last batch ran the forward pass of step `steps - 1`: its update set the final masks.
    assert zeros["total"] - zeros["nonzero"] == round(0.9 * (steps - 1) / 100 * total)
    assert zeros["total"] - zeros["nonzero"] != round(0.9 * (batches - 1) / 100 * total)
    for wrapper in kprune.api.pruning_wrappers(pruned):
        values, bits = wrapper.layer.kernel.numpy(), wrapper.masks[0].numpy()
        assert np.all(values[bits == 0] == 0.0)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_command_line_mixed_precision_reaches_the_exact_target(precision, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"--model_dir={run_dir}", f"--mixed_precision={precision}", "--epochs=2"]
    args += ["--batch_size=64", "--progress=none", "--target_sparsity=0.8"]
    assert train.cli(["kprune.train", *args]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    prunable = 64 * 300 + 300 * 100 + 100 * 10
    assert results["flags"]["mixed_precision"] == precision
    assert results["nonzero_prunable_params"] == prunable - round(0.8 * prunable)
    assert results["total_steps"] == 2 * 23
    model = keras.models.load_model(run_dir / "model.keras")  # stripped, float32 weights
    assert {w.dtype for w in model.weights} == {"float32"}
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the run restored it


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_resume_under_loss_scaling_is_bit_exact(policy, tmp_path):
    """The checkpoint holds the loss scale: a resumed float16 run skips the steps it would."""
    config = training.TrainConfig(epochs=2, learning_rate=0.05)

    def run(run_dir, callbacks=()):
        keras.utils.set_random_seed(4)
        digits = data.load_dataset("digits", batch_size=128, seed=4)  # 12 steps per epoch
        base = models.lenet300_100(digits.input_shape, digits.num_classes)
        model = kprune.prune(base, kprune.LinearSparsity(0.0, 0.8, 0, 20, frequency=2))
        results = training.fit_and_evaluate(
            model, digits, config, run_dir=run_dir, callbacks=callbacks, verbose=0
        )
        return model, results

    reference, expected = run(tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", callbacks=[StopAfterFirstEpoch()])
    resumed, results = run(tmp_path / "run")
    assert type(resumed.optimizer).__name__ == "LossScaleOptimizer"
    assert results["resumed_at_epoch"] == 1
    assert results["total_steps"] == expected["total_steps"] <= 24
    assert float(resumed.optimizer.dynamic_scale.numpy()) == float(
        reference.optimizer.dynamic_scale.numpy()
    )
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
