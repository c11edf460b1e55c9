"""Datasets: bundled digits, npz files, tfds pipelines (through tfds.testing.mock_data)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.resources  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from kprune import data  # noqa: E402
from kprune.data import pipelines  # noqa: E402


def batches(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


# -- digits -----------------------------------------------------------------------------------
def test_digits_load_offline_with_fixed_split():
    d = data.load_dataset("digits", batch_size=100)
    assert (d.input_shape, d.num_classes, d.train_size, d.test_size) == ((8, 8, 1), 10, 1438, 359)
    assert d.steps_per_epoch == 15
    x_train, y_train = batches(d.train)
    x_test, y_test = batches(d.test)
    assert x_train.shape == (1438, 8, 8, 1) and x_test.shape == (359, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0  # pixel values 0..16 scaled by 1/16
    np.testing.assert_array_equal(np.unique(x_train * 16), np.arange(17))
    # Stratified: every class holds ~20% of its images in the test split.
    counts_train, counts_test = np.bincount(y_train), np.bincount(y_test)
    assert counts_test.sum() == 359 and np.all(
        np.abs(counts_test / (counts_train + counts_test) - 0.2) < 0.01
    )


def test_digits_file_matches_its_generator_and_ships_with_licence():
    raw = np.load(data.digits_path())
    assert {k: raw[k].dtype for k in raw.files} == {
        "x_train": np.uint8,
        "y_train": np.uint8,
        "x_test": np.uint8,
        "y_test": np.uint8,
    }
    # The test split is exactly the test images, in file order (no shuffling of test data).
    _, y_test = batches(data.load_dataset("digits", batch_size=64).test)
    np.testing.assert_array_equal(y_test, raw["y_test"])
    licence = importlib.resources.files("kprune.data") / "digits_LICENSE.txt"
    text = licence.read_text()
    assert "CC BY 4.0" in text and "Alpaydin" in text and "10.24432/C50P49" in text


def test_training_order_is_seeded_and_reshuffled_every_epoch():
    a = data.load_dataset("digits", batch_size=1438, seed=1)
    b = data.load_dataset("digits", batch_size=1438, seed=1)
    c = data.load_dataset("digits", batch_size=1438, seed=2)
    first_a, second_a = [y.numpy() for _, y in a.train], [y.numpy() for _, y in a.train]
    first_b = [y.numpy() for _, y in b.train]
    first_c = [y.numpy() for _, y in c.train]
    np.testing.assert_array_equal(first_a[0], first_b[0])
    assert not np.array_equal(first_a[0], second_a[0])
    assert not np.array_equal(first_a[0], first_c[0])
    np.testing.assert_array_equal(np.sort(first_a[0]), np.sort(second_a[0]))


def test_dataset_info_needs_no_data():
    assert data.dataset_info("cifar100") == data.DatasetInfo(
        "cifar100", (32, 32, 3), 100, 50000, 10000
    )
    assert data.dataset_info("digits").train_size == 1438


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        data.load_dataset("imagenet", 32)
    for name in data.DATASET_NAMES:
        assert name in str(err.value)
    assert "npz:PATH" in str(err.value)
    with pytest.raises(ValueError, match="batch_size"):
        data.load_dataset("digits", 0)


# -- npz --------------------------------------------------------------------------------------
def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def good_arrays(n_train=10, n_test=4, shape=(6, 6), dtype=np.uint8):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape)).astype(dtype),
        "y_train": np.arange(n_train) % 3,
        "x_test": rng.integers(0, 256, (n_test, *shape)).astype(dtype),
        "y_test": np.arange(n_test) % 3,
    }


def test_npz_arrays_load_scaled_and_in_order(tmp_path):
    arrays = good_arrays()
    name = write_npz(tmp_path / "a.npz", **arrays)
    info = data.dataset_info(name)
    assert (info.input_shape, info.num_classes, info.train_size, info.test_size) == (
        (6, 6, 1),
        3,
        10,
        4,
    )
    d = data.load_dataset(name, batch_size=3)
    x_test, y_test = batches(d.test)
    np.testing.assert_allclose(x_test[..., 0], arrays["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    x_train, y_train = batches(d.train)  # shuffled, but the same examples
    pixels = np.rint(x_train[..., 0] * 255.0).astype(np.uint8)
    assert sorted(p.tobytes() for p in pixels) == sorted(p.tobytes() for p in arrays["x_train"])
    assert sorted(y_train.tolist()) == sorted(arrays["y_train"].tolist())


def test_npz_float_features_are_used_as_given(tmp_path):
    arrays = good_arrays(shape=(5,), dtype=np.float32)
    arrays["x_test"] = arrays["x_test"] * 0.001 - 3.0
    d = data.load_dataset(write_npz(tmp_path / "f.npz", **arrays), batch_size=4)
    assert d.input_shape == (5,)
    np.testing.assert_array_equal(batches(d.test)[0], arrays["x_test"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("y_test"), r"lacks the arrays \['y_test'\]"),
        (
            lambda a: a.update(y_train=a["y_train"][:-1]),
            "x_train has 10 examples but y_train has 9",
        ),
        (lambda a: a.update(x_test=a["x_test"][:, :5]), "x_train examples have shape"),
        (lambda a: a.update(y_test=a["y_test"] + 0.5), "integer labels"),
        (lambda a: a.update(y_train=a["y_train"] - 1), "labels must be integers 0"),
        (lambda a: a.update(y_train=a["y_train"].reshape(2, 5)), "vector of integer labels"),
    ],
)
def test_npz_problems_are_named(tmp_path, change, message):
    arrays = good_arrays()
    change(arrays)
    name = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        data.dataset_info(name)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(name, 4)


def test_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        data.dataset_info(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.dataset_info(f"npz:{tmp_path / 'junk.npz'}")


# -- tfds (mock data: the real loader code runs on synthetic examples) --------------------------
def test_cifar_pipeline_normalizes_test_and_augments_train(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        raw = tfds.load("cifar10", split="test", as_supervised=True, data_dir=str(tmp_path))
        raw_x, raw_y = zip(*[(x.numpy(), y.numpy()) for x, y in raw])
        d = data.load_dataset("cifar10", batch_size=5, data_dir=str(tmp_path), seed=3)
        x_test, y_test = batches(d.test)
        x_train, y_train = batches(d.train)
    assert (d.train_size, d.test_size, d.num_classes, d.input_shape) == (12, 12, 10, (32, 32, 3))
    mean = np.array([0.4914, 0.4822, 0.4465], "float32")
    std = np.array([0.2470, 0.2435, 0.2616], "float32")
    expected = (np.stack(raw_x).astype("float32") / 255.0 - mean) / std
    np.testing.assert_allclose(x_test, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y_test, np.array(raw_y))
    assert x_train.shape == (12, 32, 32, 3) and y_train.dtype == np.int32
    assert len(list(d.train)) == 3  # ceil(12 / 5) batches, the last one partial


def test_mnist_pipeline_has_no_augmentation(tmp_path):
    with tfds.testing.mock_data(num_examples=7):
        d = data.load_dataset("mnist", batch_size=4, data_dir=str(tmp_path))
        raw = tfds.load("mnist", split="train", as_supervised=True, data_dir=str(tmp_path))
        expected = sorted(x.numpy().tobytes() for x, _ in raw)
        x_train, _ = batches(d.train)
    assert d.input_shape == (28, 28, 1) and x_train.shape == (7, 28, 28, 1)
    # Undoing the normalization gives back exactly the stored pixels: nothing was cropped.
    pixels = np.rint((x_train * 0.3081 + 0.1307) * 255.0).astype(np.uint8)
    assert sorted(p.tobytes() for p in pixels) == expected


def test_crop_and_flip_keep_a_window_of_the_padded_image():
    image = np.arange(6 * 6 * 1, dtype=np.uint8).reshape(6, 6, 1) + 1  # no zeros inside
    ds = tf.data.Dataset.from_tensors((image, np.int64(0))).repeat(40)
    outputs = [x.numpy() for x, _ in pipelines.augment_crop_flip(ds, seed=0, pad=2)]
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    crops = {padded[i : i + 6, j : j + 6].tobytes() for i in range(5) for j in range(5)}
    flips = {padded[i : i + 6, j : j + 6][:, ::-1].tobytes() for i in range(5) for j in range(5)}
    assert all(out.shape == (6, 6, 1) and out.tobytes() in crops | flips for out in outputs)
    assert len({out.tobytes() for out in outputs}) > 5  # different crops and flips
    flipped = sum(out.tobytes() not in crops for out in outputs)
    assert 0 < flipped < 40


def test_unprepared_tfds_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError) as err:
        data.load_dataset("fashion_mnist", 8, data_dir=str(tmp_path))
    message = str(err.value)
    assert f"data_dir={tmp_path}" in message and "--data_dir" in message
    assert "download_and_prepare()" in message and "--dataset=digits" in message
    assert "Traceback" not in message


# -- the replayable epoch stream ----------------------------------------------------------------
def stream_batches(ds, count):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]


def test_epoch_stream_replays_any_epoch_exactly():
    d = data.load_dataset("digits", batch_size=500, seed=3)  # 500 + 500 + 438 per epoch
    assert d.replayable and d.steps_per_epoch == 3
    three_epochs = stream_batches(d.train_epochs(0), 9)
    assert [len(y) for _, y in three_epochs] == [500, 500, 438] * 3
    for first in (1, 2):
        replay = stream_batches(d.train_epochs(first), 3)
        for (x, y), (x0, y0) in zip(replay, three_epochs[3 * first : 3 * first + 3]):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)
    # Every epoch is a permutation of the training split, in a new order each epoch.
    x_all, y_all = batches(d.train)
    labels = [np.concatenate([y for _, y in three_epochs[3 * e : 3 * e + 3]]) for e in range(3)]
    for e in range(3):
        np.testing.assert_array_equal(np.sort(labels[e]), np.sort(y_all))
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])
    images = np.concatenate([x for x, _ in three_epochs[:3]])
    assert sorted(i.tobytes() for i in images) == sorted(i.tobytes() for i in x_all)


def test_epoch_stream_depends_on_the_seed_only():
    tf.random.set_seed(123)  # TensorFlow's global seed plays no part
    first = stream_batches(data.load_dataset("digits", batch_size=700, seed=3).train_epochs(1), 1)
    tf.random.set_seed(0)
    again = stream_batches(data.load_dataset("digits", batch_size=700, seed=3).train_epochs(1), 1)
    other = stream_batches(data.load_dataset("digits", batch_size=700, seed=4).train_epochs(1), 1)
    np.testing.assert_array_equal(first[0][1], again[0][1])
    assert not np.array_equal(first[0][1], other[0][1])


def test_epoch_stream_replays_augmentation():
    d = data.load_dataset("digits", batch_size=1438, seed=1, augment=True)
    (x0, y0), (x1, y1) = stream_batches(d.train_epochs(0), 2)
    ((x1_again, y1_again),) = stream_batches(d.train_epochs(1), 1)
    np.testing.assert_array_equal(x1_again, x1)
    np.testing.assert_array_equal(y1_again, y1)
    # Crops and flips differ between epochs: the same image is not augmented the same way.
    by_label_0 = {label: x0[y0 == label].sum() for label in range(10)}
    by_label_1 = {label: x1[y1 == label].sum() for label in range(10)}
    assert by_label_0 != by_label_1


def test_hand_made_datasets_have_no_epoch_stream():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2), "float32"), np.zeros(4, "int32")))
    d = data.Dataset("toy", (2,), 2, 4, 4, train=ds.batch(2), test=ds.batch(2), batch_size=2)
    assert not d.replayable
    with pytest.raises(ValueError, match="assembled by hand"):
        d.train_epochs(0)
    with pytest.raises(ValueError, match="first_epoch"):
        data.load_dataset("digits", batch_size=64).train_epochs(-1)
