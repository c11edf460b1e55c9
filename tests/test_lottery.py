"""Lottery-ticket IMP with rewinding: exact counts, bit-exact rewinding, resume, bad input."""

import json
import math
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from kprune.workflows import checkpoint, lottery

REPO = Path(__file__).resolve().parents[1]

STEPS_PER_EPOCH = 8  # 256 examples in batches of 32
EPOCHS = 2
T = EPOCHS * STEPS_PER_EPOCH
REWIND = 5  # inside epoch 0, so later rounds start with a partial epoch
KERNELS = ("h/kernel", "o/kernel")


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((256, 16), dtype="float32")
    y = (x[:, :8].sum(axis=1) > x[:, 8:].sum(axis=1)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu", name="h"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="o"),
        ]
    )


def _sgd(learning_rate=0.1):
    return lambda: keras.optimizers.SGD(learning_rate, momentum=0.9)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _inner(model, name):
    layer = model.get_layer(name)
    return layer.layer if isinstance(layer, kprune.PruningWrapper) else layer


def _mask(model, name):
    layer = model.get_layer(name)
    if isinstance(layer, kprune.PruningWrapper):
        return layer.masks[0].numpy()
    return np.ones(layer.kernel.shape, np.float32)  # an excluded layer: nothing masked


def _state(model):
    """Everything the test checks, read straight from the layers (independent of kprune)."""
    h, bn, o = _inner(model, "h"), model.get_layer("bn"), _inner(model, "o")
    state = {
        "h/kernel": h.kernel,
        "h/bias": h.bias,
        "o/kernel": o.kernel,
        "o/bias": o.bias,
        "bn/gamma": bn.gamma,
        "bn/beta": bn.beta,
        "bn/moving_mean": bn.moving_mean,
        "bn/moving_variance": bn.moving_variance,
    }
    state = {k: np.array(v.numpy(), copy=True) for k, v in state.items()}
    state["mask/h/kernel"] = np.array(_mask(model, "h"), copy=True)
    state["mask/o/kernel"] = np.array(_mask(model, "o"), copy=True)
    return state


def _momentum(optimizer, variable):
    return np.array(optimizer.momentums[optimizer._get_variable_index(variable)].numpy())


def _momenta(model):
    opt = model.optimizer
    return {k: _momentum(opt, _inner(model, k.split("/")[0]).kernel) for k in KERNELS}


class Recorder(keras.callbacks.Callback):
    """Records, per round: the state when training starts and ends, optimizer facts, and in
    round 0 its own copy of the state right after step REWIND (the rewind point)."""

    def __init__(self, log, round_index):
        super().__init__()
        self.log = log.setdefault(round_index, {"fits": 0, "epoch_starts": []})
        self.round = round_index

    def on_train_begin(self, logs=None):
        self.log["fits"] += 1
        if self.log["fits"] > 1:
            return
        opt = self.model.optimizer
        self.log["start"] = _state(self.model)
        self.log["start_step"] = int(opt.iterations.numpy())
        self.log["start_lr"] = float(opt.learning_rate.numpy())
        self.log["start_momentum"] = _momenta(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.log["epoch_starts"].append((epoch, int(self.model.optimizer.iterations.numpy())))

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        if self.round == 0 and int(opt.iterations.numpy()) == REWIND:
            self.log["snapshot"] = _state(self.model)
            self.log["snapshot_momentum"] = _momenta(self.model)

    def on_train_end(self, logs=None):
        self.log["end"] = _state(self.model)


def _run(run_dir, log=None, rounds=3, model=None, **kwargs):
    log = {} if log is None else log
    args = dict(
        make_optimizer=_sgd(),
        loss=LOSS,
        rounds=rounds,
        epochs=EPOCHS,
        run_dir=run_dir,
        rewind_step=REWIND,
        test_data=_data(),
        compile_kwargs={"jit_compile": False},  # tiny model: tracing is cheaper than XLA here
        callbacks=lambda r: [Recorder(log, r)],
    )
    args.update(kwargs)
    return lottery.run_lottery(_model() if model is None else model, _data(), **args), log


def _bits(array):
    return np.ascontiguousarray(array).view(np.uint32)


def _expected_mask(previous_weights, previous_masks, keep):
    """Independent global selection: numpy stable sort, pruned weights ranked first."""
    scores = np.concatenate(
        [
            np.where(previous_masks[k].ravel() != 0, np.abs(previous_weights[k]).ravel(), -np.inf)
            for k in KERNELS
        ]
    )
    order = np.argsort(scores, kind="stable")
    keep_flat = np.ones(scores.size, np.float32)
    keep_flat[order[: scores.size - keep]] = 0
    out, start = {}, 0
    for k in KERNELS:
        size = previous_masks[k].size
        out[k] = keep_flat[start : start + size].reshape(previous_masks[k].shape)
        start += size
    return out


# -- counts ---------------------------------------------------------------------------------
def test_kept_counts_nearest_matches_one_minus_rate_to_the_r():
    assert lottery.kept_counts(1000, 0.2, 3) == [1000, 800, 640, 512]
    counts = lottery.kept_counts(576, 0.2, 6)
    # 576 * 0.8 ** r has no half-way case for r <= 6, so float rounding agrees here.
    assert counts == [round(576 * 0.8**r) for r in range(7)]
    assert lottery.kept_counts(5, 0.1, 1) == [5, 4]  # 4.5 rounds half to even


def test_kept_counts_ceil_is_open_lth_and_exact():
    assert lottery.kept_counts(10, 0.2, 3, rounding="ceil") == [10, 8, 6, 4]
    # In floats 0.7 * 10 = 7.000000000000001 and ceil would remove 8; the rule is exact.
    assert lottery.kept_counts(10, 0.7, 1, rounding="ceil") == [10, 3]
    counts = lottery.kept_counts(576, 0.2, 5, rounding="ceil")
    for before, after in zip(counts, counts[1:]):
        assert before - after == math.ceil(before / 5)


@pytest.mark.parametrize("rate", [0, 0.0, 1, 1.0, -0.2, 1.5, True, "0.2", None])
def test_kept_counts_rejects_rates_outside_open_interval(rate):
    with pytest.raises(ValueError, match=r"`rate`.*\(0, 1\)"):
        lottery.kept_counts(100, rate, 2)


def test_kept_counts_rejects_rounds_that_empty_the_model():
    with pytest.raises(ValueError, match="round 3 would keep no weight"):
        lottery.kept_counts(4, 0.5, 5)
    with pytest.raises(ValueError, match="rounding='floor'"):
        lottery.kept_counts(4, 0.5, 1, rounding="floor")


def test_magnitude_masks_global_selection_among_unpruned():
    base = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(2, name="a"), keras.layers.Dense(1, name="b")]
    )
    model = kprune.prune(base, None, scope="global")
    kprune.set_masks(model, {"a/kernel": np.array([[1, 1], [1, 0]])})
    model.get_layer("a").layer.kernel.assign([[0.5, -3.0], [0.5, 0.0]])
    model.get_layer("b").layer.kernel.assign([[-0.2], [4.0]])
    # Active magnitudes: a: 0.5, 3.0, 0.5 ; b: 0.2, 4.0. Keep 3 -> drop 0.2 and the first 0.5.
    masks = lottery.magnitude_masks(model, 3)
    np.testing.assert_array_equal(masks["a/kernel"], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(masks["b/kernel"], [[0], [1]])
    assert kprune.get_masks(model)["b/kernel"].all()  # the model itself is unchanged
    assert sum(m.sum() for m in lottery.magnitude_masks(model, 5).values()) == 5
    with pytest.raises(ValueError, match="keep=6"):
        lottery.magnitude_masks(model, 6)  # only 5 weights are unpruned


# -- the workflow ---------------------------------------------------------------------------
def test_rounds_exact_sparsity_rewinding_and_files(tmp_path):
    results, log = _run(
        tmp_path,
        make_optimizer=lambda: keras.optimizers.SGD(
            keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9),
            momentum=0.9,
        ),
    )
    n = 16 * 32 + 32 * 2
    assert results["num_prunable"] == n
    assert results["pruned_variables"] == list(KERNELS)
    rows = results["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]

    snapshot = log[0]["snapshot"]
    init_lr = 0.1
    for r, row in enumerate(rows):
        keep = round(n * 0.8**r)
        # Exact sparsity: the masks of the round keep round(N * 0.8 ** r) weights.
        saved = np.load(tmp_path / f"round_{r:02d}" / "masks.npz")
        assert sorted(saved.files) == sorted(KERNELS)
        assert sum(int(saved[k].sum()) for k in KERNELS) == keep
        assert row["kept"] == keep and row["total"] == n
        assert row["global_sparsity"] == 1 - keep / n
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["start_step"] == (0 if r == 0 else REWIND) and row["end_step"] == T
        assert row["steps"] == T - row["start_step"]
        assert row["epochs"] == row["steps"] / STEPS_PER_EPOCH
        assert row["wall_time_s"] >= row["train_time_s"] > 0
        report = json.loads((tmp_path / f"round_{r:02d}" / "sparsity.json").read_text())
        assert report["pruned"]["total"] - report["pruned"]["nonzero"] >= n - keep
        end = log[r]["end"]
        for k in KERNELS:
            np.testing.assert_array_equal(saved[k], end["mask/" + k])
            assert (end[k][saved[k] == 0] == 0).all()  # pruned weights stayed exactly zero
        if r == 0:
            assert log[0]["start_lr"] == pytest.approx(init_lr)
            continue

        start, previous = log[r]["start"], log[r - 1]["end"]
        # The pruned weights are the smallest |w| among those still unpruned after round r-1,
        # chosen globally, and masks only shrink.
        expected = _expected_mask(
            {k: previous[k] for k in KERNELS}, {k: previous["mask/" + k] for k in KERNELS}, keep
        )
        for k in KERNELS:
            np.testing.assert_array_equal(start["mask/" + k], expected[k])
            assert (start["mask/" + k] <= previous["mask/" + k]).all()
        # Rewinding is bit-exact: kernels = snapshot at step REWIND times the mask; biases and
        # BatchNorm parameters and moving statistics = the snapshot.
        for k in KERNELS:
            want = snapshot[k] * start["mask/" + k]
            np.testing.assert_array_equal(_bits(start[k]), _bits(want))
        for k in ("h/bias", "o/bias", "bn/gamma", "bn/beta", "bn/moving_mean"):
            np.testing.assert_array_equal(_bits(start[k]), _bits(snapshot[k]))
        np.testing.assert_array_equal(
            _bits(start["bn/moving_variance"]), _bits(snapshot["bn/moving_variance"])
        )
        assert not np.array_equal(snapshot["h/kernel"], log[0]["start"]["h/kernel"])
        # A new optimizer whose step (and learning-rate schedule) resumes at REWIND.
        assert log[r]["start_step"] == REWIND
        assert log[r]["start_lr"] == pytest.approx(init_lr * 0.9**REWIND, rel=1e-6)
        for k in KERNELS:
            assert not log[r]["start_momentum"][k].any()
        # Epochs line up with round 0: a partial epoch 0 from step 5, then epoch 1 at step 8.
        assert log[r]["epoch_starts"] == [(0, REWIND), (1, STEPS_PER_EPOCH)]
    assert log[0]["epoch_starts"] == [(0, 0), (1, STEPS_PER_EPOCH)]

    assert results["total_steps"] == T + 3 * (T - REWIND)
    assert results["wall_time_s"] == pytest.approx(sum(r["wall_time_s"] for r in rows))
    assert results["final_global_sparsity"] == rows[-1]["global_sparsity"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["settings"]["rewind_step"] == REWIND and on_disk["settings"]["rounds"] == 3

    # The rewind snapshot file holds exactly the state the test saw after step REWIND.
    with h5py.File(tmp_path / "round_00" / "rewind.weights.h5") as f:
        stored = []
        f.visititems(lambda name, obj: stored.append(obj[()]) if hasattr(obj, "shape") else None)
    assert any(np.array_equal(_bits(s), _bits(snapshot["h/kernel"])) for s in stored)

    final = keras.models.load_model(tmp_path / "final.keras")
    for k in KERNELS:
        np.testing.assert_array_equal(kprune.get_masks(final)[k], log[3]["end"]["mask/" + k])


def test_rewind_to_init_and_rewound_optimizer_state_with_ceil_rounding(tmp_path):
    # rewind_step=0 is the original lottery ticket: survivors go back to the initialisation.
    results, log = _run(tmp_path / "init", rounds=1, rewind_step=0, exclude=["o"])
    assert results["pruned_variables"] == ["h/kernel"] and results["excluded"] == ["o"]
    init = log[0]["start"]
    start = log[1]["start"]
    np.testing.assert_array_equal(
        _bits(start["h/kernel"]), _bits(init["h/kernel"] * start["mask/h/kernel"])
    )
    np.testing.assert_array_equal(_bits(start["o/kernel"]), _bits(init["o/kernel"]))
    assert int(start["mask/h/kernel"].sum()) == round(512 * 0.8)
    assert start["mask/o/kernel"].all()  # excluded layer: no wrapper, ones reported by _state
    assert results["rounds"][1]["start_step"] == 0 and results["total_steps"] == 2 * T

    # reset_optimizer=False: the optimizer state is rewound too (momentum at step REWIND,
    # with the slots of pruned weights zeroed); rounding="ceil" counts as open_lth does.
    results, log = _run(tmp_path / "rewound", rounds=2, reset_optimizer=False, rounding="ceil")
    kept = [r["kept"] for r in results["rounds"]]
    assert kept == [576, 576 - math.ceil(576 / 5), 460 - math.ceil(460 / 5)]
    for r in (1, 2):
        assert log[r]["start_step"] == REWIND
        for k in KERNELS:
            mask = log[r]["start"]["mask/" + k]
            want = log[0]["snapshot_momentum"][k] * mask
            np.testing.assert_array_equal(log[r]["start_momentum"][k], want)
            assert log[r]["start_momentum"][k].any()


class BatchTag(keras.layers.Layer):
    """Passes features 0..15 on and remembers feature 16 (the batch number) of the last batch."""

    def build(self, input_shape):
        self.tag = self.add_weight(shape=(), initializer="zeros", trainable=False, name="tag")

    def call(self, x, training=None):
        if training:
            self.tag.assign(x[0, 16])
        return x[:, :16]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 16)


def test_later_rounds_see_the_batches_round_0_saw_at_the_same_steps(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((256, 16), dtype="float32")
    y = (x[:, :8].sum(axis=1) > x[:, 8:].sum(axis=1)).astype("int32")
    batch_number = (np.arange(256) // 32).astype("float32")[:, None]
    data = tf.data.Dataset.from_tensor_slices((np.hstack([x, batch_number]), y)).batch(32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((17,)), BatchTag(), keras.layers.Dense(8, name="h"), keras.layers.Dense(2)]
    )
    seen = {}

    class Batches(keras.callbacks.Callback):
        def __init__(self, r):
            super().__init__()
            self.steps = seen.setdefault(r, [])

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            self.steps.append((step, int(self.model.layers[0].tag.numpy())))

    lottery.run_lottery(
        model,
        data,
        make_optimizer=_sgd(),
        loss=LOSS,
        rounds=1,
        epochs=EPOCHS,
        rewind_step=REWIND,
        run_dir=tmp_path,
        compile_kwargs={"jit_compile": False},
        callbacks=lambda r: [Batches(r)],
    )
    # Step i (1-based) trains on batch (i - 1) mod 8, in round 0 and after rewinding alike.
    assert seen[0] == [(i, (i - 1) % STEPS_PER_EPOCH) for i in range(1, T + 1)]
    assert seen[1] == [(i, (i - 1) % STEPS_PER_EPOCH) for i in range(REWIND + 1, T + 1)]


class Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt("simulated interruption")


def _file_times(directory):
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def test_resume_after_interruption_redoes_only_unfinished_rounds(tmp_path):
    reference, _ = _run(tmp_path / "reference")

    run_dir = tmp_path / "interrupted"
    log = {}

    def callbacks(r):
        return [Recorder(log, r)] + ([Interrupt()] if r == 2 else [])

    with pytest.raises(KeyboardInterrupt):
        _run(run_dir, callbacks=callbacks)
    assert (run_dir / "round_00").is_dir() and (run_dir / "round_01").is_dir()
    assert not (run_dir / "round_02").exists() and (run_dir / ".round_02.tmp").is_dir()
    assert len(json.loads((run_dir / "results.json").read_text())["rounds"]) == 2
    times = {r: _file_times(run_dir / f"round_{r:02d}") for r in (0, 1)}
    init_time = (run_dir / "init.weights.h5").stat().st_mtime_ns

    # Resume with a model whose weights differ: the saved initialisation is used instead.
    resumed_log = {}
    results, _ = _run(run_dir, log=resumed_log, model=_model(seed=123))
    assert sorted(resumed_log) == [2, 3]  # rounds 0 and 1 were not trained again
    assert {r: _file_times(run_dir / f"round_{r:02d}") for r in (0, 1)} == times
    assert (run_dir / "init.weights.h5").stat().st_mtime_ns == init_time
    assert not (run_dir / ".round_02.tmp").exists()
    # The resumed run is the uninterrupted run, bit for bit (deterministic CPU training).
    assert results["total_steps"] == reference["total_steps"]
    for got, want in zip(results["rounds"], reference["rounds"]):
        for key in ("kept", "global_sparsity", "start_step", "end_step", "test_accuracy"):
            assert got[key] == want[key], key
    for r in range(4):
        got = np.load(run_dir / f"round_{r:02d}" / "masks.npz")
        want = np.load(tmp_path / "reference" / f"round_{r:02d}" / "masks.npz")
        for k in KERNELS:
            np.testing.assert_array_equal(got[k], want[k])
    got, want = _model(), _model()
    got = kprune.prune(got, None, scope="global")
    want = kprune.prune(want, None, scope="global")
    got.load_weights(run_dir / "round_03" / "weights.weights.h5")
    want.load_weights(tmp_path / "reference" / "round_03" / "weights.weights.h5")
    for a, b in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_array_equal(_bits(a.astype(np.float32)), _bits(b.astype(np.float32)))

    # A finished run called again trains nothing; more rounds continue it.
    again_log = {}
    again, _ = _run(run_dir, log=again_log)
    assert again_log == {} and again["rounds"] == results["rounds"]
    more_log = {}
    more, _ = _run(run_dir, log=more_log, rounds=4)
    assert sorted(more_log) == [4]
    assert more["rounds"][4]["kept"] == round(576 * 0.8**4)
    # Other settings in the same run_dir are refused.
    with pytest.raises(ValueError, match="other settings.*rate"):
        _run(run_dir, rate=0.5)


class InterruptAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")


def _round_weights(run_dir, r):
    model = kprune.prune(_model(), None, scope="global")
    model.load_weights(run_dir / f"round_{r:02d}" / "weights.weights.h5")
    return model.get_weights()


def test_an_interrupted_round_resumes_from_its_own_checkpoint(tmp_path):
    reference, _ = _run(tmp_path / "reference", rounds=1)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        _run(run_dir, rounds=1, callbacks=lambda r: [InterruptAfterFirstEpoch()] if r else [])
    # Round 1 stopped after its first (partial) epoch, steps 5..8: checkpointed at epoch 1.
    work = run_dir / ".round_01.tmp"
    assert checkpoint.saved_epochs(work / "checkpoints") == [1]
    assert not (run_dir / "round_01").exists()

    log = {}
    results, _ = _run(run_dir, log=log, rounds=1)
    assert sorted(log) == [1]
    assert log[1]["start_step"] == STEPS_PER_EPOCH  # from the checkpoint, not the rewind point
    assert log[1]["epoch_starts"] == [(1, STEPS_PER_EPOCH)]
    finished = run_dir / "round_01"
    assert (finished / "history.json").exists() and not (finished / "checkpoints").exists()
    assert not work.exists()
    row, want = results["rounds"][1], reference["rounds"][1]
    for key in ("kept", "start_step", "end_step", "steps", "test_accuracy", "test_loss"):
        assert row[key] == want[key], key
    assert row["train_metrics"] == want["train_metrics"]
    for got, expected in zip(_round_weights(run_dir, 1), _round_weights(tmp_path / "reference", 1)):
        np.testing.assert_array_equal(_bits(got), _bits(expected))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rate=0.0), ValueError, r"rate=0\.0"),
        (dict(rate=1.0), ValueError, r"rate=1\.0"),
        (dict(rate=1.2), ValueError, r"\(0, 1\).*rate=1\.2"),
        (dict(rounds=0), ValueError, "rounds=0"),
        (dict(rounds=2.5), ValueError, "rounds=2.5"),
        (dict(rewind_step=T), ValueError, rf"\[0, {T}\).*rewind_step={T}"),
        (dict(rewind_step=-1), ValueError, "rewind_step=-1"),
        (dict(epochs=0), ValueError, "epochs=0"),
        (dict(make_optimizer=keras.optimizers.SGD(0.1)), TypeError, "make_optimizer"),
        (dict(rounding="floor"), ValueError, "rounding='floor'"),
        (dict(compile_kwargs={"optimizer": "adam"}), ValueError, "compile_kwargs"),
        (
            dict(rewind_step=5, compile_kwargs={"steps_per_execution": 2}),
            ValueError,
            "multiple of steps_per_execution=2",
        ),
        (dict(rounds=40), ValueError, "would keep no weight"),
        (dict(exclude=["nope"]), ValueError, "nope"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(tmp_path, **kwargs)
    assert not (tmp_path / "round_00").exists()


def test_bad_data_and_optimizer_factory(tmp_path):
    x = np.zeros((8, 16), "float32")
    with pytest.raises(TypeError, match="train_data"):
        lottery.run_lottery(
            _model(), (x, x), make_optimizer=_sgd(), loss=LOSS, rounds=1, epochs=1, run_dir=tmp_path
        )
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lottery.run_lottery(
            _model(),
            _data().repeat(),
            make_optimizer=_sgd(),
            loss=LOSS,
            rounds=1,
            epochs=1,
            run_dir=tmp_path,
        )
    shared = keras.optimizers.SGD(0.1, momentum=0.9)
    with pytest.raises(ValueError, match="new one on every call"):
        _run(tmp_path / "shared", rounds=1, rewind_step=0, make_optimizer=lambda: shared)
    with pytest.raises(TypeError, match="keras.optimizers.Optimizer"):
        _run(tmp_path / "adam", rounds=1, rewind_step=0, make_optimizer=lambda: "adam")


def _readme_block(marker):
    text = (REPO / "README.md").read_text()
    after = text.split(f"<!-- {marker}:", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_lottery_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_block("lottery"), "README.md (lottery)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    results = json.loads((tmp_path / "saved_models/lottery_example/results.json").read_text())
    n = 64 * 128 + 128 * 2
    assert results["num_prunable"] == n
    sparsities = [row["global_sparsity"] for row in results["rounds"]]
    assert sparsities == [1 - round(n * 0.8**r) / n for r in range(5)]
    assert results["total_steps"] == 48 + 4 * (48 - 20)
    assert printed[0].startswith("0 0.0000 ") and printed[4].startswith(f"4 {sparsities[4]:.4f} ")
    assert printed[-1].startswith(f"total steps: {results['total_steps']} ")
