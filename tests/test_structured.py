"""Channel pruning: the tracer's classes, the train-step selection, and shrink()."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import kprune  # noqa: E402
from kprune.masks import bind_optimizer, pruning_wrappers  # noqa: E402
from kprune.structured.engine import macs_of  # noqa: E402
from kprune.structured.graph import trace_channels  # noqa: E402
from kprune.structured.shrink import channel_keep  # noqa: E402

L = keras.layers


def residual_se_model():
    """Conv-BN, a residual Add, depthwise, squeeze-excitation, separable, concat, flatten."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(x)))
    r = L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name="c2")(h))
    h = L.Add()([h, r])
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    s = L.Reshape((1, 1, 8))(L.GlobalAveragePooling2D()(d))
    s = L.Dense(8, activation="sigmoid", name="se2")(L.Dense(4, activation="relu", name="se1")(s))
    h = L.Multiply()([d, s])
    h = keras.ops.relu(L.SeparableConv2D(6, 3, padding="same", name="sep")(h)) + 1.0
    c = L.Concatenate()([h, L.Conv2D(5, 1, name="c3")(d)])
    h = L.Dense(7, name="fc")(L.Flatten()(L.MaxPooling2D()(c)))
    return keras.Model(x, L.Dense(3, name="logits")(h))


def data(n=32, shape=(8, 8, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n)


def compile_fit(model, x, y, epochs=1, batch_size=8):
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
              callbacks=[kprune.PruningCallback()])  # fmt: skip
    return model


# -- tracer -----------------------------------------------------------------------------------
def test_residual_branches_squeeze_excitation_and_depthwise_form_one_group():
    trace = trace_channels(residual_se_model())
    groups = {g.name: (g.producers, g.size) for g in trace.groups}
    assert groups == {
        "c1": (("c1", "c2", "se2"), 8),  # both Add branches and the SE gate, through dw
        "se1": (("se1",), 4),
        "sep": (("sep",), 6),
        "c3": (("c3",), 5),
        "fc": (("fc",), 7),
    }
    assert trace.num_classes == 30 and trace.blocked == []
    # The depthwise conv and both BatchNorms follow the c1 group channel by channel.
    c1 = trace.producers["c1"]
    for layer, weight in [("dw", "kernel"), ("bn1", "gamma"), ("bn2", "moving_variance")]:
        ((_, idx),) = [m for m in trace.axis_maps(trace.layer(layer), weight)]
        assert idx.tolist() == c1.tolist()
    assert trace.producers["logits"].tolist() == [-1, -1, -1]


def test_concatenate_offsets_and_flatten_repeats_the_channels_per_position():
    trace = trace_channels(residual_se_model())
    sep, c3 = trace.producers["sep"], trace.producers["c3"]
    rows = dict(trace.axis_maps(trace.layer("fc"), "kernel"))[0]
    # Flatten of (4, 4, 11): row r belongs to concatenated channel r % 11.
    assert len(rows) == 4 * 4 * 11
    concat = np.concatenate([sep, c3])
    assert rows.tolist() == np.tile(concat, 16).tolist()


def test_inputs_outputs_untraceable_layers_and_exclude_are_pinned():
    x = keras.Input((6,))
    h = L.Dense(5, name="a")(x)
    lam = L.Lambda(lambda t: t * 2.0, name="lam")(L.Dense(4, name="b")(h))
    ln = L.LayerNormalization(name="ln")(L.Dense(3, name="c")(h))
    out = L.Dense(2, name="out")(L.Concatenate()([lam, ln, h]))
    model = keras.Model(x, out)
    trace = trace_channels(model)
    assert [(b.layer, b.type) for b in trace.blocked] == [
        ("lam", "Lambda"),
        ("ln", "LayerNormalization"),
    ]
    assert (trace.producers["b"] < 0).all() and (trace.producers["c"] < 0).all()
    assert (trace.producers["a"] >= 0).all() and (trace.producers["out"] < 0).all()
    excluded = trace_channels(model, exclude=["a"])
    assert excluded.num_classes == 0


def test_nested_models_and_shared_layers_are_followed():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, L.Dense(4, name="inner_fc")(inner_in), name="block")
    shared = L.Dense(4, name="shared")
    x = keras.Input((6,))
    h = inner(x)
    y = L.Add()([shared(h), shared(L.Dense(4, name="side")(x))])
    model = keras.Model(x, L.Dense(2, name="out")(y))
    trace = trace_channels(model)
    groups = {frozenset(g.producers) for g in trace.groups}
    # `shared` reads both inner_fc's and side's channels: its input rows join them.
    assert groups == {frozenset({"inner_fc", "side"}), frozenset({"shared"})}


def test_tracer_rejects_subclassed_and_unbuilt_models():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = L.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="no Keras graph"):
        trace_channels(net)
    with pytest.raises(ValueError, match="not built"):
        trace_channels(keras.Sequential([L.Dense(2)]))


# -- training ---------------------------------------------------------------------------------
def test_constant_half_removes_exact_counts_per_group_and_whole_channels():
    model = residual_se_model()
    pruned = compile_fit(kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel"),
                         *data())  # fmt: skip
    trace = trace_channels(pruned)
    keep = channel_keep(pruned, trace)
    removed = {g.name: int((~keep[g.classes]).sum()) for g in trace.groups}
    # round half to even, as every kprune count: 8 -> 4, 4 -> 2, 6 -> 3, 5 -> 2, 7 -> 4.
    assert removed == {"c1": 4, "se1": 2, "sep": 3, "c3": 2, "fc": 4}
    masks = kprune.get_masks(pruned)
    # Whole channels: a removed class is zero in every slice, a kept one is all ones.
    for wrapper in pruning_wrappers(pruned):
        for name, mask in zip(wrapper.channel_weights, wrapper.masks):
            m = mask.numpy()
            for axis, idx in trace.axis_maps(wrapper.layer, name):
                moved = np.moveaxis(m, axis, 0).reshape(len(idx), -1)
                for i, c in enumerate(idx):
                    if c >= 0 and not keep[c]:
                        assert not moved[i].any(), (wrapper.name, name, i)
    assert masks["c1/kernel"].sum() == 3 * 3 * 3 * 4
    assert masks["logits/kernel"].sum() == 3 * 3  # 7 - 4 = 3 rows of fc's kept channels
    assert "logits/bias" not in masks  # no prunable slice: not masked


def test_linear_schedule_is_monotone_and_reaches_the_target():
    x, y = data(64)
    schedule = kprune.LinearSparsity(0.0, 0.75, begin_step=0, end_step=12, frequency=4)
    pruned = kprune.prune(residual_se_model(), schedule, granularity="channel")
    history = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            history.append(channel_keep(pruned).copy())

    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=2, batch_size=8, verbose=0,
               callbacks=[kprune.PruningCallback(), Record()])  # fmt: skip
    for before, after in zip(history, history[1:]):
        assert not (after & ~before).any()  # a removed channel never returns
    trace = trace_channels(pruned)
    final = {g.name: int((~history[-1][g.classes]).sum()) for g in trace.groups}
    # round(0.75 * n): 6 of 8, 3 of 4, round(4.5) = 4 of 6, round(3.75) = 4 of 5, 5 of 7.
    assert final == {"c1": 6, "se1": 3, "sep": 4, "c3": 4, "fc": 5}


def _two_layer(values):
    """Dense(3 -> 4) -> Dense(4 -> 2) with hand-set weights."""
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, name="h"), L.Dense(2, name="out")])
    model.get_layer("h").set_weights(values)
    model.get_layer("out").set_weights([np.ones((4, 2), "float32"), np.zeros(2, "float32")])
    return model


def _update_once(pruned, target):
    (group,) = bind_optimizer(pruned, keras.optimizers.SGD())
    group.update(tf.constant(target, tf.float64))
    return group


def test_l1_and_l2_rank_whole_groups_including_consumer_rows():
    kernel = np.array([[3.0, 1.0, 0.5, 2.0]] * 3, "float32")  # |column| sums 9, 3, 1.5, 6
    model = _two_layer([kernel, np.zeros(4, "float32")])
    model.get_layer("out").set_weights([np.array([[0], [0], [20], [0]] * np.ones((1, 2)),
                                                 "float32"), np.zeros(2, "float32")])  # fmt: skip
    # L1 per channel: kernel column + out row: 9, 3, 1.5 + 40, 6 -> remove channels 1 and 3.
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel")
    _update_once(pruned, 0.5)
    assert channel_keep(pruned).tolist() == [True, False, True, False]
    # L2 per channel: sqrt(27), sqrt(3), sqrt(0.75 + 800), sqrt(12): the same two go.
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel",
                          criterion="l2")  # fmt: skip
    _update_once(pruned, 0.5)
    assert channel_keep(pruned).tolist() == [True, False, True, False]


def test_bn_gamma_ranks_by_the_batchnorm_scale():
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, name="h"),
                              L.BatchNormalization(name="bn"), L.Dense(2, name="out")])  # fmt: skip
    bn = model.get_layer("bn")
    bn.set_weights([np.array([0.1, 5.0, -3.0, 0.2], "float32")] + bn.get_weights()[1:])
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel",
                          criterion="bn_gamma")  # fmt: skip
    _update_once(pruned, 0.5)
    assert channel_keep(pruned).tolist() == [False, True, True, False]


def test_taylor_uses_the_signed_gradient_sum_recorded_in_training():
    # One step of SGD(0) leaves the weights; the records hold sum(g) since the last update.
    model = _two_layer([np.ones((3, 4), "float32"), np.zeros(4, "float32")])
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel",
                          criterion="taylor")  # fmt: skip
    wrappers = pruning_wrappers(pruned)
    assert all(w.gradient_records for w in wrappers)
    # A training step records the signed gradient (a schedule that never updates in 1 step).
    late = kprune.ConstantSparsity(0.5, begin_step=100)
    trained = kprune.prune(model, late, granularity="channel", criterion="taylor")
    trained.compile(keras.optimizers.SGD(0.0), "mse")
    trained.fit(np.ones((4, 3), "float32"), np.tile([[100.0, -100.0]], (4, 1)), batch_size=4,
                verbose=0, callbacks=[kprune.PruningCallback()])  # fmt: skip
    records = np.concatenate([r.numpy().ravel() for w in pruning_wrappers(trained)
                              for r in w.gradient_records])  # fmt: skip
    assert (records < 0).any() and (records > 0).any()
    # The score is |sum(w * g)| per channel, on hand-made values.
    (group,) = bind_optimizer(pruned, keras.optimizers.SGD())
    values = [w.numpy() for wr in wrappers for w in wr.pruned_weights]
    grads = [np.zeros_like(v) for v in values]
    grads[0][:, 2] = 5.0  # channel 2: |sum(w * g)| = 15
    grads[0][:, 0] = 1.0  # channel 0: 3
    grads[0][0, 1], grads[0][1, 1] = 4.0, -4.0  # channel 1: signed sum 0, although |g| is big
    scores = group._scores([tf.constant(v) for v in values], [tf.constant(g) for g in grads])
    assert scores.numpy()[:4].tolist() == [3.0, 0.0, 15.0, 0.0]


def test_random_scores_are_deterministic_per_step():
    model = residual_se_model()
    a = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel", criterion="random")
    b = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel", criterion="random")
    _update_once(a, 0.5)
    _update_once(b, 0.5)
    assert channel_keep(a).tolist() == channel_keep(b).tolist()
    assert (~channel_keep(a)).sum() == 4 + 2 + 3 + 2 + 4


def test_every_producer_keeps_a_channel_at_extreme_targets():
    pruned = kprune.prune(residual_se_model(), kprune.ConstantSparsity(0.99), granularity="channel")
    _update_once(pruned, 0.99)
    trace = trace_channels(pruned)
    keep = channel_keep(pruned, trace)
    assert {g.name: int(keep[g.classes].sum()) for g in trace.groups} == {
        "c1": 1, "se1": 1, "sep": 1, "c3": 1, "fc": 1,
    }  # fmt: skip


def test_global_scope_normalizes_scores_per_group():
    # Two groups of 4: group a's weights are 100x group b's. Normalized by the group mean,
    # each loses its own weakest channels; un-normalized, all of b would go first.
    keras.utils.set_random_seed(1)
    x = keras.Input((2,))
    a = L.Dense(4, name="a")(x)
    b = L.Dense(4, name="b")(x)
    model = keras.Model(x, L.Dense(1, name="out")(L.Concatenate()([a, b])))
    cols = np.array([[4.0, 1.0, 3.0, 2.0]] * 2, "float32")
    model.get_layer("a").set_weights([100 * cols, np.zeros(4, "float32")])
    model.get_layer("b").set_weights([cols, np.zeros(4, "float32")])
    model.get_layer("out").set_weights([np.zeros((8, 1), "float32"), np.zeros(1, "float32")])
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel",
                          scope="global")  # fmt: skip
    _update_once(pruned, 0.5)
    assert channel_keep(pruned).tolist() == [True, False, True, False] * 2


def test_macs_target_removes_that_fraction_of_the_macs():
    model = residual_se_model()
    trace = trace_channels(model)
    dense = macs_of(trace)
    pruned = kprune.prune(model, kprune.ConstantSparsity(0.6), granularity="channel",
                          target="macs")  # fmt: skip
    (wrapper, *_) = pruning_wrappers(pruned)
    channels = float(wrapper.schedule(tf.constant(0, tf.int64))[1])
    assert 0.3 < channels < 0.9
    _update_once(pruned, channels)
    keep = channel_keep(pruned).astype(float)
    removed = 1 - macs_of(trace_channels(pruned), keep) / dense
    assert removed == pytest.approx(0.6, abs=0.08)  # counts are rounded per group
    with pytest.raises(ValueError, match="cannot be reached"):
        kprune.prune(model, kprune.ConstantSparsity(0.999), granularity="channel", target="macs")


def test_macs_of_known_answer():
    model = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(3, 3, padding="same", name="c"),
                              L.Flatten(), L.Dense(5, name="d")])  # fmt: skip
    trace = trace_channels(model)
    # conv: 16 positions * 9 * 2 * 3 = 864; dense: 48 * 5 = 240.
    assert macs_of(trace) == 864 + 240
    # Removing one of the conv's 3 channels: 16 * 9 * 2 * 2 + 32 * 5.
    assert macs_of(trace, np.array([1, 0, 1])) == 576 + 160


def test_bad_input_says_what_to_do():
    model = residual_se_model()
    with pytest.raises(ValueError, match="granularity"):
        kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="filter")
    with pytest.raises(ValueError, match="criterion"):
        kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel", criterion="fggp")
    with pytest.raises(ValueError, match="monotone"):
        cyc = kprune.CyclicalSparsity(0.5, 0, 20, cycles=2, frequency=5)
        kprune.prune(model, cyc, granularity="channel")
    with pytest.raises(ValueError, match="granularity='channel' only"):
        kprune.prune(model, kprune.ConstantSparsity(0.5), target="macs")
    with pytest.raises(ValueError, match="budget"):
        kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel", budget="erk")
    only_logits = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    with pytest.raises(ValueError, match="no channel that can be removed"):
        kprune.prune(only_logits, kprune.ConstantSparsity(0.5), granularity="channel")
    lam = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Lambda(lambda t: t), L.Dense(2)])
    with pytest.raises(ValueError, match=r"Lambda"):
        kprune.prune(lam, kprune.ConstantSparsity(0.5), granularity="channel")


def test_untraceable_layers_are_named_in_a_warning():
    x = keras.Input((6,))
    h = L.Dense(5, name="a")(x)
    out = L.Dense(2)(L.Concatenate()([h, L.LayerNormalization(name="ln")(L.Dense(3)(x))]))
    with pytest.warns(UserWarning, match=r"ln \(LayerNormalization"):
        kprune.prune(keras.Model(x, out), kprune.ConstantSparsity(0.5), granularity="channel")


# -- shrink -----------------------------------------------------------------------------------
def test_shrink_equals_the_masked_model_and_loads_without_kprune_objects(tmp_path):
    x, y = data()
    model = residual_se_model()
    pruned = compile_fit(kprune.prune(model, kprune.ConstantSparsity(0.5), granularity="channel"),
                         x, y)  # fmt: skip
    small = kprune.shrink(pruned)
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert not any(isinstance(layer, kprune.PruningWrapper) for layer in small.layers)
    widths = {n: small.get_layer(n) for n in ("c1", "c2", "se1", "se2", "sep", "c3", "fc")}
    assert widths["c1"].filters == widths["c2"].filters == widths["se2"].units == 4
    assert (widths["se1"].units, widths["sep"].filters, widths["c3"].filters) == (2, 3, 3)
    assert widths["fc"].units == 3
    assert small.count_params() < model.count_params() / 2
    path = tmp_path / "small.keras"
    small.save(path)
    config = (tmp_path / "small.keras").read_bytes()
    assert b"kprune" not in config  # nothing of kprune in the saved file
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), small.predict(x, verbose=0))


def test_shrink_after_saving_and_loading_the_pruned_model(tmp_path):
    x, y = data()
    pruned = compile_fit(kprune.prune(residual_se_model(), kprune.ConstantSparsity(0.5),
                                      granularity="channel"), x, y)  # fmt: skip
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert [w.channel_weights for w in pruning_wrappers(loaded)] == [
        w.channel_weights for w in pruning_wrappers(pruned)
    ]
    np.testing.assert_allclose(kprune.shrink(loaded).predict(x, verbose=0),
                               pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-5)  # fmt: skip


def test_shrink_refuses_models_without_channel_masks():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
    with pytest.raises(ValueError, match="no channel masks"):
        kprune.shrink(model)
    with pytest.raises(ValueError, match="no channel masks"):
        kprune.shrink(kprune.prune(model, kprune.ConstantSparsity(0.5)))
    with pytest.raises(TypeError):
        kprune.shrink("model")
