"""The shared training engine behind ``mnist_LeNet.py``, ``cifar10_VGG9.py``,
``cifar10_ResNet11.py`` and ``svhn_ResNet13.py``.

- :mod:`training.experiment`: the :class:`Experiment` settings and the command line built from
  them; :class:`UsageError`, the one error reported without a traceback.
- :mod:`training.data`: torchvision data sets, the synthetic stand-in, loaders.
- :mod:`training.loop`: the loss, SGD and its schedule, ``--amp``, one training epoch, one
  evaluation pass.
- :mod:`training.metrics`: accuracy, meters, the progress display, the per-epoch record (CSV,
  summary line, final table).
- :mod:`training.checkpoint`: atomic checkpoints, safe loading of ours and the authors' files.
- :mod:`training.distributed`: DDP under torchrun (process group, rank 0, reductions, samplers).
- :mod:`training.reports`, :mod:`training.plots`: ``--stats`` output and the optional PNG figures.
- :mod:`training.stops`: signals, ``--save-every`` and spike counts: what ends a run early.
- :mod:`training.engine`: ``run`` and ``main``, which tie them together.
"""
from .checkpoint import (atomic_save, capture_rng_state, checkpoint_paths, load_checkpoint,
                         load_weights, restore_rng_state, run_tag, save_checkpoint)
from .data import DATASETS, DatasetInfo, build_datasets, make_loader, synthetic_dataset
from .engine import RunResult, build_model, epoch_seed, main, resolve_device, run, seed_everything
from .experiment import Experiment, UsageError, build_parser, parse_settings
from .loop import (EpochStats, EvalMonitor, Precision, adjust_learning_rate, build_optimizer,
                   evaluate, learning_rate, make_precision, schedule_state, spike_loss,
                   train_one_epoch)
from .metrics import (CSV_FIELDS, AverageMeter, EpochProgress, EpochRecord, MetricsLog,
                      ProgressMeter, accuracy, format_epoch_table, format_text_table)
from .stops import Interrupted

__all__ = [
    "CSV_FIELDS", "DATASETS", "AverageMeter", "DatasetInfo", "EpochProgress", "EpochRecord",
    "EpochStats", "EvalMonitor", "Experiment", "Interrupted", "MetricsLog", "Precision",
    "ProgressMeter", "RunResult", "UsageError", "accuracy", "adjust_learning_rate",
    "atomic_save", "build_datasets", "build_model", "build_optimizer", "build_parser",
    "capture_rng_state", "checkpoint_paths", "epoch_seed", "evaluate", "format_epoch_table",
    "format_text_table", "learning_rate", "load_checkpoint", "load_weights", "main",
    "make_loader", "make_precision", "parse_settings", "resolve_device", "restore_rng_state",
    "run", "run_tag", "save_checkpoint", "schedule_state", "seed_everything", "spike_loss",
    "synthetic_dataset", "train_one_epoch",
]
