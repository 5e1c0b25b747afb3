"""Data sets and loaders: torchvision MNIST, CIFAR-10 and SVHN with the authors' transforms, or
the synthetic stand-in (:mod:`training.synthetic`) for runs without files.

Images come out as ``[B, C, H, W]``; the engine's Poisson encoder turns them into ``[T, B, ...]``.
torchvision is imported only when real data is used, which keeps ``--synthetic`` runs quick.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset, TensorDataset

from .experiment import Experiment, UsageError
from .synthetic import synthetic_dataset
from .versions import import_torchvision


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a data set before loading it: the ``(C, H, W)`` of an
    image, the classes, the files torchvision needs under ``--data`` and where to get them (for
    the missing-data message), the real training images' per-channel mean and standard
    deviation in [0, 1] and the kind of image (``"strokes"`` or ``"scenes"``) that the synthetic
    stand-in imitates (:func:`~training.synthetic.synthetic_dataset`)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    files: tuple[str, ...]
    source: str
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    synthetic_style: str


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        (1, 28, 28), 10,
        tuple(f"MNIST/raw/{name}-idx{dims}-ubyte"
              for name, dims in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3),
                                 ("t10k-labels", 1))),
        "from https://ossci-datasets.s3.amazonaws.com/mnist/, gunzipped",
        (0.1307,), (0.3081,), "strokes"),
    "cifar10": DatasetInfo(
        (3, 32, 32), 10, ("cifar-10-python.tar.gz",),
        "from https://www.cs.toronto.edu/~kriz/cifar.html; or its extracted cifar-10-batches-py/",
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "scenes"),
    "svhn": DatasetInfo(
        (3, 32, 32), 10,
        ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat (with --svhn-extra)"),
        "from http://ufldl.stanford.edu/housenumbers/",
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "scenes"),
}


def _transforms(settings: Experiment, train: bool):
    T = import_torchvision().transforms

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
    datasets = import_torchvision().datasets

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
    """The training set (``None`` unless ``train``) and the test set of ``settings.dataset``:
    SVHN's ``train`` split plus ``extra`` with ``settings.svhn_extra``, cut to
    ``settings.train_subset`` images drawn from the seed. A failure leaves no empty ``--data``
    directory behind."""
    existed = os.path.exists(settings.data_dir)
    try:
        train_set, test = _datasets(settings, train)
    except UsageError:
        if not existed and os.path.isdir(settings.data_dir):
            for folder, _, files in sorted(os.walk(settings.data_dir), reverse=True):
                if not files and not os.listdir(folder):
                    os.rmdir(folder)
        raise
    if train_set is not None and 0 < settings.train_subset < len(train_set):
        draw = torch.Generator().manual_seed(settings.seed)
        order = torch.randperm(len(train_set), generator=draw)
        train_set = Subset(train_set, order[:settings.train_subset].tolist())
    return train_set, test


def _datasets(settings: Experiment, train: bool) -> tuple[Dataset | None, Dataset]:
    info = DATASETS[settings.dataset]
    if settings.synthetic:
        test_size = max(settings.synthetic_size // 4, info.num_classes)
        test = synthetic_dataset(info, test_size, settings.seed, False, settings.mean,
                                 settings.std)
        return (synthetic_dataset(info, settings.synthetic_size, settings.seed, True,
                                  settings.mean, settings.std) if train else None), test
    test = _load_split(settings, "test")
    train_set = _load_split(settings, "train") if train else None
    if train_set is not None and settings.dataset == "svhn" and settings.svhn_extra:
        train_set = ConcatDataset([train_set, _load_split(settings, "extra")])
    return train_set, test


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                generator: torch.Generator, sampler: Sampler[int] | Sequence[int]) -> DataLoader:
    """A DataLoader over ``sampler``'s indices whose augmentation and worker seeds come from
    ``generator``: seeded at each epoch's start, it fixes the epoch's data independently of
    every other draw (exact resume). In-memory data sets use no workers; worker processes
    ignore SIGINT and SIGTERM (:func:`leave_signals_to_the_main_process`)."""
    if isinstance(dataset.dataset if isinstance(dataset, Subset) else dataset, TensorDataset):
        workers = 0
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=leave_signals_to_the_main_process if workers else None)


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """In a data-loading worker: ignore SIGINT and SIGTERM. Ctrl-C and SLURM signal the whole
    process group; a worker they killed would make PyTorch raise in the main process, in the
    middle of the step or test batch that the engine lets finish before it saves and stops. The
    main process shuts its workers down itself (and they leave when it dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
