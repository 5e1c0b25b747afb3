"""Data sets and loaders: torchvision MNIST, CIFAR-10 and SVHN with the authors' transforms, and a
small synthetic stand-in of the same shape for runs without files.

Images come out as ``[B, C, H, W]``; the engine's Poisson encoder turns them into ``[T, B, ...]``.
torchvision is imported only when real data is used, which keeps ``--synthetic`` runs quick.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset, TensorDataset

from .experiment import Experiment, UsageError

__all__ = ["DATASETS", "DatasetInfo", "build_datasets", "make_loader", "synthetic_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a data set before loading it.

    Attributes:
        input_shape: ``(C, H, W)`` of one image.
        num_classes: number of labels.
        files: the files torchvision needs, relative to ``--data``, for the missing-data message.
        source: where to get them, as a phrase for the missing-data message.
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    files: tuple[str, ...]
    source: str


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        (1, 28, 28), 10,
        tuple(f"MNIST/raw/{name}-idx{dims}-ubyte"
              for name, dims in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3),
                                 ("t10k-labels", 1))),
        "from https://ossci-datasets.s3.amazonaws.com/mnist/, gunzipped"),
    "cifar10": DatasetInfo(
        (3, 32, 32), 10, ("cifar-10-python.tar.gz",),
        "from https://www.cs.toronto.edu/~kriz/cifar.html; or its extracted cifar-10-batches-py/"),
    "svhn": DatasetInfo(
        (3, 32, 32), 10,
        ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat (with --svhn-extra)"),
        "from http://ufldl.stanford.edu/housenumbers/"),
}


def synthetic_dataset(info: DatasetInfo, size: int, seed: int, train: bool,
                      normalised: bool) -> TensorDataset:
    """A deterministic, learnable stand-in for a data set: ``size`` images of ``info``'s shape.

    Every class has a fixed random pattern of 4x4-pixel blocks (drawn from ``seed``, shared by
    train and test; blocks survive the 2x2 pooling neurons); an image is its class's pattern
    with 5 % of its pixels flipped and Gaussian noise added. Pixel values lie in [0, 1] like
    ``ToTensor`` output, or in [-1, 1] when the real data set is normalised. Train and test
    draw different noise.

    Returns:
        ``TensorDataset`` of images ``[size, C, H, W]`` (float32) and labels ``[size]`` (int64).
    """
    channels, height, width = info.input_shape
    pattern_rng = torch.Generator().manual_seed(seed)
    coarse = torch.rand((info.num_classes, channels, -(-height // 4), -(-width // 4)),
                        generator=pattern_rng) < 0.6
    patterns = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[..., :height, :width]
    rng = torch.Generator().manual_seed(seed + (1 if train else 2))
    labels = torch.randperm(size, generator=rng) % info.num_classes
    flips = torch.rand((size, *info.input_shape), generator=rng) < 0.05
    images = (patterns[labels] ^ flips).float()
    images += 0.1 * torch.randn(images.shape, generator=rng)
    images.clamp_(0.0, 1.0)
    if normalised:
        images = images * 2 - 1
    return TensorDataset(images, labels)


def _transforms(settings: Experiment, train: bool):
    from torchvision import transforms as T

    steps = []
    if train and settings.crop_padding > 0:
        steps.append(T.RandomCrop(DATASETS[settings.dataset].input_shape[1:],
                                  padding=settings.crop_padding))
    if train and settings.horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    steps.append(T.ToTensor())
    if settings.mean is not None:
        steps.append(T.Normalize(settings.mean, settings.std))
    return T.Compose(steps)


def _torchvision_split(settings: Experiment, split: str, download: bool) -> Dataset:
    from torchvision import datasets

    root, train = settings.data_dir, split != "test"
    transform = _transforms(settings, train)
    if settings.dataset == "mnist":
        return datasets.MNIST(root, train=train, transform=transform, download=download)
    if settings.dataset == "cifar10":
        return datasets.CIFAR10(root, train=train, transform=transform, download=download)
    return datasets.SVHN(root, split=split, transform=transform, download=download)


def _load_split(settings: Experiment, split: str) -> Dataset:
    """One torchvision split; a clear :class:`UsageError` if it is missing and cannot be fetched."""
    try:
        return _torchvision_split(settings, split, download=False)
    except RuntimeError as missing:  # torchvision's "Dataset not found", or a corrupt file
        text = str(missing).strip()
        reason = ("files missing" if not text or text.startswith("Dataset not found")
                  else text.splitlines()[0])
    if settings.download:
        try:
            return _torchvision_split(settings, split, download=True)
        except Exception as failure:  # offline, read-only directory, interrupted transfer ...
            reason = f"download failed: {str(failure).splitlines()[0] or type(failure).__name__}"
    info = DATASETS[settings.dataset]
    where = os.path.abspath(settings.data_dir)
    raise UsageError(f"{settings.dataset} data not found in {where} ({reason}); place "
                     f"{', '.join(info.files)} under {where}/ ({info.source}), "
                     f"or run with --synthetic")


def build_datasets(settings: Experiment, train: bool = True) -> tuple[Dataset | None, Dataset]:
    """The training set (``None`` unless ``train``) and the test set of ``settings.dataset``.

    SVHN trains on its ``train`` split, plus ``extra`` when ``settings.svhn_extra``. With
    ``settings.train_subset`` the training set is cut to that many images, chosen from the seed.
    """
    info = DATASETS[settings.dataset]
    if settings.synthetic:
        normalised = settings.mean is not None
        test_size = max(settings.synthetic_size // 4, info.num_classes)
        test = synthetic_dataset(info, test_size, settings.seed, False, normalised)
        train_set = (synthetic_dataset(info, settings.synthetic_size, settings.seed, True,
                                       normalised) if train else None)
    else:
        test = _load_split(settings, "test")
        train_set = _load_split(settings, "train") if train else None
        if train_set is not None and settings.dataset == "svhn" and settings.svhn_extra:
            train_set = ConcatDataset([train_set, _load_split(settings, "extra")])
    if train_set is not None and 0 < settings.train_subset < len(train_set):
        draw = torch.Generator().manual_seed(settings.seed)
        order = torch.randperm(len(train_set), generator=draw)
        train_set = Subset(train_set, order[:settings.train_subset].tolist())
    return train_set, test


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                generator: torch.Generator, shuffle: bool,
                sampler: Sampler[int] | None = None) -> DataLoader:
    """A DataLoader whose order (unless ``sampler`` decides it), augmentation and worker seeds
    all come from ``generator``.

    Seeding that generator at the start of each epoch fixes the epoch's data independently of
    every other random draw, so a run resumed at an epoch boundary sees the same data as an
    uninterrupted one. In-memory tensor data sets use no worker processes.
    """
    if isinstance(dataset.dataset if isinstance(dataset, Subset) else dataset, TensorDataset):
        workers = 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      generator=generator, num_workers=workers, pin_memory=device.type == "cuda")
