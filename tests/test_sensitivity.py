"""kprune.sensitivity (one tensor pruned at a time) and budget="sensitivity" (issue 14)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from kprune import data
from kprune.allocation import layer_budgets, sensitivity_prune_counts
from kprune.api import pruning_wrappers
from kprune.workflows import gradual, training

LIVE = np.array([[2.0, -1.5], [-0.5, 1.0]], "float32")
X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]], "float32")
Y = np.array([0, 1, 0, 1])


def dead_branch_model():
    """logits = x @ LIVE + 0 * dense(x): the "dead" kernel cannot change the output."""
    inputs = keras.Input((2,))
    live = keras.layers.Dense(2, use_bias=False, name="live")(inputs)
    dead = keras.layers.Dense(2, use_bias=False, name="dead")(inputs)
    model = keras.Model(inputs, live + 0.0 * dead)
    model.get_layer("live").kernel.assign(LIVE)
    model.get_layer("dead").kernel.assign(np.array([[0.3, -2.0], [1.5, 0.1]], "float32"))
    return model


def numpy_loss_and_accuracy(kernel):
    logits = X.astype(np.float64) @ kernel.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(Y)), Y].mean()
    return loss, float(np.mean(logits.argmax(axis=1) == Y))


def test_curves_match_an_independent_numpy_computation():
    curves = kprune.sensitivity(dead_branch_model(), (X, Y), sparsities=(0.25, 0.5, 0.75))
    assert sorted(curves.names) == ["dead/kernel", "live/kernel"] and curves.examples == 4
    loss, accuracy = numpy_loss_and_accuracy(LIVE)
    assert curves.baseline_loss == pytest.approx(loss, rel=1e-6)
    assert curves.baseline_accuracy == accuracy == 1.0
    # By hand: 25% removes |-0.5|, 50% also |1|, 75% also |-1.5| (smallest magnitudes first).
    pruned = [
        [[2.0, -1.5], [0.0, 1.0]],
        [[2.0, -1.5], [0.0, 0.0]],
        [[2.0, 0.0], [0.0, 0.0]],
    ]
    expected = [numpy_loss_and_accuracy(np.array(k)) for k in pruned]
    live = curves.tensors["live/kernel"]
    np.testing.assert_allclose(live["loss"], [e[0] for e in expected], rtol=1e-6)
    assert live["accuracy"] == [e[1] for e in expected] == [1.0, 0.75, 0.75]
    assert live["shape"] == [2, 2] and live["size"] == 4
    # The dead branch is multiplied by 0: no point moves from the baseline.
    assert curves.loss_increase("dead/kernel") == [0.0, 0.0, 0.0]
    assert curves.tensors["dead/kernel"]["accuracy"] == [1.0] * 3


def test_weights_are_restored_exactly_and_curves_are_deterministic():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="fc"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    before = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype("float32"), rng.integers(0, 3, 40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    first = kprune.sensitivity(model, dataset, sparsities=(0.5, 0.9))
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()
    again = kprune.sensitivity(model, (x, y), sparsities=(0.5, 0.9), batch_size=16)
    assert again == first and first.examples == 40
    two = kprune.sensitivity(model, dataset, sparsities=(0.5, 0.9), batches=2)
    assert two.examples == 32
    loaded = kprune.SensitivityCurves.from_json(first.to_json())
    assert loaded == first and json.loads(first.to_json())["tensors"]["fc/kernel"]["size"] == 48


def test_weights_are_restored_when_evaluation_fails():
    model = dead_branch_model()
    before = [w.copy() for w in model.get_weights()]
    calls = []

    def failing_loss(y_true, y_pred):
        calls.append(1)
        if len(calls) == 3:  # the baseline, the first point, then a failure mid-curve
            raise RuntimeError("boom")
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    with pytest.raises(RuntimeError, match="boom"):
        kprune.sensitivity(model, (X, Y), sparsities=(0.25, 0.5), loss=failing_loss)
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sparsities": (0.5, 1.0)}, ValueError, r"in \(0, 1\)"),
        ({"sparsities": (0.9, 0.5)}, ValueError, "must increase"),
        ({"sparsities": ()}, ValueError, "non-empty"),
        ({"batches": 0}, ValueError, "batches"),
        ({"batches": 3, "batch_size": 2}, ValueError, "fewer than the 3"),
        ({"exclude": ["nope"]}, ValueError, "not in model"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        kprune.sensitivity(dead_branch_model(), (X, Y), **kwargs)


def test_bad_models_and_data_are_clear_errors():
    model = dead_branch_model()
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        kprune.sensitivity(model, X)
    with pytest.raises(ValueError, match="same positive number"):
        kprune.sensitivity(model, (X, Y[:2]))
    with pytest.raises(ValueError, match="endless"):
        kprune.sensitivity(model, tf.data.Dataset.from_tensor_slices((X, Y)).batch(2).repeat())
    with pytest.raises(TypeError, match="keras.Model"):
        kprune.sensitivity("model", (X, Y))
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5))
    with pytest.raises(ValueError, match="strip"):
        kprune.sensitivity(pruned, (X, Y))
    with pytest.raises(ValueError, match="no prunable tensor"):
        kprune.sensitivity(model, (X, Y), exclude=["live", "dead"])
    with pytest.raises(ValueError, match="sparsities"):
        kprune.SensitivityCurves.from_dict({"sparsities": [0.5]})


def test_plot_writes_a_png_or_says_what_is_missing(tmp_path):
    curves = kprune.sensitivity(dead_branch_model(), (X, Y), sparsities=(0.5,))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="kprune\\[plot\\]"):
            curves.plot(tmp_path / "curves.png")
        return
    curves.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the budget ---------------------------------------------------------------------------------
def test_greedy_counts_are_exact_and_follow_marginal_cost():
    # Tensor 0 is free up to 90%, tensor 1 costs 1 per 10% (linear), tensor 2 is convex.
    sizes = [100, 100, 100]
    curves = [
        ((0.5, 0.9), (0.0, 0.0)),
        ((0.5, 0.9), (5.0, 9.0)),
        ((0.5, 0.9), (0.5, 8.5)),
    ]
    # Tensor 0 first (slope 0) to 90, then tensor 2's first segment (0.01 per weight) to 50,
    # then tensor 1 (0.1 per weight), before tensor 2's steep second segment (0.2).
    assert sensitivity_prune_counts(sizes, curves, 0.3) == [90, 0, 0]
    assert sensitivity_prune_counts(sizes, curves, 0.4) == [90, 0, 30]
    assert sensitivity_prune_counts(sizes, curves, 0.6) == [90, 40, 50]
    rng = np.random.default_rng(1)
    sizes = [37, 1000, 3, 251]
    for s in (0.0, 0.1, 0.5, 0.83, 0.9, 0.95):
        curves = [((0.3, 0.6, 0.96), tuple(rng.normal(size=3))) for _ in sizes]
        counts = sensitivity_prune_counts(sizes, curves, s)
        assert sum(counts) == round(s * sum(sizes))
        assert all(0 <= c <= round(0.96 * n) for c, n in zip(counts, sizes))
    with pytest.raises(ValueError, match="Measure higher sparsities"):
        sensitivity_prune_counts([100, 100], [((0.5,), (0.0,)), ((0.5,), (0.0,))], 0.6)


def toy(seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16)).astype("float32") * 2
    y = rng.integers(0, 3, 128).astype("int32")
    x = (centers[y] + rng.normal(size=(128, 16))).astype("float32")
    return x, y


def test_the_insensitive_tensor_is_pruned_more():
    model = dead_branch_model()
    curves = kprune.sensitivity(model, (X, Y), sparsities=(0.25, 0.5, 0.75))
    schedule = kprune.ConstantSparsity(0.5)
    pruned = kprune.prune(model, schedule, budget="sensitivity", sensitivity=curves)
    targets = {w.layer.name: w.schedule.final_sparsity for w in pruning_wrappers(pruned)}
    # 4 of 8 weights: the free dead kernel gives its 3 (up to 75%), the live one only 1.
    assert targets == {"live": 0.25, "dead": 0.75}
    with pytest.raises(ValueError, match="call curves = kprune.sensitivity"):
        kprune.prune(model, schedule, budget="sensitivity")
    with pytest.raises(ValueError, match="budget='sensitivity' only"):
        kprune.prune(model, schedule, budget="erk", sensitivity=curves)
    with pytest.raises(TypeError, match="SensitivityCurves"):
        kprune.prune(model, schedule, budget="sensitivity", sensitivity={"live/kernel": 1})
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="live")])
    with pytest.raises(ValueError, match="curves are of another model"):
        layer_budgets(other.layers, schedule, "sensitivity", sensitivity=curves)
    with pytest.raises(ValueError, match=r"no curve for \['block/live/kernel'\]"):
        layer_budgets(
            other.layers, schedule, "sensitivity", sensitivity=curves, prefixes=[("block",)]
        )


def test_sensitivity_budget_trains_to_exact_counts_and_is_deterministic():
    x, y = toy()
    make = tf.data.Dataset.from_tensor_slices
    ds = data.Dataset(
        name="toy",
        input_shape=(16,),
        num_classes=3,
        train_size=96,
        test_size=32,
        train=make((x[:96], y[:96])).batch(16),
        test=make((x[96:], y[96:])).batch(16),
        batch_size=16,
    )

    def run():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((16,)),
                keras.layers.Dense(32, activation="relu", name="hidden"),
                keras.layers.Dense(3, name="logits"),
            ]
        )
        curves = kprune.sensitivity(model, (x[:64], y[:64]), sparsities=(0.5, 0.8, 0.95))
        window = gradual.pruning_window(4 * ds.steps_per_epoch, end=0.5, frequency_steps=2)
        schedule = gradual.make_schedule("linear", 0.9, window)
        config = training.TrainConfig(epochs=4, learning_rate=0.05)
        stripped, results = gradual.train_gradual(
            model, ds, schedule, config, budget="sensitivity", sensitivity=curves, verbose=0
        )
        return curves, stripped, results

    curves, stripped, results = run()
    expected = sensitivity_prune_counts(
        [16 * 32, 32 * 3],
        [(curves.sparsities, curves.loss_increase(n)) for n in curves.names],
        0.9,
    )
    zeros = [int(np.sum(stripped.get_layer(n).kernel.numpy() == 0)) for n in ("hidden", "logits")]
    assert zeros == expected and sum(zeros) == round(0.9 * (16 * 32 + 32 * 3))
    assert results["budget"] == "sensitivity"
    again = run()[1]
    for a, b in zip(stripped.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- the command line ---------------------------------------------------------------------------
def test_cli_dry_run_says_how_the_curves_are_measured(capsys):
    from kprune import train

    args = ["kprune.train", "--budget=sensitivity", "--target_sparsity=0.999", "--dry_run"]
    assert train.cli([*args, "--sensitivity_steps=7", "--sensitivity_batches=3"]) == 0
    out = capsys.readouterr().out
    assert "sensitivity budget" in out
    assert "a dense copy trains 7 steps on epoch 0 less its first 3 batches" in out
    assert "0.99, 0.995, 0.999, 0.9995;" in out  # the target and one point above it
    assert train.cli(["kprune.train", "--budget=erk", "--dry_run"]) == 0
    assert "sensitivity" not in capsys.readouterr().out


@pytest.mark.integration  # trains LeNet-300-100 on the digits for one epoch: ~30 s
def test_cli_sensitivity_run_writes_curves_and_prunes_to_their_budget(tmp_path, capsys):
    from kprune import train

    run_dir = tmp_path / "run"
    args = ["--budget=sensitivity", "--epochs=1", "--sensitivity_steps=5", "--progress=none"]
    assert train.cli(["kprune.train", *args, f"--model_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    curves = kprune.SensitivityCurves.from_json((run_dir / "sensitivity.json").read_text())
    assert curves.names == ["fc1/kernel", "fc2/kernel", "logits/kernel"]
    assert curves.examples == 4 * 32  # the 4 held-out batches of 32, not the test split
    sizes = [64 * 300, 300 * 100, 100 * 10]
    pairs = [(curves.sparsities, curves.loss_increase(n)) for n in curves.names]
    expected = sensitivity_prune_counts(sizes, pairs, 0.9)
    results = json.loads((run_dir / "results.json").read_text())
    zeros = [row["total"] - row["nonzero"] for row in results["layers"]]
    assert zeros == expected and sum(zeros) == round(0.9 * sum(sizes))
    shown = ", ".join(f"{n} {c / s:.2%}" for n, c, s in zip(("fc1", "fc2", "logits"), zeros, sizes))
    assert f"sensitivity targets per tensor: {shown}" in out
    assert results["budget"] == "sensitivity" and results["sensitivity"]["warmup_steps"] == 5
    assert results["sensitivity"]["held_out_examples"] == 128


def test_run_flags_carry_the_sensitivity_flags_only_for_that_budget():
    from absl import flags

    from kprune.experiment.config import define_flags
    from kprune.experiment.run_config import config_from_flags

    def flag_lines(*args):
        values = flags.FlagValues()
        define_flags(values)
        values(["kprune.train", *args])
        return config_from_flags(values).flag_lines

    # Runs of the other budgets keep the run.flags they had before these flags existed.
    assert not {"sensitivity_steps", "sensitivity_batches"} & set(flag_lines("--budget=erk"))
    lines = flag_lines("--budget=sensitivity", "--sensitivity_steps=7")
    assert lines["sensitivity_steps"] == "--sensitivity_steps=7"
    assert lines["sensitivity_batches"] == "--sensitivity_batches=4"
