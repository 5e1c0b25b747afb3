"""Data sets and loaders: the registered data sets (:mod:`training.datasets`) with the authors'
transforms, or the synthetic stand-in (:mod:`training.synthetic`) for runs without files.

Images come out as ``[B, C, H, W]``; the engine's Poisson encoder turns them into ``[T, B, ...]``.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset, TensorDataset

from .datasets import DATASETS, DatasetInfo
from .experiment import Experiment, UsageError
from .synthetic import synthetic_dataset
from .versions import import_torchvision


def dataset_info(name: str) -> DatasetInfo:
    """The registered data set ``name``; a :class:`UsageError` naming the known ones if none."""
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))} "
                         f"(a script registers more in training.datasets.DATASETS)")
    return DATASETS[name]


class _Transformed(Dataset):
    """``dataset``'s images through ``transform``, labels as they are."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.dataset[index]
        return self.transform(image), label


class _AsFloatImage:
    """torchvision's ``ToTensor`` for PIL images and ``[H, W, C]`` arrays; a ``[C, H, W]``
    tensor (what a registered loader may give) as float in [0, 1], uint8 divided by 255."""

    def __init__(self, to_tensor: Callable) -> None:
        self.to_tensor = to_tensor

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image.float() / 255 if image.dtype == torch.uint8 else image.float()
        return self.to_tensor(image)


def _transforms(settings: Experiment, train: bool):
    T = import_torchvision().transforms

    steps = []
    if train and settings.crop_padding > 0:
        steps.append(T.RandomCrop(DATASETS[settings.dataset].input_shape[1:],
                                  padding=settings.crop_padding))
    if train and settings.horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    steps.append(_AsFloatImage(T.ToTensor()))
    if settings.mean is not None:
        steps.append(T.Normalize(settings.mean, settings.std))
    return T.Compose(steps)


def _torchvision_split(settings: Experiment, split: str, download: bool) -> Dataset:
    # a torchvision built for another torch ends in one error line, before a loader imports it
    import_torchvision()
    info, root = DATASETS[settings.dataset], settings.data_dir
    if split == "extra":
        if info.extra is None:
            raise UsageError(f"{settings.dataset} has no extra training images")
        return _Transformed(info.extra(root, download), _transforms(settings, train=True))
    train = split == "train"
    return _Transformed(info.load(root, train, download), _transforms(settings, train))


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
    the ``train`` split plus the data set's ``extra`` images with ``settings.extra_images``, cut to
    ``settings.train_subset`` images drawn from the seed. A failure leaves no empty ``--data``
    directory behind."""
    dataset_info(settings.dataset)
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
    if train_set is not None and settings.extra_images:
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
