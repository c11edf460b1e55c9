"""What a dataset is: `DatasetInfo` (known without loading), `Dataset` (with its pipelines).

Example:

>>> DatasetInfo("toy", (2,), 2, 4, 4).input_shape
(2,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from kprune._internal.validate import check_integer

__all__ = ["DatasetInfo", "Dataset", "DatasetNotAvailableError"]


class DatasetNotAvailableError(ValueError):
    """A tensorflow-datasets dataset is not prepared in `data_dir` (and may not be downloaded).

    Example:

    >>> issubclass(DatasetNotAvailableError, ValueError)
    True
    """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, known without loading it.

    Attributes:
        name: the dataset name as given (e.g. "cifar10", "npz:/data/x.npz").
        input_shape: shape of one example, e.g. `(32, 32, 3)`.
        num_classes: number of classes (labels are `0 .. num_classes - 1`).
        train_size: number of training examples.
        test_size: number of test examples.

    Example:

    >>> from kprune.data import dataset_info
    >>> dataset_info("cifar10").input_shape
    (32, 32, 3)
    """

    name: str
    input_shape: tuple
    num_classes: int
    train_size: int
    test_size: int


@dataclasses.dataclass(frozen=True)
class Dataset(DatasetInfo):
    """A loaded dataset: `DatasetInfo` plus batched, prefetched `train` and `test` pipelines.

    `train` yields `(images, labels)` batches in a new shuffled (and, for CIFAR, augmented)
    order every epoch; the last batch may be smaller. Labels are int32.

    Example:

    >>> from kprune.data import load_dataset
    >>> data = load_dataset("digits", batch_size=64)
    >>> data.steps_per_epoch
    23
    """

    train: tf.data.Dataset = None
    test: tf.data.Dataset = None
    batch_size: int = 0
    # `epoch_stream(first_epoch)` -> the endless training stream (see `train_epochs`); None for
    # datasets assembled by hand, whose `train` is all there is.
    epoch_stream: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def steps_per_epoch(self):
        """Number of training batches per epoch (the last one may be partial)."""
        return -(-self.train_size // self.batch_size)

    @property
    def replayable(self):
        """Whether `train_epochs` is available (datasets made by `load_dataset`)."""
        return self.epoch_stream is not None

    def train_epochs(self, first_epoch=0):
        """The training batches of epoch `first_epoch`, then the next epochs, without end.

        Epoch `e` is shuffled (and augmented) from `(seed, e)` alone, with stateless seeds, so
        the stream started at any epoch replays exactly the batches an uninterrupted stream
        gives from that epoch on: a run resumed at epoch `e` trains on the same data as one that
        was never stopped. Each epoch has `steps_per_epoch` batches (the last may be partial);
        train with `model.fit(..., steps_per_epoch=steps_per_epoch, initial_epoch=e)`.

        Raises:
            ValueError: the dataset was assembled by hand (`replayable` is False), or
                `first_epoch` is not an integer >= 0.

        Example:

        >>> from kprune.data import load_dataset
        >>> data = load_dataset("digits", batch_size=512)
        >>> [int(y[0]) for _, y in data.train_epochs(1).take(3)] == [
        ...     int(y[0]) for _, y in data.train_epochs(0).skip(3).take(3)]
        True
        """
        if self.epoch_stream is None:
            raise ValueError(
                f"Dataset {self.name!r} was assembled by hand and has no replayable epoch "
                "stream; use its `train` pipeline, or `load_dataset` for one that has."
            )
        return self.epoch_stream(check_integer("first_epoch", first_epoch, 0))
