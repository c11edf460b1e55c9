"""kprune.prune_at_init / masks_at_init: keep-sets, exact counts, untouched models, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kprune
from kprune import scores
from kprune.allocation import erk_prune_counts

RNG = np.random.default_rng(7)


def numpy_keep(score_list, sparsity):
    """Reference global selection: prune the round(s*N) lowest scores, ties by flat position."""
    flat = np.concatenate([s.ravel() for s in score_list])
    k = int(np.round(sparsity * flat.size))
    order = np.lexsort((np.arange(flat.size), flat))  # by score, then by position
    keep = np.ones(flat.size, np.float32)
    keep[order[:k]] = 0
    out, start = [], 0
    for s in score_list:
        out.append(keep[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def mlp(seed=0, widths=(5, 7, 3), bias=True):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((widths[0],))]
    for i, w in enumerate(widths[1:-1]):
        layers.append(keras.layers.Dense(w, activation="relu", use_bias=bias, name=f"h{i}"))
    layers.append(keras.layers.Dense(widths[-1], use_bias=bias, name="out"))
    return keras.Sequential(layers)


def np_mlp_grads(model, x, y, temperature=1.0):
    """float64 dL/dW of a 1-hidden-layer ReLU MLP with mean softmax cross-entropy, by hand."""
    w1, b1, w2, b2 = (np.asarray(v, np.float64) for v in model.get_weights())
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    z = (h @ w2 + b2) / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_z = (p - np.eye(w2.shape[1])[y]) / len(x) / temperature
    d_h = d_z @ w2.T
    return [x.T @ (d_h * (pre > 0)), h.T @ d_z], [w1, w2]


def conv_bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(6, 3, padding="same", name="c2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.3)(h)
    outputs = keras.layers.Dense(3, name="fc")(h)
    return keras.Model(inputs, outputs)


@keras.saving.register_keras_serializable(package="test_at_init")
class Scale(keras.layers.Layer):
    """A layer with a trainable weight that kprune does not prune."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def all_values(model):
    return [np.array(v.numpy()) for v in model.variables]


X = RNG.normal(size=(24, 5)).astype("float32")
Y = np.arange(24) % 3
ALL = [
    ("snip", {}),
    ("grasp", {}),
    ("synflow", {"iterations": 5}),
    ("random", {"seed": 3}),
    ("magnitude", {}),
]


# -- keep-sets against independent computations ---------------------------------------------
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_snip_keep_set_matches_numpy(sparsity):
    model = mlp()
    grads, ws = np_mlp_grads(model, X.astype(np.float64), Y)
    expected = numpy_keep([np.abs(g * w) for g, w in zip(grads, ws)], sparsity)
    masks = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=sparsity)
    assert list(masks) == ["h0/kernel", "out/kernel"]
    for got, exp in zip(masks.values(), expected):
        np.testing.assert_array_equal(got, exp)


def test_snip_averages_gradients_over_batches():
    model = mlp(seed=1)
    # Two halves of equal size: the mean of their gradients is the full-batch gradient.
    grads, ws = np_mlp_grads(model, X.astype(np.float64), Y)
    expected = numpy_keep([np.abs(g * w) for g, w in zip(grads, ws)], 0.6)
    masks = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.6, batches=2)
    for got, exp in zip(masks.values(), expected):
        np.testing.assert_array_equal(got, exp)
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(12)
    from_ds = kprune.masks_at_init(model, ds, method="snip", sparsity=0.6, batches=2)
    for got, exp in zip(from_ds.values(), expected):
        np.testing.assert_array_equal(got, exp)


def test_grasp_keep_set_matches_finite_difference_scores():
    model = mlp(seed=2)
    temperature = 200.0
    x64 = X.astype(np.float64)
    grads, ws = np_mlp_grads(model, x64, Y, temperature)
    # Hg by central differences of the hand-written gradient, along g.
    eps = 1e-3
    w1, b1, w2, b2 = (np.asarray(v, np.float64) for v in model.get_weights())

    def grads_at(a1, a2):
        shadow = mlp(seed=2)
        shadow.set_weights([a1, b1, a2, b2])
        return np_mlp_grads(shadow, x64, Y, temperature)[0]

    plus = grads_at(w1 + eps * grads[0], w2 + eps * grads[1])
    minus = grads_at(w1 - eps * grads[0], w2 - eps * grads[1])
    hg = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
    grasp = [-w * h for w, h in zip(ws, hg)]
    # GraSP removes the highest scores: keep-set = "prune the lowest" of -score.
    expected = numpy_keep([-s for s in grasp], 0.7)
    masks = kprune.masks_at_init(model, (X, Y), method="grasp", sparsity=0.7)
    for got, exp in zip(masks.values(), expected):
        np.testing.assert_array_equal(got, exp)
    # And the opposite rule would give a different keep-set (the test can tell them apart).
    wrong = numpy_keep(grasp, 0.7)
    assert any(not np.array_equal(g, w) for g, w in zip(masks.values(), wrong))


def numpy_synflow_masks(ws, sparsity, iterations):
    a = [np.abs(w) for w in ws]
    masks = [np.ones_like(w) for w in ws]
    for k in range(1, iterations + 1):
        s_k = sparsity if k == iterations else 1 - (1 - sparsity) ** (k / iterations)
        eff = [m * w for m, w in zip(masks, a)]
        sc = []
        for layer in range(len(eff)):
            left = np.ones(eff[0].shape[0])
            for m in eff[:layer]:
                left = left @ m
            right = np.ones(eff[-1].shape[1])
            for m in reversed(eff[layer + 1 :]):
                right = m @ right
            sc.append(eff[layer] * np.outer(left, right))
        # Pruned weights rank below every active one (monotone).
        sc = [np.where(m > 0, s / max(x.max() for x in sc), -np.inf) for s, m in zip(sc, masks)]
        masks = numpy_keep(sc, s_k)
    return masks


@pytest.mark.parametrize("iterations", [1, 4])
def test_synflow_matches_closed_form_selection(iterations):
    model = mlp(seed=3, widths=(4, 6, 5, 3), bias=False)
    ws = [np.asarray(w, np.float64) for w in model.get_weights()]
    expected = numpy_synflow_masks(ws, 0.8, iterations)
    masks = kprune.masks_at_init(model, method="synflow", sparsity=0.8, iterations=iterations)
    for got, exp in zip(masks.values(), expected):
        np.testing.assert_array_equal(got, exp)


def connected(masks):
    reach = np.ones(masks[0].shape[0], bool)
    for m in masks:
        reach = (reach.astype(np.float64) @ m) > 0
    return bool(reach.any())


def test_iterative_synflow_avoids_the_layer_collapse_of_snip():
    model = mlp(seed=0, widths=(32, 512, 512, 10))
    x = RNG.normal(size=(128, 32)).astype("float32")
    y = np.arange(128) % 10
    snip = list(kprune.masks_at_init(model, (x, y), method="snip", sparsity=0.999).values())
    synflow = list(kprune.masks_at_init(model, method="synflow", sparsity=0.999).values())
    kept = round(0.001 * sum(m.size for m in snip))
    assert sum(int(m.sum()) for m in snip) == sum(int(m.sum()) for m in synflow) == kept
    # SNIP empties a whole layer: no path from input to output is left.
    assert min(int(m.sum()) for m in snip) == 0
    assert not connected(snip)
    # 100 SynFlow rounds keep every layer and a connected network.
    assert min(int(m.sum()) for m in synflow) > 0
    assert connected(synflow)


# -- counts, determinism, models --------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer", "erk"])
def test_exact_counts_for_every_method(scope):
    model = conv_bn_model()
    x = RNG.normal(size=(16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 3
    sizes = [3 * 3 * 3 * 4, 3 * 3 * 4 * 6, 6 * 3]
    shapes = [(3, 3, 3, 4), (3, 3, 4, 6), (6, 3)]
    for method, options in ALL:
        masks = kprune.masks_at_init(
            model, (x, y), method=method, sparsity=0.7, scope=scope, **options
        )
        zeros = [int(m.size - m.sum()) for m in masks.values()]
        assert all(set(np.unique(m)) <= {0.0, 1.0} for m in masks.values())
        if scope == "global":
            assert sum(zeros) == round(0.7 * sum(sizes)), method
        elif scope == "layer":
            assert zeros == [round(0.7 * n) for n in sizes], method
        else:
            assert zeros == erk_prune_counts(shapes, 0.7), method


def test_scoring_leaves_the_model_bit_identical_and_pruned_copy_consistent():
    model = conv_bn_model()
    x = RNG.normal(size=(16, 8, 8, 3)).astype("float32") * 3 + 1
    y = np.arange(16) % 3
    before = all_values(model)
    # Also SynFlow in the model's own precision: it then runs the original model itself.
    for method, options in [*ALL, ("synflow", {"iterations": 2, "dtype": "float32"})]:
        pruned = kprune.prune_at_init(
            model, (x, y), method=method, sparsity=0.6, batches=2, **options
        )
        after = all_values(model)
        assert all(np.array_equal(a, b) for a, b in zip(before, after)), method
        # BatchNorm statistics of the copy are the original ones (scoring did not commit any).
        for name in ("bn1", "bn2"):
            for a, b in zip(model.get_layer(name).weights, pruned.get_layer(name).weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
        masks = kprune.get_masks(pruned)
        for path, mask in masks.items():
            layer = pruned.get_layer(path.split("/")[0])
            original = model.get_layer(layer.name).kernel.numpy()
            np.testing.assert_array_equal(layer.layer.kernel.numpy(), original * mask)
        assert all(w.schedule is None for w in kprune.api.pruning_wrappers(pruned))


def test_deterministic_for_a_seed_and_data():
    model = conv_bn_model()
    x = RNG.normal(size=(16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 3
    for method, options in ALL:
        a = kprune.masks_at_init(model, (x, y), method=method, sparsity=0.5, **options)
        b = kprune.masks_at_init(model, (x, y), method=method, sparsity=0.5, **options)
        assert all(np.array_equal(a[k], b[k]) for k in a), method
    r1 = kprune.masks_at_init(model, method="random", sparsity=0.5, seed=1)
    r2 = kprune.masks_at_init(model, method="random", sparsity=0.5, seed=2)
    assert any(not np.array_equal(r1[k], r2[k]) for k in r1)


def test_model_with_a_non_prunable_layer_and_exclude():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    h = Scale(name="scale")(h)
    h = keras.layers.Dense(8, activation="relu", name="b")(h)
    outputs = keras.layers.Dense(3, name="c")(h)
    model = keras.Model(inputs, outputs)
    model.get_layer("scale").scale.assign(np.linspace(0.5, 2.0, 8))
    before = all_values(model)
    for method, options in ALL:
        pruned = kprune.prune_at_init(
            model, (X, Y), method=method, sparsity=0.5, exclude=["c"], **options
        )
        assert list(kprune.get_masks(pruned)) == ["a/kernel", "b/kernel"]
        assert type(pruned.get_layer("c")).__name__ == "Dense"
        np.testing.assert_allclose(pruned.get_layer("scale").scale.numpy(), np.linspace(0.5, 2, 8))
        report = kprune.sparsity_report(pruned)
        assert report["pruned"]["total"] - report["pruned"]["nonzero"] == round(0.5 * 104)
    assert all(np.array_equal(a, b) for a, b in zip(before, all_values(model)))
    # The non-prunable layer takes part in the forward pass: SNIP scores depend on it.
    plain = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, exclude=["c"])
    model.get_layer("scale").scale.assign(np.linspace(2.0, 0.1, 8))
    rescaled = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, exclude=["c"])
    assert any(not np.array_equal(plain[k], rescaled[k]) for k in plain)


def first_output(y_true, y_pred):
    """A loss that ignores the labels, so its scores differ from cross-entropy's."""
    return tf.reduce_mean(y_pred[:, 0] ** 2)


def test_nested_model_paths_and_compiled_loss():
    keras.utils.set_random_seed(5)
    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(6, activation="relu", name="d1")], name="block"
    )
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(3, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    for method, options in ALL:
        pruned = kprune.prune_at_init(model, (X, Y), method=method, sparsity=0.5, **options)
        assert list(kprune.get_masks(pruned)) == ["block/d1/kernel", "head/kernel"]
    # Uncompiled: sparse cross-entropy from logits. Compiled: the compiled loss.
    default = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5)
    crossentropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    explicit = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, loss=crossentropy)
    assert all(np.array_equal(default[k], explicit[k]) for k in default)
    model.compile("sgd", first_output)
    compiled = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5)
    custom = kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, loss=first_output)
    assert all(np.array_equal(compiled[k], custom[k]) for k in compiled)
    assert any(not np.array_equal(compiled[k], default[k]) for k in compiled)


def test_pruned_model_trains_with_fixed_masks():
    model = mlp(seed=6)
    pruned = kprune.prune_at_init(model, (X, Y), method="grasp", sparsity=0.6)
    masks = kprune.get_masks(pruned)
    pruned.compile(
        keras.optimizers.SGD(0.5, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruned.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[kprune.PruningCallback()])
    after = kprune.get_masks(pruned)
    assert all(np.array_equal(masks[k], after[k]) for k in masks)
    for path, mask in masks.items():
        kernel = pruned.get_layer(path.split("/")[0]).layer.kernel.numpy()
        assert np.all(kernel[mask == 0] == 0)
        assert np.count_nonzero(kernel[mask == 1]) == int(mask.sum())


def test_synflow_float32_overflow_is_reported_and_float64_is_not():
    # 20 layers of width 32 with weights in [4, 6]: R ~ (32 * 5)^20 ~ 1e44 > float32 max.
    keras.utils.set_random_seed(8)
    layers = [keras.Input((32,))]
    layers += [
        keras.layers.Dense(32, kernel_initializer=keras.initializers.RandomUniform(4.0, 6.0))
        for _ in range(20)
    ]
    model = keras.Sequential(layers)
    with pytest.raises(ValueError, match="overflowed in float32.*float64"):
        kprune.masks_at_init(model, method="synflow", sparsity=0.5, iterations=2, dtype="float32")
    masks = kprune.masks_at_init(model, method="synflow", sparsity=0.5, iterations=2)
    assert sum(int(m.size - m.sum()) for m in masks.values()) == round(0.5 * 20 * 32 * 32)
    # Equal-sized layers carry equal total flow, so a working float64 ranking empties none.
    assert all(m.sum() > 0 for m in masks.values())


def test_synflow_scores_in_evaluation_mode_with_absolute_parameters():
    # With BatchNorm in inference mode and all parameters made non-negative, SynFlow on a
    # Dense -> BN -> Dense net equals the closed form with BN folded in as a diagonal scale.
    keras.utils.set_random_seed(9)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, use_bias=False, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, use_bias=False, name="d2"),
        ]
    )
    bn = model.get_layer("bn")
    bn.gamma.assign(-np.linspace(0.5, 1.5, 5))  # negative: SynFlow must use |gamma|
    bn.beta.assign(-np.linspace(0.1, 0.5, 5))
    bn.moving_variance.assign(np.linspace(1.0, 4.0, 5))
    w1, w2 = (np.abs(model.get_layer(n).kernel.numpy().astype(np.float64)) for n in ("d1", "d2"))
    scale = np.abs(bn.gamma.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    beta = np.abs(bn.beta.numpy())
    ones = np.ones(4)
    # R = sum(((1 @ |W1|) * scale + |beta|) @ |W2|)
    s1 = w1 * np.outer(ones, scale * (w2 @ np.ones(2)))
    s2 = w2 * np.outer((ones @ w1) * scale + beta, np.ones(2))
    expected = numpy_keep([s1, s2], 0.5)
    masks = kprune.masks_at_init(model, method="synflow", sparsity=0.5, iterations=1)
    for got, exp in zip(masks.values(), expected):
        np.testing.assert_array_equal(got, exp)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, "0.5", True, None])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        kprune.prune_at_init(mlp(), (X, Y), method="snip", sparsity=sparsity)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as info:
        kprune.prune_at_init(mlp(), (X, Y), method="snap", sparsity=0.5)
    for name in ("snip", "grasp", "synflow", "random", "magnitude", "snap"):
        assert name in str(info.value)


def test_bad_options_scope_and_batches():
    model = mlp()
    with pytest.raises(TypeError, match="temperature"):
        kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, temperature=2.0)
    with pytest.raises(ValueError, match="scope"):
        kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, scope="uniform")
    with pytest.raises(ValueError, match="batches"):
        kprune.masks_at_init(model, (X, Y), method="snip", sparsity=0.5, batches=0)
    with pytest.raises(ValueError, match="iterations"):
        kprune.masks_at_init(model, method="synflow", sparsity=0.5, iterations=0)
    with pytest.raises(ValueError, match="temperature"):
        kprune.masks_at_init(model, (X, Y), method="grasp", sparsity=0.5, temperature=0)


def test_empty_or_short_data():
    model = mlp()
    with pytest.raises(ValueError, match="empty"):
        kprune.masks_at_init(model, (X[:0], Y[:0]), method="snip", sparsity=0.5)
    empty = tf.data.Dataset.from_tensor_slices((X, Y)).take(0).batch(4)
    with pytest.raises(ValueError, match="empty"):
        kprune.masks_at_init(model, empty, method="grasp", sparsity=0.5)
    short = tf.data.Dataset.from_tensor_slices((X, Y)).batch(12)
    with pytest.raises(ValueError, match="only 2 batch"):
        kprune.masks_at_init(model, short, method="snip", sparsity=0.5, batches=3)
    with pytest.raises(ValueError, match="batch the dataset"):
        kprune.masks_at_init(
            model, tf.data.Dataset.from_tensor_slices((X, Y)), method="snip", sparsity=0.5
        )


def test_labels_missing_for_data_dependent_methods():
    model = mlp()
    for method in ("snip", "grasp"):
        with pytest.raises(ValueError, match="needs data"):
            kprune.masks_at_init(model, method=method, sparsity=0.5)
        with pytest.raises(ValueError, match="labelled"):
            kprune.masks_at_init(model, (X, None), method=method, sparsity=0.5)
        unlabelled = tf.data.Dataset.from_tensor_slices(X).batch(8)
        with pytest.raises(ValueError, match="labelled"):
            kprune.masks_at_init(model, unlabelled, method=method, sparsity=0.5)
        with pytest.raises(ValueError, match="labelled"):
            kprune.masks_at_init(model, X, method=method, sparsity=0.5)
    # Data-free methods need none.
    for method in ("synflow", "random", "magnitude"):
        kprune.masks_at_init(model, method=method, sparsity=0.5, **dict(ALL)[method])


def test_models_without_prunable_weights_or_not_supported():
    only_bn = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="no prunable layer"):
        kprune.prune_at_init(only_bn, method="random", sparsity=0.5)
    with pytest.raises(TypeError, match="keras.Model"):
        kprune.prune_at_init("model", method="random", sparsity=0.5)
    pruned = kprune.prune(mlp(), None)
    with pytest.raises(ValueError, match="already contains PruningWrapper"):
        kprune.prune_at_init(pruned, method="random", sparsity=0.5)


def test_unknown_synflow_input_shape_needs_option():
    inputs = keras.Input((None, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="input_shape"):
        kprune.masks_at_init(model, method="synflow", sparsity=0.5, iterations=1)
    masks = kprune.masks_at_init(
        model, method="synflow", sparsity=0.5, iterations=1, input_shape=(4, 3)
    )
    assert [int(m.sum()) for m in masks.values()] == [3]


def test_scores_module_is_what_selection_uses():
    # magnitude at init is exactly compute_masks(|w|): a guard against the two drifting apart.
    model = mlp(seed=11)
    ws = [model.get_layer(n).kernel for n in ("h0", "out")]
    expected = numpy_keep([s.numpy() for s in scores.magnitude(ws)], 0.5)
    got = kprune.masks_at_init(model, method="magnitude", sparsity=0.5)
    for g, e in zip(got.values(), expected):
        np.testing.assert_array_equal(g, e)
