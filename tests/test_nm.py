"""N:M semi-structured granularity: parsing, masks, schedules, at-init, saving, report, CLI."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import kprune
from kprune import ConstantSparsity, LinearSparsity, train
from kprune.experiment.config import define_flags
from kprune.experiment.run_config import config_from_flags
from kprune.export.inspect import nm_pattern_rows
from kprune.export.report import _nm_lines
from kprune.granularity import Granularity, nm_pattern_holds, parse_granularity
from kprune.masking import compute_masks


def group_counts(mask, m, axis):
    """Non-zeros of every group of `m` along `axis`, as a flat array."""
    moved = np.moveaxis(np.asarray(mask) != 0, axis, -1)
    return moved.reshape(-1, m).sum(axis=-1)


def dense_model(inputs=8, units=(4, 3)):
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(u, name=f"fc{i}") for i, u in enumerate(units)]
    return keras.Sequential(layers)


def fit(model, steps, inputs=8, outputs=3):
    rng = np.random.default_rng(0)
    x = rng.random((steps, inputs), dtype="float32")
    y = rng.random((steps, outputs), dtype="float32")
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[kprune.PruningCallback()])


# -- parsing ----------------------------------------------------------------------------------
def test_parse_granularity_forms():
    assert parse_granularity("2:4") == Granularity("nm", 2, 4)
    assert parse_granularity("1:16").sparsity == 1 - 1 / 16
    assert str(parse_granularity("4:8")) == "4:8"
    assert parse_granularity("weight").kind == "weight"
    assert parse_granularity("channel").kind == "channel"


@pytest.mark.parametrize("bad", ["abc", "3:0", "4:2", "2:2", "0:4", "2.5:4", "-1:4", "2:", ""])
def test_parse_granularity_rejects(bad):
    with pytest.raises(ValueError, match='"weight", "channel" or "N:M"'):
        parse_granularity(bad)


def test_parse_granularity_rejects_non_strings():
    with pytest.raises(ValueError, match="must be a string"):
        parse_granularity(4)


# -- the mask rule on hand-set weights --------------------------------------------------------
def test_dense_keeps_the_two_largest_of_every_four_inputs():
    # Dense kernel (in=8, out=2): groups are rows 0-3 and 4-7 of each column.
    kernel = np.array(
        [
            [0.1, -4.0],
            [-0.9, 1.0],
            [0.5, 1.0],
            [0.2, -3.0],
            [7.0, 0.0],
            [-6.0, 0.5],
            [5.0, -0.4],
            [8.0, 0.3],
        ],
        np.float32,
    )
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="fc")])
    model.get_layer("fc").kernel.assign(kernel)
    pruned = kprune.prune(model, ConstantSparsity(0.5, frequency=1), granularity="2:4")
    fit(pruned, 1, outputs=2)
    mask = kprune.get_masks(pruned)["fc/kernel"]
    # column 0: |-0.9|, 0.5 in the first group; 7, 8 in the second.
    # column 1: -4, -3 in the first; 0.5, -0.4 in the second.
    expected = np.array(
        [[0, 1], [1, 0], [1, 0], [0, 1], [1, 0], [0, 1], [0, 1], [1, 0]], np.float32
    )
    np.testing.assert_array_equal(mask, expected)


def test_ties_keep_the_lowest_index():
    scores = [tf.ones((8, 1))]
    mask = compute_masks(scores, [tf.ones((8, 1))], 0.5, nm=[(0, 2, 4)])[0].numpy()
    assert mask[:, 0].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]


def test_conv_groups_run_along_input_channels():
    conv = keras.layers.Conv2D(1, (1, 2), use_bias=False, name="conv")
    model = keras.Sequential([keras.Input((4, 4, 4)), conv])
    # kernel (kh=1, kw=2, in=4, out=1): one group of 4 input channels per kernel position.
    kernel = np.zeros((1, 2, 4, 1), np.float32)
    kernel[0, 0, :, 0] = [1.0, 4.0, 3.0, 2.0]
    kernel[0, 1, :, 0] = [-9.0, 0.1, 0.2, 8.0]
    conv.kernel.assign(kernel)
    masks = kprune.masks_at_init(model, method="magnitude", sparsity=0.75, granularity="1:4")
    mask = masks["conv/kernel"]
    assert mask[0, 0, :, 0].tolist() == [0, 1, 0, 0]
    assert mask[0, 1, :, 0].tolist() == [1, 0, 0, 0]


def test_an_update_never_removes_more_than_m_minus_n_of_a_group():
    # Unconstrained, 3 of 8 would be 0.1, 0.2, 0.3, all in group 0; 2:4 caps it at 2 there,
    # so the third is the smallest of group 1.
    w = tf.constant([[0.1], [0.2], [0.3], [0.4], [5.0], [6.0], [7.0], [8.0]])
    mask = compute_masks([w], [tf.ones((8, 1))], 0.375, nm=[(0, 2, 4)])[0].numpy()
    assert mask[:, 0].tolist() == [0, 0, 1, 1, 0, 1, 1, 1]
    plain = compute_masks([w], [tf.ones((8, 1))], 0.375)[0].numpy()
    assert plain[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]


def test_gradual_schedule_ends_at_exactly_n_of_m():
    model = dense_model(inputs=16, units=(8, 4))
    schedule = LinearSparsity(0.0, 0.5, begin_step=0, end_step=6, frequency=2)
    pruned = kprune.prune(model, schedule, scope="layer", granularity="2:4")
    counts = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for path, mask in kprune.get_masks(pruned).items():
                per_group = group_counts(mask, 4, 0)
                counts.append((batch, path, int((mask == 0).sum()), int(per_group.min())))

    rng = np.random.default_rng(0)
    x, y = rng.random((8, 16), dtype="float32"), rng.random((8, 4), dtype="float32")
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    pruned.fit(x, y, batch_size=1, verbose=0, callbacks=[kprune.PruningCallback(), Record()])
    # Updates at steps 0, 2, 4 and 6, to 0.5 * step / 6 of every tensor on its own.
    for batch, path, zeros, fewest in counts:
        size = {"fc0/kernel": 16 * 8, "fc1/kernel": 8 * 4}[path]
        step = batch - batch % 2 if batch < 6 else 6
        assert zeros == round(0.5 * step / 6 * size)
        assert fewest >= 2  # never below N survivors in any group
    for mask in kprune.get_masks(pruned).values():
        assert (group_counts(mask, 4, 0) == 2).all()


def test_global_scope_reaches_the_pattern_in_every_tensor():
    pruned = kprune.prune(dense_model(), ConstantSparsity(0.5, frequency=1), granularity="2:4")
    with pytest.warns(UserWarning, match="fc1/kernel"):  # fc1 has 4 inputs: no group of 8
        partly = kprune.prune(dense_model(inputs=8, units=(4, 3)), None, granularity="4:8")
    assert [type(layer).__name__ for layer in partly.layers] == ["PruningWrapper", "Dense"]
    fit(pruned, 3)
    for mask in kprune.get_masks(pruned).values():
        assert (group_counts(mask, 4, 0) == 2).all()


def test_cyclical_schedule_regrows_and_ends_every_cycle_at_the_pattern():
    schedule = kprune.CyclicalSparsity(0.5, begin_step=0, end_step=7, cycles=2, frequency=1)
    pruned = kprune.prune(dense_model(), schedule, scope="layer", granularity="2:4")
    ends = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (3, 7):  # the last step of each cycle
                ends.append([group_counts(m, 4, 0) for m in kprune.get_masks(pruned).values()])

    rng = np.random.default_rng(0)
    x, y = rng.random((8, 8), dtype="float32"), rng.random((8, 3), dtype="float32")
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    pruned.fit(x, y, batch_size=1, verbose=0, callbacks=[kprune.PruningCallback(), Record()])
    assert len(ends) == 2
    for counts in ends:
        assert all((c == 2).all() for c in counts)


def test_masks_hold_in_fit_and_strip_keeps_the_pattern():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 4)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="fc"),
        ]
    )
    pruned = kprune.prune(model, ConstantSparsity(0.5, frequency=2), granularity="2:4")
    rng = np.random.default_rng(1)
    x, y = rng.random((6, 6, 6, 4), dtype="float32"), rng.random((6, 3), dtype="float32")
    pruned.compile(keras.optimizers.Adam(0.01), "mse")
    pruned.fit(x, y, batch_size=1, verbose=0, callbacks=[kprune.PruningCallback()])
    stripped = kprune.strip(pruned)
    conv = stripped.get_layer("conv").kernel.numpy()
    fc = stripped.get_layer("fc").kernel.numpy()
    assert (group_counts(conv, 4, 2) == 2).all() and (group_counts(fc, 4, 0) == 2).all()
    assert [row["2:4"] for row in nm_pattern_rows(stripped)] == [True, True]


# -- pruning at initialization ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["snip", "synflow", "random"])
def test_prune_at_init_with_n_of_m(method):
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, activation="relu", name="h"),
         keras.layers.Dense(4, name="out")]
    )  # fmt: skip
    x = np.random.default_rng(0).random((16, 8), dtype="float32")
    y = np.arange(16) % 4
    options = {"iterations": 5} if method == "synflow" else {}
    pruned = kprune.prune_at_init(
        model, (x, y), method=method, sparsity=0.5, granularity="2:4", **options
    )
    for wrapper in kprune.api.pruning_wrappers(pruned):
        assert str(wrapper.granularity) == "2:4"
    for mask in kprune.get_masks(pruned).values():
        assert (group_counts(mask, 4, 0) == 2).all()


def test_prune_at_init_magnitude_picks_the_largest_per_group():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="fc")])
    model.get_layer("fc").kernel.assign(np.array([[3.0], [-1.0], [0.5], [-2.0]]))
    pruned = kprune.prune_at_init(model, method="magnitude", sparsity=0.5, granularity="2:4")
    assert kprune.get_masks(pruned)["fc/kernel"][:, 0].tolist() == [1, 0, 0, 1]


# -- saving -----------------------------------------------------------------------------------
def test_keras_round_trip_keeps_granularity_and_masks(tmp_path):
    pruned = kprune.prune(dense_model(), ConstantSparsity(0.5, frequency=1), granularity="2:4")
    fit(pruned, 2)
    path = tmp_path / "nm.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    wrapper = loaded.get_layer("fc0")
    assert str(wrapper.granularity) == "2:4" and wrapper.get_config()["granularity"] == "2:4"
    for name, mask in kprune.get_masks(pruned).items():
        np.testing.assert_array_equal(kprune.get_masks(loaded)[name], mask)
    fit(loaded, 2)  # trains on from the loaded masks, pattern kept
    for mask in kprune.get_masks(loaded).values():
        assert (group_counts(mask, 4, 0) == 2).all()


def test_weight_granularity_config_is_unchanged():
    wrapper = kprune.PruningWrapper(keras.layers.Dense(2), ConstantSparsity(0.5))
    assert "granularity" not in wrapper.get_config()


# -- bad input --------------------------------------------------------------------------------
def test_layer_whose_input_axis_is_too_short():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="stem")])
    with pytest.raises(ValueError, match=r"stem/kernel \(3, 4\): input axis 0 has length 3"):
        kprune.prune(model, ConstantSparsity(0.5), granularity="2:4")
    wrapper = kprune.PruningWrapper(keras.layers.Dense(2), ConstantSparsity(0.5), granularity="2:4")
    with pytest.raises(ValueError, match="not a multiple of 4"):
        wrapper.build((None, 6))


def test_layer_without_an_n_of_m_rule_is_left_dense():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Embedding(10, 8, name="emb"), keras.layers.Dense(4)]
    )
    with pytest.warns(UserWarning, match="no N:M rule for a Embedding weight"):
        pruned = kprune.prune(model, ConstantSparsity(0.5), granularity="2:4")
    assert type(pruned.get_layer("emb")).__name__ == "Embedding"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": ConstantSparsity(0.9)}, r"must end at sparsity 1 - 2/4 = 0.5"),
        ({"schedule": LinearSparsity(0.0, 0.25, 0, 10)}, "ConstantSparsity\\(0.5\\)"),
        ({"criterion": "fggp"}, "Use criterion='magnitude'"),
        ({"budget": "erk"}, "budget='erk' gives every tensor its own target"),
    ],
)
def test_prune_rejects(kwargs, message):
    kwargs = {"schedule": ConstantSparsity(0.5), **kwargs}
    schedule = kwargs.pop("schedule")
    with pytest.raises(ValueError, match=message):
        kprune.prune(dense_model(), schedule, granularity="2:4", **kwargs)


def test_wrapper_and_at_init_reject():
    with pytest.raises(ValueError, match="granularity='channel'"):
        kprune.PruningWrapper(keras.layers.Dense(2), granularity="channel")
    with pytest.raises(ValueError, match="pass sparsity=0.5"):
        kprune.masks_at_init(dense_model(), method="random", sparsity=0.9, granularity="2:4")
    with pytest.raises(ValueError, match="scope='erk'"):
        kprune.masks_at_init(
            dense_model(), method="random", sparsity=0.5, scope="erk", granularity="2:4"
        )
    with pytest.raises(ValueError, match="single weights or N:M"):
        kprune.masks_at_init(dense_model(), method="random", sparsity=0.5, granularity="channel")


# -- export report ----------------------------------------------------------------------------
def test_nm_pattern_holds_on_hand_made_arrays():
    w = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])  # (in=4, out=2)
    assert nm_pattern_holds(w, 2, 4, axis=0)
    assert not nm_pattern_holds(w, 1, 4, axis=0)  # column 0 has two non-zeros
    assert nm_pattern_holds(w.T, 2, 4, axis=1)
    assert not nm_pattern_holds(np.ones((6, 1)), 2, 4, axis=0)  # no whole groups
    conv = np.zeros((3, 3, 8, 2))
    conv[1, 1, :, 0] = [1, 1, 0, 0, 0, 1, 0, 1]
    assert nm_pattern_holds(conv, 2, 4, axis=2) and not nm_pattern_holds(conv, 2, 4, axis=0)


def test_export_report_has_the_nm_column(tmp_path):
    schedule = ConstantSparsity(0.5, frequency=1)
    pruned = kprune.prune(dense_model(), schedule, granularity="2:4", exclude=["fc1"])
    fit(pruned, 1)
    report = kprune.export.export(
        pruned, tmp_path / "out", formats="saved_model", compare_dense=False, verbose=False
    )
    rows = {row["weight"]: row for row in report["nm_patterns"]}
    assert rows["fc0/kernel"]["2:4"] and not rows["fc0/kernel"]["1:4"]
    assert not rows["fc1/kernel"]["2:4"]  # 4 inputs, dense: four non-zeros per group
    text = "\n".join(_nm_lines(report["nm_patterns"]))
    assert "fc0/kernel" in text and "  yes" in text and "   no" in text
    saved = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert saved["nm_patterns"] == report["nm_patterns"]


# -- command line -----------------------------------------------------------------------------
def run_cli(*args):
    return train.cli(["kprune.train", *map(str, args)])


@pytest.mark.integration
def test_cli_n_of_m_short_run(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--granularity=2:4", "--epochs=1", "--batch_size=512", "--progress=none"]
    args.append(f"--model_dir={run_dir}")
    assert run_cli(*args) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["granularity"] == "2:4" and results["budget"] == "uniform"
    assert results["schedule"]["final_sparsity"] == 0.5
    flagfile = (run_dir / "run.flags").read_text()
    assert "--granularity=2:4" in flagfile and "--target_sparsity=0.5" in flagfile
    assert run_cli(f"--flagfile={run_dir / 'run.flags'}", "--dry_run") == 0  # the same run
    stripped = keras.saving.load_model(run_dir / "model.keras")
    for layer in stripped.layers:
        if hasattr(layer, "kernel"):
            assert (group_counts(layer.kernel.numpy(), 4, 0) == 2).all()


@pytest.mark.integration
def test_cli_channel_runs_with_defaults(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--granularity=channel", "--target_sparsity=0.5", "--epochs=1", "--batch_size=512"]
    args += ["--progress=none", "--export=tflite"]
    assert run_cli(*args, f"--model_dir={run_dir}") == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["granularity"] == "channel" and results["budget"] is None
    assert results["scope"] == "layer" and results["criterion"]["class"] == "ChannelImportance"
    stripped = keras.saving.load_model(run_dir / "model.keras")
    fc1 = stripped.get_layer("fc1").kernel.numpy()
    assert int((np.abs(fc1).sum(axis=0) == 0).sum()) == 150  # half of fc1's 300 channels
    # --export writes the shrunk model: fc1 150 and fc2 50 units left of 300 and 100 (the
    # logits stay), so 64*150+150 + 150*50+50 + 50*10+10 parameters.
    shrunk = keras.saving.load_model(run_dir / "export" / "model.keras")
    assert shrunk.get_layer("fc1").units == 150 and shrunk.get_layer("fc2").units == 50
    assert shrunk.count_params() == 64 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10
    report = results["export"]["shrink"]
    assert report["params"]["shrunk"] == shrunk.count_params()
    assert report["params"]["dense"] == stripped.count_params()
    assert (run_dir / "export" / "model.tflite").exists()


def test_cli_dry_run_mentions_the_granularity_and_default_stays_weight(capsys):
    assert run_cli("--granularity=2:4", "--method=snip", "--dry_run") == 0
    out = capsys.readouterr().out
    assert "granularity 2:4" in out and "target sparsity 0.5" in out
    assert run_cli("--granularity=channel", "--dry_run") == 0
    out = capsys.readouterr().out
    assert "granularity channel" in out and "layer scope" in out
    assert run_cli("--dry_run") == 0
    assert "granularity" not in capsys.readouterr().out


def test_run_flags_of_weight_pruning_have_no_granularity_line():
    values = flags.FlagValues()
    define_flags(values)
    values(["kprune.train"])
    config = config_from_flags(values)
    assert "granularity" not in config.flag_lines and config.budget == "erk"
    values = flags.FlagValues()
    define_flags(values)
    values(["kprune.train", "--granularity=2:4", "--method=polynomial"])
    config = config_from_flags(values)
    assert config.flag_lines["granularity"] == "--granularity=2:4"
    assert (config.budget, config.scope, config.target_sparsity) == ("uniform", "layer", 0.5)
    assert config.run_dir.name == "lenet300_100-digits-polynomial-2of4-50"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--granularity=2:4", "--method=lth"], "does not apply to --method=lth"),
        (["--granularity=2:4", "--method=fggp"], "does not apply to --method=fggp"),
        (["--granularity=channel", "--method=snip"], "does not apply to --method=snip"),
        (["--granularity=channel", "--method=cyclical"], "linear|polynomial"),
        (["--granularity=channel", "--budget=uniform"], "Drop --budget"),
        (["--granularity=channel", "--scope=erk"], "--scope=erk"),
        (["--granularity=2:4", "--budget=erk"], "--budget=erk (--scope=erk)"),
        (["--granularity=2:4", "--target_sparsity=0.9"], "--target_sparsity must be 0.5"),
        (["--granularity=abc"], 'valid forms: "weight", "channel" or "N:M"'),
        (["--granularity=3:0"], "needs N > 0 and M > 0"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_cli_bad_granularity_exits_2(args, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli(*args, f"--model_dir={run_dir}", "--progress=none") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not run_dir.exists()
