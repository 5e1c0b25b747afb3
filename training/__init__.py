"""The shared training engine behind ``mnist_LeNet.py``, ``cifar10_VGG9.py``,
``cifar10_ResNet11.py`` and ``svhn_ResNet13.py``.

- :mod:`training.experiment`: the :class:`Experiment` settings dataclass.
- :mod:`training.cli`: the command line (the authors' flags plus ours).
- :mod:`training.data`: torchvision data sets, the synthetic stand-in, loaders.
- :mod:`training.loop`: the loss, one training epoch, one evaluation pass.
- :mod:`training.optim`: SGD and the step learning-rate schedule.
- :mod:`training.checkpoint`: atomic checkpoints, safe loading of ours and the authors' files.
- :mod:`training.metrics`, :mod:`training.progress`: meters, accuracy, CSV, progress display.
- :mod:`training.distributed`: DDP under torchrun (process group, rank 0, metric reduction).
- :mod:`training.amp`: ``--amp`` autocast and gradient scaling.
- :mod:`training.reports`, :mod:`training.plots`: ``--stats`` output and the optional PNG figures.
- :mod:`training.engine`: ``run`` and ``main``, which tie them together.
"""
from .checkpoint import (atomic_save, capture_rng_state, checkpoint_paths, load_checkpoint,
                         load_weights, restore_rng_state, run_tag, save_checkpoint)
from .cli import build_parser, parse_settings
from .data import DATASETS, DatasetInfo, build_datasets, make_loader, synthetic_dataset
from .engine import RunResult, build_model, epoch_seed, main, resolve_device, run, seed_everything
from .errors import UsageError
from .experiment import Experiment
from .loop import EpochStats, EvalMonitor, evaluate, spike_loss, train_one_epoch
from .metrics import CSV_FIELDS, AverageMeter, MetricsLog, ProgressMeter, accuracy
from .optim import adjust_learning_rate, build_optimizer, learning_rate, schedule_state
from .progress import EpochProgress, format_table

__all__ = [
    "CSV_FIELDS", "DATASETS", "AverageMeter", "DatasetInfo", "EpochProgress", "EpochStats",
    "EvalMonitor", "Experiment", "MetricsLog", "ProgressMeter", "RunResult", "UsageError",
    "accuracy", "adjust_learning_rate", "atomic_save", "build_datasets", "build_model",
    "build_optimizer", "build_parser", "capture_rng_state", "checkpoint_paths", "epoch_seed",
    "evaluate", "format_table", "learning_rate", "load_checkpoint", "load_weights", "main",
    "make_loader", "parse_settings", "resolve_device", "restore_rng_state", "run", "run_tag",
    "save_checkpoint", "schedule_state", "seed_everything", "spike_loss", "synthetic_dataset",
    "train_one_epoch",
]
