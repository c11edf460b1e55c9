"""Training with fit and with a custom loop: schedules advance, zeros stay exact, state saves."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from kprune.schedules import ConstantSparsity, CyclicalSparsity, LinearSparsity


def mlp(n_in=20, hidden=32, n_out=4):
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(n_out, name="logits"),
        ]
    )


def toy_data(n=256, n_in=20, n_out=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    y = (np.abs(x[:, :n_out]).argmax(axis=1)).astype("int32")
    return x, y


def compile_model(model, optimizer=None, **kwargs):
    model.compile(
        optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def masked_zero_counts(model):
    out = {}
    for path, mask in kprune.get_masks(model).items():
        out[path] = int((mask == 0).sum())
    return out


def check_exact_zeros(model):
    """Every pruned weight is exactly zero and masks contain only 0/1."""
    for wrapper in kprune.api.pruning_wrappers(model):
        for w, m in zip(wrapper.pruned_weights, wrapper.masks):
            mask = m.numpy()
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert np.all(w.numpy()[mask == 0] == 0.0)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_fit_reaches_exact_layer_sparsity(jit_compile):
    x, y = toy_data()
    schedule = LinearSparsity(0.0, 0.9, begin_step=0, end_step=30, frequency=7)
    model = compile_model(kprune.prune(mlp(), schedule, scope="layer"), jit_compile=jit_compile)
    history = model.fit(
        x, y, batch_size=32, epochs=5, verbose=0, callbacks=[kprune.PruningCallback()]
    )
    assert int(model.optimizer.iterations.numpy()) == 40
    # Layer scope: every kernel has exactly round(0.9 * n) zeros.
    assert masked_zero_counts(model) == {"hidden/kernel": 576, "logits/kernel": 115}
    check_exact_zeros(model)
    # Logged sparsity rises with the schedule and ends at the target.
    logged = history.history["sparsity"]
    assert logged == sorted(logged) and logged[-1] == pytest.approx(691 / 768)


def test_global_scope_prunes_round_s_n_in_total():
    x, y = toy_data()
    schedule = LinearSparsity(0.0, 0.75, begin_step=0, end_step=16, frequency=4)
    model = compile_model(kprune.prune(mlp(), schedule, scope="global"))
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[kprune.PruningCallback()])
    counts = masked_zero_counts(model)
    assert sum(counts.values()) == round(0.75 * (20 * 32 + 32 * 4))
    assert counts["hidden/kernel"] != round(0.75 * 640)  # not a per-layer split
    check_exact_zeros(model)


def test_masks_only_shrink_during_magnitude_pruning():
    x, y = toy_data()
    schedule = LinearSparsity(0.0, 0.8, begin_step=0, end_step=24, frequency=8)
    model = compile_model(kprune.prune(mlp(), schedule, scope="layer"), jit_compile=False)
    callback = kprune.PruningCallback()
    previous = None
    for _ in range(4):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
        masks = kprune.get_masks(model)
        if previous is not None:
            for path, mask in masks.items():
                assert np.all(mask <= previous[path])
        previous = masks
    assert masked_zero_counts(model)["hidden/kernel"] == 512


def test_pruned_weights_stay_zero_under_adam_with_weight_decay():
    x, y = toy_data()
    model = compile_model(
        kprune.prune(mlp(), ConstantSparsity(0.5, begin_step=0), scope="layer"),
        optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.1),
    )
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[kprune.PruningCallback()])
    check_exact_zeros(model)
    assert masked_zero_counts(model) == {"hidden/kernel": 320, "logits/kernel": 64}


def test_optimizer_slots_are_zeroed_where_weights_are_pruned():
    x, y = toy_data()
    # Momentum builds up for 8 dense steps, then half the weights are pruned at step 8.
    model = compile_model(
        kprune.prune(mlp(), ConstantSparsity(0.5, begin_step=8)), jit_compile=False
    )
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[kprune.PruningCallback()])
    optimizer = model.optimizer
    wrapper = model.get_layer("hidden")
    kernel, mask = wrapper.pruned_weights[0], wrapper.masks[0].numpy()
    slots = kprune.masks.optimizer_slots(optimizer, kernel)
    assert len(slots) == 1
    momentum = slots[0].numpy()
    assert np.all(momentum[mask == 0] == 0.0) and np.any(momentum[mask == 1] != 0.0)


def test_steps_per_execution_keeps_schedule_on_optimizer_steps():
    x, y = toy_data()
    schedule = LinearSparsity(0.0, 0.5, begin_step=0, end_step=10, frequency=5)
    model = compile_model(kprune.prune(mlp(), schedule, scope="layer"), steps_per_execution=4)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[kprune.PruningCallback()])
    assert int(model.optimizer.iterations.numpy()) == 16
    assert masked_zero_counts(model) == {"hidden/kernel": 320, "logits/kernel": 64}


def test_same_seed_same_masks():
    def run():
        keras.backend.clear_session()
        keras.utils.set_random_seed(7)
        x, y = toy_data()
        schedule = LinearSparsity(0.0, 0.7, begin_step=0, end_step=20, frequency=5)
        model = compile_model(kprune.prune(mlp(), schedule, scope="global"))
        model.fit(
            x,
            y,
            batch_size=32,
            epochs=3,
            verbose=0,
            shuffle=False,
            callbacks=[kprune.PruningCallback()],
        )
        return kprune.get_masks(model)

    first, second = run(), run()
    assert first.keys() == second.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], second[path])


def test_save_mid_pruning_and_resume_matches_uninterrupted(tmp_path):
    x, y = toy_data()

    def fresh():
        keras.backend.clear_session()
        keras.utils.set_random_seed(3)
        schedule = LinearSparsity(0.0, 0.8, begin_step=0, end_step=40, frequency=4)
        return compile_model(kprune.prune(mlp(), schedule), jit_compile=False)

    fit = dict(batch_size=32, verbose=0, shuffle=False)
    straight = fresh()
    straight.fit(x, y, epochs=6, callbacks=[kprune.PruningCallback()], **fit)

    first_half = fresh()
    first_half.fit(x, y, epochs=3, callbacks=[kprune.PruningCallback()], **fit)
    path = tmp_path / "mid.keras"
    first_half.save(path)
    masks_at_save = kprune.get_masks(first_half)

    resumed = keras.models.load_model(path)
    assert int(resumed.optimizer.iterations.numpy()) == 24
    for key, mask in kprune.get_masks(resumed).items():
        np.testing.assert_array_equal(mask, masks_at_save[key])
    resumed.fit(x, y, epochs=3, callbacks=[kprune.PruningCallback()], **fit)
    for key, mask in kprune.get_masks(resumed).items():
        np.testing.assert_array_equal(mask, kprune.get_masks(straight)[key])
    np.testing.assert_allclose(
        resumed.predict(x, verbose=0), straight.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_fit_from_dense_to_90_percent_keeps_learning():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 20)).astype("float32")
    y = (x[:, :10].sum(axis=1) > 0).astype("int32")
    schedule = LinearSparsity(0.0, 0.9, begin_step=0, end_step=160, frequency=16)
    model = compile_model(kprune.prune(mlp(n_out=2, hidden=64), schedule, scope="global"))
    model.fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[kprune.PruningCallback()])
    report = kprune.sparsity_report(model)
    assert report["pruned"]["sparsity"] == pytest.approx(0.9, abs=1 / report["pruned"]["total"])
    _, accuracy = model.evaluate(x, y, verbose=0)
    assert accuracy > 0.85


def test_custom_training_loop_with_bind_optimizer():
    x, y = toy_data()
    schedule = LinearSparsity(0.0, 0.6, begin_step=0, end_step=10, frequency=5)
    model = kprune.prune(mlp(), schedule, scope="layer")
    optimizer = keras.optimizers.Adam(0.01)
    groups = kprune.bind_optimizer(model, optimizer)
    assert len(groups) == 1 and groups[0].leader is model.get_layer("hidden")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    for i in range(12):
        step(x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16])
    assert masked_zero_counts(model) == {"hidden/kernel": 384, "logits/kernel": 77}
    check_exact_zeros(model)


def test_cyclical_restart_unmasks_pruned_weights_and_they_move_again():
    x, y = toy_data()
    schedule = CyclicalSparsity(0.8, begin_step=0, end_step=31, cycles=2, frequency=4)
    model = compile_model(kprune.prune(mlp(), schedule, scope="layer"), jit_compile=False)
    callback = kprune.PruningCallback()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])  # steps 0..15
    pruned_in_cycle_1 = kprune.get_masks(model)["hidden/kernel"] == 0
    assert int(pruned_in_cycle_1.sum()) == 512
    # Steps 16 and 17: cycle 2 restarts at 0%, every weight is unmasked and trains again.
    model.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert np.all(kprune.get_masks(model)["hidden/kernel"] == 1)
    kernel = model.get_layer("hidden").pruned_weights[0].numpy()
    assert np.count_nonzero(kernel[pruned_in_cycle_1]) > 0

    # A monotone schedule never lets them move again.
    keras.backend.clear_session()
    linear = LinearSparsity(0.0, 0.8, begin_step=0, end_step=15, frequency=4)
    monotone = compile_model(kprune.prune(mlp(), linear), jit_compile=False)
    monotone.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()])
    pruned = kprune.get_masks(monotone)["hidden/kernel"] == 0
    monotone.fit(
        x[:32], y[:32], batch_size=16, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()]
    )
    kernel = monotone.get_layer("hidden").pruned_weights[0].numpy()
    assert np.count_nonzero(kernel[pruned]) == 0


def test_tensorboard_sparsity_scalars(tmp_path):
    x, y = toy_data()
    model = compile_model(kprune.prune(mlp(), ConstantSparsity(0.5)), jit_compile=False)
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[kprune.PruningCallback(log_dir=tmp_path, per_layer=True)],
    )
    events = list((tmp_path / "pruning").glob("events.out.tfevents.*"))
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in event.summary.value:
            tags.add(value.tag)
    assert {"sparsity/global", "sparsity/hidden/kernel", "sparsity/logits/kernel"} <= tags
    assert "sparsity/hidden/kernel" in model.history.history
