"""The data sets the scripts train on, one registered entry each: what the engine needs to know
before loading (image shape, classes, normalisation statistics, what the synthetic stand-in
imitates) and how torchvision loads it. A script registers another data set in :data:`DATASETS`
before it calls ``main`` (docs/extending.md, *A new data set*).

torchvision is imported only inside the loaders, which keeps ``--synthetic`` runs quick.
"""
from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

__all__ = ["DATASETS", "DatasetInfo", "Loader", "mnist_layout"]

# (root, train, download) -> the split's (image, label) pairs, images PIL images, [H, W, C]
# arrays or [C, H, W] tensors (uint8, or float in [0, 1]);
# raises RuntimeError if the files are missing or damaged (as torchvision's data sets do)
Loader = Callable[[str, bool, bool], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """One data set.

    Attributes:
        input_shape: ``(C, H, W)`` of an image.
        num_classes: the classes, labelled 0 .. num_classes - 1.
        files: what must lie under ``--data`` (for the missing-data message), ``source``: where
            to get it.
        pixel_mean, pixel_std: the real training images' per-channel statistics in [0, 1].
        synthetic_style: the kind of image the synthetic stand-in draws
            (:func:`~training.synthetic.synthetic_dataset`): ``"strokes"`` (pen strokes on
            black), ``"silhouettes"`` (grey objects on black) or ``"scenes"`` (dense colour).
        density: the fraction of the real images' pixels that are not 0, which the stand-in
            reproduces (so the networks see as many input spikes).
        load: the training (``train``) or test split, untransformed (:data:`Loader`).
        extra: more training images, added by ``--extra-images`` (``(root, download)``; None:
            the data set has none, and its script no such flag).
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    files: tuple[str, ...]
    source: str
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    synthetic_style: str
    density: float
    load: Loader
    extra: Callable[[str, bool], Dataset] | None = None


def _gunzip_raw(folder: str) -> None:
    """Unpack every ``*.gz`` in ``folder`` whose unpacked file is missing: torchvision reads the
    unpacked idx files, and would otherwise download the archives again to check them."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        packed, unpacked = os.path.join(folder, name), os.path.join(folder, name[:-3])
        if not name.endswith(".gz") or os.path.exists(unpacked):
            continue
        try:
            with gzip.open(packed) as source, open(unpacked + ".part", "wb") as target:
                shutil.copyfileobj(source, target)
        except (OSError, EOFError) as damaged:  # not gzip, truncated, unwritable folder
            raise RuntimeError(f"cannot unpack {packed}: {damaged}") from None
        os.replace(unpacked + ".part", unpacked)


def mnist_layout(class_name: str) -> Loader:
    """The loader of a torchvision data set in MNIST's raw layout (``<root>/<class_name>/raw/``,
    four idx ubyte files, gzipped or not): ``MNIST``, ``FashionMNIST``, ``KMNIST``."""
    def load(root: str, train: bool, download: bool) -> Dataset:
        from torchvision import datasets

        _gunzip_raw(os.path.join(root, class_name, "raw"))
        return getattr(datasets, class_name)(root, train=train, download=download)

    return load


def _idx_files(folder: str) -> tuple[str, ...]:
    return tuple(f"{folder}/raw/{name}-idx{dims}-ubyte"
                 for name, dims in (("train-images", 3), ("train-labels", 1),
                                    ("t10k-images", 3), ("t10k-labels", 1)))


def _cifar10(root: str, train: bool, download: bool) -> Dataset:
    from torchvision import datasets

    return datasets.CIFAR10(root, train=train, download=download)


def _svhn(root: str, train: bool, download: bool) -> Dataset:
    from torchvision import datasets

    return datasets.SVHN(root, split="train" if train else "test", download=download)


def _svhn_extra(root: str, download: bool) -> Dataset:
    from torchvision import datasets

    return datasets.SVHN(root, split="extra", download=download)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        (1, 28, 28), 10, _idx_files("MNIST"),
        "from https://ossci-datasets.s3.amazonaws.com/mnist/, gzipped or not",
        (0.1307,), (0.3081,), "strokes", 0.19, mnist_layout("MNIST")),
    "fashion_mnist": DatasetInfo(
        (1, 28, 28), 10, _idx_files("FashionMNIST"),
        "from https://github.com/zalandoresearch/fashion-mnist, gzipped or not",
        (0.2860,), (0.3530,), "silhouettes", 0.5, mnist_layout("FashionMNIST")),
    "cifar10": DatasetInfo(
        (3, 32, 32), 10, ("cifar-10-python.tar.gz",),
        "from https://www.cs.toronto.edu/~kriz/cifar.html; or its extracted cifar-10-batches-py/",
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "scenes", 1.0, _cifar10),
    "svhn": DatasetInfo(
        (3, 32, 32), 10,
        ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat (with --extra-images)"),
        "from http://ufldl.stanford.edu/housenumbers/",
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "scenes", 1.0, _svhn, _svhn_extra),
}
