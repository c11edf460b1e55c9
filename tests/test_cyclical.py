"""Cyclical pruning: schedule values, weight recovery across cycles, save/resume, tf.distribute."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from kprune.schedules import PruningSchedule

REPO = Path(__file__).resolve().parents[1]


def _at(schedule, step):
    should, sparsity = schedule(tf.constant(step, tf.int64))
    return bool(should), float(sparsity)


# -- the schedule ---------------------------------------------------------------------------
def test_cyclical_schedule_ramps_and_restarts_hand_computed():
    schedule = kprune.CyclicalSparsity(
        0.8, begin_step=10, end_step=39, cycles=3, frequency=4, cycle_start_sparsity=0.2
    )
    # 30 steps in 3 cycles: [10, 19], [20, 29], [30, 39].
    assert schedule.cycle_bounds() == [10, 20, 30, 40]
    expected = {
        0: (False, 0.0),  # before begin_step: initial sparsity, no update
        10: (True, 0.0),  # first cycle starts at initial_sparsity
        14: (True, 0.8 * 4 / 9),
        15: (False, 0.8 * 5 / 9),
        19: (True, 0.8),  # last step of a cycle: always an update, at the final sparsity
        20: (True, 0.2),  # next cycle restarts low (cycle_start_sparsity)
        24: (True, 0.2 + 0.6 * 4 / 9),
        29: (True, 0.8),
        30: (True, 0.2),
        39: (True, 0.8),  # the last cycle reaches the final sparsity on end_step
        40: (False, 0.8),  # after end_step: fixed mask at the final sparsity
        1000: (False, 0.8),
    }
    for step, (should, sparsity) in expected.items():
        got_should, got_sparsity = _at(schedule, step)
        assert got_should == should, step
        assert got_sparsity == pytest.approx(sparsity, abs=1e-6), step
    updates = [s for s in range(0, 45) if _at(schedule, s)[0]]
    assert updates == [10, 14, 18, 19, 20, 24, 28, 29, 30, 34, 38, 39]


def test_cyclical_schedule_cubic_ramp():
    schedule = kprune.CyclicalSparsity(0.9, begin_step=0, end_step=19, cycles=2, ramp="cubic")
    # Cycle 0 is [0, 9]: u = t / 9 and s = 0.9 * (1 - (1 - u) ** 3).
    for step in (0, 3, 6, 9):
        u = step / 9
        assert _at(schedule, step)[1] == pytest.approx(0.9 * (1 - (1 - u) ** 3), abs=1e-6)
    assert _at(schedule, 10)[1] == 0.0
    assert _at(schedule, 19)[1] == pytest.approx(0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cycles=0), "cycles=0"),
        (dict(ramp="sine"), "ramp='sine'"),
        (dict(end_step=4, cycles=3), "cycles=3"),
        (dict(cycle_start_sparsity=1.0), "cycle_start_sparsity=1.0"),
        (dict(final_sparsity=-0.1), "final_sparsity=-0.1"),
    ],
)
def test_cyclical_schedule_rejects_bad_arguments(kwargs, match):
    args = dict(final_sparsity=0.9, begin_step=0, end_step=99)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kprune.CyclicalSparsity(**args)


def test_cyclical_schedule_serialization_round_trip():
    schedule = kprune.CyclicalSparsity(
        0.7, 5, 104, cycles=4, ramp="cubic", initial_sparsity=0.1, cycle_start_sparsity=0.3
    )
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(again) is kprune.CyclicalSparsity and again == schedule
    assert kprune.CyclicalSparsity.from_config(schedule.get_config()) == schedule
    assert again.allows_regrowth
    for step in (0, 5, 30, 55, 104, 200):
        assert _at(again, step) == _at(schedule, step)


# -- recovery: a weight pruned in cycle 1 comes back in cycle 2 -----------------------------
# Four inputs with orthogonal columns (a 4x4 Hadamard matrix), target y = 3*x2 + 3*x3, a linear
# model without bias and MSE: the gradient is exactly 2 * (w - w_true), so with SGD(0.1) every
# active weight moves 20% of the way to its true value per step; a masked one stays at 0.
HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], "float32")
W_TRUE = np.array([0.0, 0.0, 3.0, 3.0], "float32")
W_INIT = np.array([1.0, 1.0, 0.0, 0.0], "float32")  # the useful weights start at zero
CYCLE = 8


class _MonotoneCopy(PruningSchedule):
    """The same targets as another schedule, but monotone: pruned weights never return."""

    allows_regrowth = False

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, step):
        return self.inner(step)

    def get_config(self):
        return {}


def _train_recording(schedule, steps):
    kernel_init = keras.initializers.Constant(W_INIT[:, None])
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(1, use_bias=False, name="fc", kernel_initializer=kernel_init),
        ]
    )
    pruned = kprune.prune(model, schedule)
    pruned.compile(keras.optimizers.SGD(0.1), "mse")
    masks, weights = [], []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            masks.append(kprune.get_masks(self.model)["fc/kernel"][:, 0].copy())
            weights.append(self.model.get_layer("fc").layer.kernel.numpy()[:, 0].copy())

    data = tf.data.Dataset.from_tensors((HADAMARD, (HADAMARD @ W_TRUE)[:, None])).repeat()
    pruned.fit(
        data,
        epochs=1,
        steps_per_epoch=steps,
        shuffle=False,
        callbacks=[kprune.PruningCallback(), Record()],
        verbose=0,
    )
    return np.array(masks), np.array(weights)


def test_weight_pruned_in_cycle_1_recovers_in_cycle_2_but_not_with_monotone_schedules():
    # Cycle 1 (steps 0-7) prunes half of the weights from its first step; cycle 2 (steps 8-15)
    # restarts at 0% and ramps back to 50%; then 3 steps of fine-tuning with a fixed mask.
    cyclical = kprune.CyclicalSparsity(
        0.5,
        begin_step=0,
        end_step=2 * CYCLE - 1,
        cycles=2,
        initial_sparsity=0.5,
        cycle_start_sparsity=0.0,
        frequency=1,
    )
    steps = 2 * CYCLE + 3
    masks, weights = _train_recording(cyclical, steps)
    # Rows are "after optimizer step t". Cycle 1: the two zero-initialised weights (2, 3) are
    # the smallest at step 0 and are pruned; the others decay as 0.8 ** (t + 1).
    for t in range(CYCLE):
        np.testing.assert_array_equal(masks[t], [1, 1, 0, 0])
        np.testing.assert_array_equal(weights[t][2:], [0.0, 0.0])
        np.testing.assert_allclose(weights[t][:2], [0.8 ** (t + 1)] * 2, rtol=1e-5)
    # Cycle 2 starts at 0%: weight 2, pruned through cycle 1, is active again and grows:
    # after the first step of cycle 2 it is 0.2 * 3 = 0.6, then 3 * (1 - 0.8 ** (j + 1)).
    np.testing.assert_array_equal(masks[CYCLE], [1, 1, 1, 1])
    np.testing.assert_allclose(weights[CYCLE][2:], [0.6, 0.6], rtol=1e-5)
    for j in range(CYCLE):
        assert masks[CYCLE + j][2] == 1
        np.testing.assert_allclose(weights[CYCLE + j][2], 3 * (1 - 0.8 ** (j + 1)), rtol=1e-5)
    # At the end of cycle 2 the mask has flipped: it keeps the weights that cycle 1 pruned.
    np.testing.assert_array_equal(masks[2 * CYCLE - 1], [0, 0, 1, 1])
    np.testing.assert_array_equal(masks[-1], [0, 0, 1, 1])  # fixed after end_step
    np.testing.assert_array_equal(weights[-1][:2], [0.0, 0.0])
    assert weights[-1][2] > 2.5

    # Monotone schedules cannot do this: once weight 2 is pruned it is zero for good, whether
    # the target is a LinearSparsity at 50% or exactly the cyclical targets above.
    for monotone in (
        kprune.LinearSparsity(0.5, 0.5, begin_step=0, end_step=2 * CYCLE - 1, frequency=1),
        _MonotoneCopy(cyclical),
    ):
        m_masks, m_weights = _train_recording(monotone, steps)
        assert (m_masks[:, 2:] == 0).all(), type(monotone).__name__
        assert (m_weights[:, 2:] == 0).all(), type(monotone).__name__
        np.testing.assert_array_equal(m_masks[-1], [1, 1, 0, 0])


# -- save and resume mid-cycle --------------------------------------------------------------
def _classification_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 3))).argmax(axis=1).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 4 steps per epoch


def _cyclical_mlp():
    keras.utils.set_random_seed(3)
    base = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(24, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    # Cycles [0, 9], [10, 19], [20, 29]; an update every 2 steps.
    schedule = kprune.CyclicalSparsity(0.8, begin_step=0, end_step=29, cycles=3, frequency=2)
    model = kprune.prune(base, schedule, scope="global")
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_save_and_resume_mid_cycle_matches_uninterrupted(tmp_path):
    data = _classification_data()
    reference = _cyclical_mlp()
    reference.fit(data, epochs=10, callbacks=[kprune.PruningCallback()], verbose=0)

    model = _cyclical_mlp()
    model.fit(data, epochs=4, callbacks=[kprune.PruningCallback()], verbose=0)  # step 16
    masks_before = kprune.get_masks(model)
    sparsity_before = kprune.sparsity_report(model)["pruned"]["sparsity"]
    # Mid-cycle 2 (steps 10-19) the target is below the 80% reached at the end of cycle 1.
    assert 0.0 < sparsity_before < 0.5
    model.save(tmp_path / "mid_cycle.keras")
    del model

    restored = keras.models.load_model(tmp_path / "mid_cycle.keras")
    assert int(restored.optimizer.iterations.numpy()) == 16
    assert restored.get_layer("hidden").schedule == _cyclical_mlp().get_layer("hidden").schedule
    after = kprune.get_masks(restored)
    assert after.keys() == masks_before.keys()
    for path in after:
        np.testing.assert_array_equal(after[path], masks_before[path])
    restored.fit(data, initial_epoch=4, epochs=10, callbacks=[kprune.PruningCallback()], verbose=0)

    assert int(restored.optimizer.iterations.numpy()) == 40
    final, expected = kprune.get_masks(restored), kprune.get_masks(reference)
    for path in expected:
        np.testing.assert_array_equal(final[path], expected[path])
    pruned = kprune.sparsity_report(restored)["pruned"]
    assert pruned["total"] == 8 * 24 + 24 * 3
    assert pruned["total"] - pruned["nonzero"] == round(0.8 * 264)  # exactly round(s * N) zeros
    for got, want in zip(restored.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# -- tf.distribute ----------------------------------------------------------------------------
# Logical devices must be configured before TensorFlow initialises, so this runs in a fresh
# interpreter. It trains the same cyclical model with MirroredStrategy over 2 CPU replicas and
# on a single device, and reports masks per replica at the end of every epoch.
_DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    import kprune

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 3))).argmax(axis=1).astype("int32")


    def build(schedule):
        keras.utils.set_random_seed(1)
        base = keras.Sequential([keras.Input((8,)),
                                 keras.layers.Dense(32, activation="relu", name="hidden"),
                                 keras.layers.Dense(3, name="logits")])
        model = kprune.prune(base, schedule, scope="global")
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model


    def replicas(variable):
        value = variable.value
        return [np.asarray(v.numpy()) for v in getattr(value, "values", [value])]


    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            masks, weights = {}, {}
            for wrapper in kprune.api.pruning_wrappers(self.model):
                for w, m in zip(wrapper.pruned_weights, wrapper.masks):
                    masks[wrapper.name] = [r.tolist() for r in replicas(m)]
                    weights[wrapper.name] = [r.tolist() for r in replicas(w)]
            self.epochs.append({"masks": masks, "weights": weights})


    # 8 steps per epoch; cycles [0, 11] and [12, 23], an update every 2 steps.
    CYCLICAL = kprune.CyclicalSparsity(0.75, begin_step=0, end_step=23, cycles=2, frequency=2)
    LINEAR = kprune.LinearSparsity(0.0, 0.6, begin_step=0, end_step=15, frequency=4)


    def train(strategy, schedule=CYCLICAL):
        with strategy.scope():
            model = build(schedule)
        record = Record()
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
        model.fit(data, epochs=4, callbacks=[kprune.PruningCallback(), record], verbose=0)
        return record.epochs, int(model.optimizer.iterations.numpy())


    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed, steps = train(mirrored)
    single, _ = train(tf.distribute.get_strategy())
    linear, _ = train(mirrored, LINEAR)  # the monotone path goes through the same update
    print("RESULT " + json.dumps({"replicas": mirrored.num_replicas_in_sync, "steps": steps,
                                  "distributed": distributed, "single": single,
                                  "linear": linear[-1]["masks"]}))
    """
)


@pytest.mark.integration
def test_mirrored_strategy_masks_identical_on_replicas_and_to_single_device(tmp_path):
    script = tmp_path / "distributed.py"
    script.write_text(_DISTRIBUTED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["replicas"] == 2 and result["steps"] == 32

    sparsities = []
    for dist_epoch, single_epoch in zip(result["distributed"], result["single"]):
        zeros = total = 0
        for name, copies in dist_epoch["masks"].items():
            masks = [np.array(c) for c in copies]
            weights = [np.array(c) for c in dist_epoch["weights"][name]]
            assert len(masks) == 2
            # Every replica holds the same mask and the same (exactly zero where pruned) weights.
            np.testing.assert_array_equal(masks[0], masks[1])
            np.testing.assert_array_equal(weights[0], weights[1])
            assert (weights[0][masks[0] == 0] == 0).all()
            # ... and the mask a single device computes.
            np.testing.assert_array_equal(masks[0], np.array(single_epoch["masks"][name][0]))
            np.testing.assert_allclose(
                weights[0], np.array(single_epoch["weights"][name][0]), rtol=1e-5, atol=1e-6
            )
            zeros += int((masks[0] == 0).sum())
            total += masks[0].size
        sparsities.append(zeros / total)
    # Epoch ends are steps 8, 16, 24, 32: cycle 1, early cycle 2 (lower target: weights came
    # back), then the final 75% twice.
    assert sparsities[1] < sparsities[0]
    assert sparsities[2] == pytest.approx(0.75) and sparsities[3] == pytest.approx(0.75)
    epoch1 = {n: np.array(c[0]) for n, c in result["distributed"][0]["masks"].items()}
    epoch2 = result["distributed"][1]
    returned = sum(
        int(
            (
                (epoch1[n] == 0)
                & (np.array(epoch2["masks"][n][0]) == 1)
                & (np.array(epoch2["weights"][n][0]) != 0)
            ).sum()
        )
        for n in epoch1
    )
    assert returned > 0  # weights pruned at step 8 are active and non-zero at step 16

    linear = {n: [np.array(c) for c in copies] for n, copies in result["linear"].items()}
    for copies in linear.values():
        np.testing.assert_array_equal(copies[0], copies[1])
    n = sum(c[0].size for c in linear.values())
    assert n - sum(int(c[0].sum()) for c in linear.values()) == round(0.6 * n)


def test_readme_cyclical_example_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- cyclical:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README.md (cyclical)", "exec"), scope)
    n = 64 * 128 + 128 * 2
    low = round(0.9 * 24 / 63 * n) / n  # last update of each cycle's first epoch: step 24
    high = round(0.9 * n) / n
    history = scope["history"].history["sparsity"]
    assert history == pytest.approx([low, high, low, high, low, high, high, high], abs=1e-12)
    restored = keras.models.load_model(tmp_path / "cyclical.keras")
    assert int(restored.optimizer.iterations.numpy()) == 256
    assert kprune.sparsity_report(restored)["pruned"]["sparsity"] == pytest.approx(high)
