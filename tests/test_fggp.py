"""FGGP (gradient-first, magnitude-next gradual pruning) and the criterion plumbing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from helpers import SCRIPTS, run_json
from kprune.criteria import FGGP, Magnitude, fggp_masks, get_criterion

RNG = np.random.default_rng(2024)
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def np_fggp(mags, grads, masks, sparsity, rate=0.5):
    """Reference FGGP over a list of tensors pooled globally, ties by flat position."""
    shapes = [m.shape for m in mags]
    mag = np.concatenate([m.ravel() for m in mags]).astype(np.float32)
    grad = np.concatenate([g.ravel() for g in grads]).astype(np.float32)
    active = np.concatenate([m.ravel() for m in masks]) != 0
    n = mag.size
    pos = np.arange(n)
    n_rm = max(int(np.round(np.float64(sparsity) * n)) - int((~active).sum()), 0)
    n_c = int(np.floor(rate * active.sum()))
    rank = grad if (grad[active] != 0).any() else mag
    act_idx = pos[active]
    cand = act_idx[np.lexsort((act_idx, rank[act_idx]))][:n_c]
    first = min(n_rm, n_c)
    pruned = set(cand[np.lexsort((cand, mag[cand]))][:first].tolist())
    rest = np.setdiff1d(act_idx, cand)
    pruned |= set(rest[np.lexsort((rest, mag[rest]))][: n_rm - first].tolist())
    keep = active.copy()
    keep[list(pruned)] = False
    out, start = [], 0
    for s in shapes:
        size = int(np.prod(s))
        out.append(keep[start : start + size].reshape(s).astype(np.float32))
        start += size
    return out


def random_case(shapes, sparsity_before):
    mags = [np.abs(RNG.normal(size=s)).astype(np.float32) for s in shapes]
    grads = [np.abs(RNG.normal(size=s)).astype(np.float32) for s in shapes]
    masks = [(RNG.random(s) >= sparsity_before).astype(np.float32) for s in shapes]
    return mags, grads, masks


# -- the selection rule -----------------------------------------------------------------------
@pytest.mark.parametrize("before, target", [(0.0, 0.2), (0.3, 0.5), (0.5, 0.6), (0.5, 0.9)])
@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_fggp_masks_match_numpy_reference(before, target, rate):
    shapes = [(6, 7), (7, 5), (11,)]
    mags, grads, masks = random_case(shapes, before)
    got = fggp_masks(
        [tf.constant(m) for m in mags],
        [tf.constant(g) for g in grads],
        [tf.constant(m) for m in masks],
        target,
        scope="global",
        candidate_rate=rate,
    )
    expected = np_fggp(mags, grads, masks, target, rate)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g.numpy(), e)
    total = sum(m.size for m in mags)
    zeros = sum(int(g.numpy().size - g.numpy().sum()) for g in got)
    already = sum(int(m.size - m.sum()) for m in masks)
    assert zeros == max(round(target * total), already)
    # Monotone: nothing pruned comes back.
    assert all(np.all(g.numpy()[m == 0] == 0) for g, m in zip(got, masks))


def test_gradient_first_differs_from_magnitude():
    # Weights with the smallest |w| have the largest |g|: FGGP must not prune them.
    mag = np.arange(1, 11, dtype=np.float32)
    grad = mag[::-1].copy()
    got = fggp_masks([tf.constant(mag)], [tf.constant(grad)], [tf.ones(10)], 0.3)[0].numpy()
    # Candidates: the 5 smallest |g| = positions 5..9; prune the 3 smallest |w| among them.
    assert got.tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 1, 1]


def test_guard_takes_all_candidates_then_smallest_magnitude():
    mag = np.array([5, 1, 6, 2, 7, 3, 8, 4], np.float32)
    grad = np.array([0.1, 9, 0.2, 9, 0.3, 9, 0.4, 9], np.float32)
    # 6 of 8 to prune, candidates are 4 (rate 0.5): all of C (positions 0, 2, 4, 6) and then
    # the 2 smallest |w| of the rest (positions 1 and 3).
    got = fggp_masks([tf.constant(mag)], [tf.constant(grad)], [tf.ones(8)], 0.75)[0].numpy()
    assert got.tolist() == [0, 0, 0, 0, 0, 1, 0, 1]


def test_layer_scope_applies_the_rule_per_tensor():
    shapes = [(5, 8), (9,)]
    mags, grads, masks = random_case(shapes, 0.2)
    got = fggp_masks(
        [tf.constant(m) for m in mags],
        [tf.constant(g) for g in grads],
        [tf.constant(m) for m in masks],
        0.6,
        scope="layer",
    )
    for i in range(2):
        expected = np_fggp([mags[i]], [grads[i]], [masks[i]], 0.6)[0]
        np.testing.assert_array_equal(got[i].numpy(), expected)


def test_without_recorded_gradient_candidates_rank_by_magnitude():
    mag = np.array([4, 3, 2, 1], np.float32)
    got = fggp_masks([tf.constant(mag)], [tf.zeros(4)], [tf.ones(4)], 0.25)[0].numpy()
    assert got.tolist() == [1, 1, 1, 0]


# -- the schedule -----------------------------------------------------------------------------
def test_fggp_schedule_is_the_published_cubic_density():
    total, d_i, d_f = 1010, 0.5, 0.1
    schedule = kprune.criteria.fggp_schedule(total, 1 - d_f, initial_sparsity=1 - d_i, frequency=20)
    end = int(0.8 * total)
    assert (schedule.begin_step, schedule.end_step, schedule.power) == (0, end, 3.0)
    for t in range(0, total):
        should, target = schedule(tf.constant(t, tf.int64))
        density = d_f + (d_i - d_f) * (1 - min(t, end) / end) ** 3
        assert float(target) == pytest.approx(1 - density, abs=1e-6)
        # Every 20 steps up to 0.8 T, plus the last step when 0.8 T is off the grid.
        assert bool(should) == ((t % 20 == 0 and t <= end) or t == end)


def test_bad_schedule_and_criterion_arguments():
    with pytest.raises(ValueError, match="end_fraction"):
        kprune.criteria.fggp_schedule(1000, 0.9, end_fraction=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        kprune.criteria.fggp_schedule(10.5, 0.9)
    for rate in (0, 1.5, "half", True):
        with pytest.raises(ValueError, match="candidate_rate"):
            FGGP(candidate_rate=rate)
    with pytest.raises(ValueError, match="gradient"):
        FGGP(gradient="ema")
    with pytest.raises(ValueError, match=r"\['fggp', 'magnitude'\]"):
        get_criterion("snip")


# -- in training ------------------------------------------------------------------------------
def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(10, activation="relu", name="h"),
            keras.layers.Dense(3, name="out"),
        ]
    )


X = RNG.normal(size=(32, 6)).astype("float32")
Y = np.arange(32) % 3


def reference_gradients(pruned):
    """|dL/dW| of the effective (masked) kernels, computed on the stripped model."""
    plain = kprune.strip(pruned)
    kernels = [plain.get_layer(n).kernel for n in ("h", "out")]
    with tf.GradientTape() as tape:
        loss = CE(Y, plain(X, training=True))
    return [np.abs(g.numpy()) for g in tape.gradient(loss, kernels)]


@pytest.mark.parametrize("gradient", ["batch", "accumulated"])
def test_records_hold_the_gradient_of_the_train_step_under_xla(gradient):
    schedule = kprune.PolynomialDecay(0.0, 0.5, begin_step=100, end_step=200)
    pruned = kprune.prune(mlp(), schedule, scope="global", criterion=FGGP(gradient=gradient))
    pruned.compile(keras.optimizers.SGD(0.0), CE, jit_compile=True)
    epochs = 3
    pruned.fit(X, Y, batch_size=32, epochs=epochs, verbose=0, callbacks=[kprune.PruningCallback()])
    expected = reference_gradients(pruned)
    factor = epochs if gradient == "accumulated" else 1
    records = [pruned.get_layer(n).gradient_records[0].numpy() for n in ("h", "out")]
    for got, exp in zip(records, expected):
        assert np.abs(exp).max() > 0
        np.testing.assert_allclose(got, factor * exp, rtol=1e-4, atol=1e-7)


def test_each_update_follows_the_rule_with_last_step_gradient():
    schedule = kprune.PolynomialDecay(0.0, 0.8, begin_step=1, end_step=9, frequency=2)
    pruned = kprune.prune(mlp(1), schedule, scope="global", criterion="fggp")
    optimizer = keras.optimizers.SGD(0.2, momentum=0.9)
    kprune.bind_optimizer(pruned, optimizer)
    wrappers = kprune.api.pruning_wrappers(pruned)
    variables = pruned.trainable_variables

    @tf.function(jit_compile=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = CE(y, pruned(x, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)

    updates = 0
    for step in range(12):
        batch = slice((step % 4) * 8, (step % 4) * 8 + 8)
        should, target = schedule(tf.constant(step, tf.int64))
        mags = [np.abs(w.layer.kernel.numpy()) for w in wrappers]
        grads = [w.gradient_records[0].numpy() for w in wrappers]
        masks = [w.masks[0].numpy() for w in wrappers]
        train_step(X[batch], Y[batch])
        new = [w.masks[0].numpy() for w in wrappers]
        if bool(should):
            updates += 1
            expected = np_fggp(mags, grads, masks, float(target))
            for g, e in zip(new, expected):
                np.testing.assert_array_equal(g, e)
        else:
            assert all(np.array_equal(a, b) for a, b in zip(new, masks))
    assert updates == 5
    total = sum(w.masks[0].numpy().size for w in wrappers)
    zeros = sum(int(w.masks[0].numpy().size - w.masks[0].numpy().sum()) for w in wrappers)
    assert zeros == round(np.float32(0.8) * total)
    for w in wrappers:
        assert np.all(w.layer.kernel.numpy()[w.masks[0].numpy() == 0] == 0)


def test_from_a_50_percent_erk_start():
    model = mlp(2)
    start = kprune.masks_at_init(model, method="random", sparsity=0.5, scope="erk", seed=5)
    steps = 16
    schedule = kprune.criteria.fggp_schedule(steps, 0.9, initial_sparsity=0.5, frequency=4)
    pruned = kprune.prune(model, schedule, scope="global", criterion="fggp")
    kprune.set_masks(pruned, start)
    pruned.compile(keras.optimizers.SGD(0.1), CE)
    pruned.fit(X, Y, batch_size=8, epochs=4, verbose=0, callbacks=[kprune.PruningCallback()])
    final = kprune.get_masks(pruned)
    total = sum(m.size for m in final.values())
    assert sum(int(m.size - m.sum()) for m in final.values()) == round(np.float32(0.9) * total)
    for path in start:
        assert np.all(final[path][start[path] == 0] == 0)
    report = kprune.sparsity_report(pruned)
    # Gradient records are bookkeeping, not parameters.
    assert report["all_params"]["total"] == model.count_params()


# -- plumbing ---------------------------------------------------------------------------------
def test_criterion_serialization_round_trip(tmp_path):
    for criterion in (Magnitude(), FGGP(candidate_rate=0.25, gradient="accumulated")):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(criterion)
        )
        assert restored == criterion and type(restored) is type(criterion)
        assert hash(restored) == hash(criterion)
        assert type(criterion).from_config(criterion.get_config()) == criterion
    schedule = kprune.LinearSparsity(0.0, 0.5, 0, 10, frequency=2)
    pruned = kprune.prune(mlp(), schedule, criterion=FGGP(candidate_rate=0.25))
    pruned.compile(keras.optimizers.SGD(0.1), CE)
    pruned.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()])
    path = tmp_path / "fggp.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    for name in ("h", "out"):
        a, b = pruned.get_layer(name), loaded.get_layer(name)
        assert b.criterion == FGGP(candidate_rate=0.25)
        np.testing.assert_array_equal(a.masks[0].numpy(), b.masks[0].numpy())
        np.testing.assert_array_equal(a.gradient_records[0].numpy(), b.gradient_records[0].numpy())
    # Configs written before criteria existed load as magnitude pruning.
    config = pruned.get_layer("h").get_config()
    del config["criterion"]
    old = kprune.PruningWrapper.from_config(config)
    assert old.criterion == Magnitude()
    magnitude = kprune.PruningWrapper(keras.layers.Dense(2), schedule)
    assert kprune.PruningWrapper.from_config(magnitude.get_config()).criterion == Magnitude()


def test_magnitude_wrappers_gain_no_variables():
    pruned = kprune.prune(mlp(), kprune.ConstantSparsity(0.5))
    assert [w.name for w in pruned.get_layer("h").weights] == ["kernel_mask", "kernel", "bias"]
    assert pruned.get_layer("h").gradient_records == []


def test_grouping_and_errors():
    schedule = kprune.LinearSparsity(0.0, 0.5, 0, 10)
    with pytest.raises(ValueError, match="Unknown pruning criterion"):
        kprune.prune(mlp(), schedule, criterion="grasp")
    with pytest.raises(ValueError, match="regrow"):
        kprune.prune(mlp(), kprune.CyclicalSparsity(0.5, 0, 20, cycles=2), criterion="fggp")
    # Layer scope: one group per (schedule, criterion).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = kprune.PruningWrapper(keras.layers.Dense(4), schedule, "layer", "fggp")(inputs)
    out = kprune.PruningWrapper(keras.layers.Dense(3), schedule, "layer")(h)
    model = keras.Model(inputs, out)
    groups = kprune.bind_optimizer(model, keras.optimizers.SGD())
    assert sorted(type(g.criterion).__name__ for g in groups) == ["FGGP", "Magnitude"]
    # Global scope: one selection, so one criterion.
    h = kprune.PruningWrapper(keras.layers.Dense(4), schedule, "global", "fggp")(inputs)
    out = kprune.PruningWrapper(keras.layers.Dense(3), schedule, "global")(h)
    with pytest.raises(ValueError, match="share one criterion"):
        kprune.bind_optimizer(keras.Model(inputs, out), keras.optimizers.SGD())


@pytest.mark.integration
def test_fggp_under_mirrored_strategy_matches_single_device():
    # Records are all-reduced in the backward pass, so every replica holds the global-batch
    # gradient, the one a single-device run records; masks then agree as well. "accumulated"
    # also checks that the cross-replica reset after each update reaches every replica.
    results = run_json([SCRIPTS / "mirrored_fggp.py", "batch", "accumulated"])
    for mode in ("batch", "accumulated"):
        out = results[mode]
        assert out["replicas"] == 2
        assert out["identical_across_replicas"], (mode, out)
        assert out["record_scale"] > 0
        assert out["record_error"] <= 1e-5 * out["record_scale"], (mode, out)
        assert out["masks_equal_single_device"], (mode, out)
        assert out["zeros"] == round(0.8 * (12 * 16 + 16 * 3))
