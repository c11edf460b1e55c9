"""Writes kprune/data/digits.npz, the small offline dataset behind `--dataset=digits`.

The source is the UCI "Optical Recognition of Handwritten Digits" data as bundled with
scikit-learn (`sklearn.datasets.load_digits`: the 1,797 images of the UCI test set, 8x8 pixels
with values 0..16, ten classes). scikit-learn is needed only to run this script, never by kprune.

The split is fixed and stratified: for every class, a seeded permutation puts 20% of its images
(rounded to the nearest integer) in the test set and the rest in the training set. Images are
stored as uint8 arrays of shape (N, 8, 8, 1), labels as uint8.

Usage (from the repository root):

    python tools/make_digits.py            # rewrites kprune/data/digits.npz
    python tools/make_digits.py --check    # verifies the shipped file matches, byte for byte
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import sys

import numpy as np
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/make_digits.py` puts tools/ on sys.path
    sys.path.insert(0, str(ROOT))

from kprune._internal.files import write_bytes_atomic  # noqa: E402
from tools import cli  # noqa: E402

OUT = ROOT / "kprune" / "data" / "digits.npz"
SEED = 20240601
TEST_FRACTION = 0.2

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_bool(
    "check", False, "Compare with the shipped file; write nothing.", flag_values=FLAGS
)


def build_arrays():
    from sklearn.datasets import load_digits  # development-time only

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1), values 0..16
    labels = bunch.target.astype(np.uint8)
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(TEST_FRACTION * len(members)))
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    # Interleave classes in a seeded order, so that the file is not sorted by class.
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return {
        "x_train": images[train_idx],
        "y_train": labels[train_idx],
        "x_test": images[test_idx],
        "y_test": labels[test_idx],
    }


def serialize(arrays):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    arrays = build_arrays()
    summary = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items())
    if FLAGS.check:
        shipped = np.load(OUT)
        same = all(np.array_equal(shipped[k], v) for k, v in arrays.items())
        print(f"{OUT}: {'matches' if same else 'DIFFERS from'} the regenerated arrays ({summary})")
        return 0 if same else 1
    data = serialize(arrays)
    write_bytes_atomic(OUT, data)
    digest = hashlib.sha256(data).hexdigest()[:16]
    print(f"wrote {OUT} ({len(data)} bytes, sha256 {digest}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
