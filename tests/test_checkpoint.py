"""The one checkpoint format: what it holds, falling back past damage, refusing a wrong plan."""

import logging

import keras
import numpy as np
import pytest

import kprune
from kprune import data
from kprune.workflows import checkpoint as ckpt
from kprune.workflows import training

LOGGER = "kprune.workflows.checkpoint"


@pytest.fixture
def policy(request):
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(request.param)
    yield request.param
    keras.mixed_precision.set_dtype_policy(previous)


def toy_model(seed=0, optimizer=None):
    keras.utils.set_random_seed(seed)
    base = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="h"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dropout(0.2, name="drop"),
            keras.layers.Dense(3, name="o"),
        ]
    )
    model = kprune.prune(base, kprune.LinearSparsity(0.0, 0.5, 0, 8, frequency=2))
    model.compile(
        optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def toy_fit(model, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[kprune.PruningCallback()])


def values(variables):
    return [np.array(v.numpy(), copy=True) for v in variables]


def assert_same(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"], indirect=True)
def test_a_checkpoint_holds_masks_statistics_seeds_slots_and_loss_scale(policy, tmp_path):
    model = toy_model()
    toy_fit(model)  # 2 epochs of 4 steps
    saved = ckpt.TrainingCheckpoint(tmp_path, model)
    saved.save(2)
    want_model, want_optimizer = values(model.variables), values(model.optimizer.variables)
    paths = {v.path for v in [*model.variables, *model.optimizer.variables]}
    assert any(p.endswith("kernel_mask") for p in paths)
    assert any("moving_variance" in p for p in paths) and any("seed_generator" in p for p in paths)
    assert any(p.endswith("momentum") for p in paths)
    if policy == "mixed_float16":
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert {"loss_scale_optimizer/dynamic_scale", "loss_scale_optimizer/step_counter"} <= paths
    assert 0 < kprune.sparsity_report(model)["pruned"]["sparsity"]

    fresh = toy_model(seed=1)  # other initial weights, unbuilt optimizer
    assert ckpt.TrainingCheckpoint(tmp_path, fresh).restore(epochs=3, steps_per_epoch=4) == 2
    assert_same(values(fresh.variables), want_model)
    assert_same(values(fresh.optimizer.variables), want_optimizer)


def test_a_cut_short_latest_falls_back_and_says_so(tmp_path, caplog):
    model = toy_model()
    saver = ckpt.TrainingCheckpoint(tmp_path, model)
    model.optimizer.iterations.assign(4)
    saver.save(1)
    after_one = values(model.variables)
    model.optimizer.iterations.assign(8)
    model.get_layer("o").layer.kernel.assign(np.ones((8, 3)))
    saver.save(2)
    assert ckpt.saved_epochs(tmp_path) == [1, 2]
    (data_file,) = tmp_path.glob("ckpt-2.data-*")
    data_file.write_bytes(data_file.read_bytes()[:200])

    fresh = toy_model(seed=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        epoch = ckpt.TrainingCheckpoint(tmp_path, fresh).restore(epochs=3, steps_per_epoch=4)
    assert epoch == 1
    assert "ckpt-2 cannot be read" in caplog.text and "falling back to the previous" in caplog.text
    assert "Resuming from checkpoint" in caplog.text and "ckpt-1" in caplog.text
    assert_same(values(fresh.variables), after_one)
    assert int(fresh.optimizer.iterations.numpy()) == 4

    # Nothing readable at all: an error that says what to do, not a silent fresh start.
    (data_file,) = tmp_path.glob("ckpt-1.data-*")
    data_file.write_bytes(b"")
    with pytest.raises(RuntimeError, match="No checkpoint in .* can be read.*Delete"):
        ckpt.TrainingCheckpoint(tmp_path, toy_model()).restore(epochs=3, steps_per_epoch=4)


def test_a_checkpoint_of_another_model_is_not_loaded(tmp_path):
    model = toy_model()
    model.optimizer.iterations.assign(4)
    ckpt.TrainingCheckpoint(tmp_path, model).save(1)
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    other.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="ckpt-1"):
        ckpt.TrainingCheckpoint(tmp_path, other).restore(epochs=3, steps_per_epoch=4)


def test_an_empty_state_file_hides_no_checkpoint(tmp_path, caplog):
    model = toy_model()
    model.optimizer.iterations.assign(4)
    ckpt.TrainingCheckpoint(tmp_path, model).save(1)
    (tmp_path / "checkpoint").write_text("")
    fresh = toy_model()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        saver = ckpt.TrainingCheckpoint(tmp_path, fresh)
        assert saver.restore(epochs=3, steps_per_epoch=4) == 1
        fresh.optimizer.iterations.assign(8)
        saver.save(2)
    assert "state file" in caplog.text and "damaged" in caplog.text
    assert ckpt.saved_epochs(tmp_path) == [1, 2]
    assert "ckpt-2" in (tmp_path / "checkpoint").read_text()


@pytest.mark.parametrize(
    "epoch, step, message",
    [
        (99, 99 * 4, "at epoch 99, outside this run's 1..3 epochs"),
        (2, 12, "optimizer step 12 after epoch 2"),  # ahead of its epoch
        (2, 7, "optimizer step 7 after epoch 2"),  # behind it, without loss scaling
    ],
)
def test_a_checkpoint_that_contradicts_the_plan_is_refused(tmp_path, epoch, step, message):
    model = toy_model()
    model.optimizer.iterations.assign(step)
    ckpt.TrainingCheckpoint(tmp_path, model).save(epoch)
    with pytest.raises(ValueError, match=message) as error:
        ckpt.TrainingCheckpoint(tmp_path, toy_model()).restore(epochs=3, steps_per_epoch=4)
    assert "not trained on" in str(error.value) and "delete" in str(error.value)


def test_fewer_steps_are_accepted_only_where_loss_scaling_skips_steps(tmp_path):
    scaled = toy_model(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    scaled.optimizer.iterations.assign(6)  # two of 8 steps skipped on overflow
    ckpt.TrainingCheckpoint(tmp_path / "scaled", scaled).save(2)
    again = toy_model(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    restored = ckpt.TrainingCheckpoint(tmp_path / "scaled", again)
    assert restored.restore(epochs=3, steps_per_epoch=4) == 2
    assert int(again.optimizer.iterations.numpy()) == 6
    # A lottery round that starts at step 5 cannot have a checkpoint from epoch 1 (step 4).
    early = toy_model()
    early.optimizer.iterations.assign(4)
    ckpt.TrainingCheckpoint(tmp_path / "early", early).save(1)
    with pytest.raises(ValueError, match="starting from step 5"):
        ckpt.TrainingCheckpoint(tmp_path / "early", toy_model()).restore(
            epochs=3, steps_per_epoch=4, start_step=5
        )


class Started(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.started = False

    def on_train_begin(self, logs=None):
        self.started = True


def digits_run(run_dir, config, batch_size=128, callbacks=(), dropout=False):
    keras.utils.set_random_seed(4)
    digits = data.load_dataset("digits", batch_size=batch_size, seed=4)
    layers = [keras.Input(digits.input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(32, activation="relu", name="h")]
    layers += [keras.layers.Dropout(0.3)] if dropout else []
    model = keras.Sequential([*layers, keras.layers.Dense(digits.num_classes, name="o")])
    pruned = kprune.prune(model, kprune.LinearSparsity(0.0, 0.5, 0, 20, frequency=2))
    results = training.fit_and_evaluate(
        pruned, digits, config, run_dir=run_dir, callbacks=callbacks, verbose=0
    )
    return pruned, results


def test_fit_and_evaluate_refuses_a_run_directory_of_another_plan(tmp_path):
    digits_run(tmp_path, training.TrainConfig(epochs=2, learning_rate=0.05))  # 12 steps/epoch
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    for config, batch_size, message in (
        (training.TrainConfig(epochs=1, learning_rate=0.05), 128, "epoch 2, outside"),
        (training.TrainConfig(epochs=2, learning_rate=0.05), 64, "step 24 after epoch 2"),
    ):
        started = Started()
        with pytest.raises(ValueError, match=message):
            digits_run(tmp_path, config, batch_size=batch_size, callbacks=[started])
        assert not started.started  # never trained on
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    assert after == before


class StopAfter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_dropout_resumes_bit_for_bit_with_its_seed_state(tmp_path):
    config = training.TrainConfig(epochs=2, learning_rate=0.05)
    reference, _ = digits_run(tmp_path / "reference", config, dropout=True)
    with pytest.raises(KeyboardInterrupt):
        digits_run(tmp_path / "run", config, callbacks=[StopAfter()], dropout=True)
    resumed, results = digits_run(tmp_path / "run", config, dropout=True)
    assert results["resumed_at_epoch"] == 1 and results["epochs_run"] == 1
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


class Diverge(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2:
            kernel = self.model.get_layer("o").layer.kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_a_diverged_epoch_is_not_checkpointed(tmp_path, caplog):
    config = training.TrainConfig(epochs=2, learning_rate=0.05)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, results = digits_run(tmp_path, config, callbacks=[Diverge()])
    assert results["diverged"]
    assert ckpt.saved_epochs(tmp_path / "checkpoints") == []
    assert "no checkpoint written" in caplog.text


def test_a_backup_of_the_old_format_is_not_resumed_and_says_so(tmp_path, caplog):
    (tmp_path / "training_metadata.json").write_text('{"epoch": 99, "batch": 0}')
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert (
            ckpt.TrainingCheckpoint(tmp_path, toy_model()).restore(epochs=3, steps_per_epoch=4) == 0
        )
    assert "format of kprune 0.1" in caplog.text
