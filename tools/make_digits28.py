"""Writes the bundled 8x8 digits in MNIST's 28x28 layout, for `--dataset=npz:PATH`.

LeNet-5-Caffe needs images of at least 16x16 (two 5x5 valid convolutions and two 2x2
poolings), so it cannot run on the bundled 8x8 digits. Where MNIST cannot be downloaded, this
script gives the closest offline stand-in: every bundled digit (kprune/data/digits.npz, the
same 1,438 / 359 split) is scaled from 8x8 to 20x20 pixels (bilinear) and centred in a 28x28
frame with a 4-pixel black border, the way MNIST centres its digits in a 20x20 box. Pixel
values 0..16 become 0..255 (uint8), which kprune scales to [0, 1]. The networks then have
MNIST's parameter counts (LeNet-300-100: 266,610; LeNet-5-Caffe: 431,080).

This is *not* MNIST: 1,797 low-resolution scans of 43 writers instead of 70,000 images.
Accuracy on it says nothing about accuracy on MNIST.

Usage (from the repository root):

    python tools/make_digits28.py                       # writes saved_models/data/digits28.npz
    python tools/make_digits28.py --out /tmp/digits28.npz   # or --out=/tmp/digits28.npz
    python -m kprune.train --flagfile=configs/lenet5.flags \\
        --dataset=npz:saved_models/data/digits28.npz --lr=0.01
"""

from __future__ import annotations

import io
import pathlib
import sys

import numpy as np
import tensorflow as tf
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/make_digits28.py` puts tools/ on sys.path
    sys.path.insert(0, str(ROOT))

from kprune._internal.files import write_bytes_atomic  # noqa: E402
from kprune.data import digits_path  # noqa: E402
from tools import cli  # noqa: E402

SIZE, BOX = 28, 20

FLAGS = flags.FlagValues()  # the script's own flags (see tools/cli.py)
flags.DEFINE_string(
    "out",
    str(ROOT / "saved_models" / "data" / "digits28.npz"),
    "Output .npz file (default saved_models/data/digits28.npz).",
    flag_values=FLAGS,
)


def to_mnist_layout(images):
    """(N, 8, 8, 1) digits with values 0..16 -> (N, 28, 28, 1) uint8 with the digit in a 20x20 box.

    Example:

    >>> out = to_mnist_layout(np.full((1, 8, 8, 1), 16, np.uint8))
    >>> out.shape, int(out[0, 14, 14, 0]), int(out[0, 0, 0, 0]), int((out > 0).sum())
    ((1, 28, 28, 1), 255, 0, 400)
    """
    scaled = tf.image.resize(images.astype("float32") * (255.0 / 16.0), (BOX, BOX), "bilinear")
    scaled = np.clip(np.rint(scaled.numpy()), 0, 255).astype(np.uint8)
    out = np.zeros((len(images), SIZE, SIZE, images.shape[-1]), np.uint8)
    start = (SIZE - BOX) // 2
    out[:, start : start + BOX, start : start + BOX] = scaled
    return out


def main(argv):
    cli.no_arguments(cli.parse(FLAGS, argv, __doc__))
    with np.load(digits_path()) as digits:
        arrays = {
            "x_train": to_mnist_layout(digits["x_train"]),
            "y_train": digits["y_train"],
            "x_test": to_mnist_layout(digits["x_test"]),
            "y_test": digits["y_test"],
        }
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(out, buffer.getvalue())
    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    print(f"wrote {out}: {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
