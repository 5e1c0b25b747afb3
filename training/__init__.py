"""The shared training engine behind ``mnist_LeNet.py``, ``cifar10_VGG9.py``,
``cifar10_ResNet11.py`` and ``svhn_ResNet13.py``: :mod:`training.engine` (``run``, ``main``)
ties together the settings (:mod:`~training.experiment`), data (:mod:`~training.data`), the
training and test passes (:mod:`~training.loop`), what they measure (:mod:`~training.metrics`),
checkpoints (:mod:`~training.checkpoint`) and DDP (:mod:`~training.distributed`); the ``--stats``
counts and the figures are :mod:`analysis`'s.
"""
from .checkpoint import (atomic_save, capture_rng_state, checkpoint_paths, load_checkpoint,
                         load_weights, restore_rng_state, run_tag, save_checkpoint)
from .data import DATASETS, DatasetInfo, build_datasets, make_loader, synthetic_dataset
from .engine import Interrupted, RunResult, build_model, epoch_seed, main, run, seed_everything
from .experiment import Experiment, UsageError, build_parser, parse_settings
from .loop import (Precision, adjust_learning_rate, build_optimizer, evaluate, learning_rate,
                   schedule_state, spike_loss, train_one_epoch)
from .metrics import (CSV_FIELDS, AverageMeter, EpochProgress, EpochRecord, EpochStats,
                      MetricsLog, accuracy, format_epoch_table, format_text_table)

__all__ = [
    "CSV_FIELDS", "DATASETS", "AverageMeter", "DatasetInfo", "EpochProgress", "EpochRecord",
    "EpochStats", "Experiment", "Interrupted", "MetricsLog", "Precision", "RunResult",
    "UsageError", "accuracy", "adjust_learning_rate", "atomic_save", "build_datasets",
    "build_model", "build_optimizer", "build_parser", "capture_rng_state", "checkpoint_paths",
    "epoch_seed", "evaluate", "format_epoch_table", "format_text_table", "learning_rate",
    "load_checkpoint", "load_weights", "main", "make_loader", "parse_settings",
    "restore_rng_state", "run", "run_tag", "save_checkpoint", "schedule_state", "seed_everything",
    "spike_loss", "synthetic_dataset", "train_one_epoch",
]
