"""Everything a researcher edits or calls, in one place (the authors kept these in their scripts):
the train and validate loops, the loss, top-1/top-5 accuracy, running averages, SGD and its
learning-rate schedule, data sets and loaders, the networks and checkpointing. They live in the
:mod:`training` package, one module per job.
"""
from training import Experiment, UsageError, main, run
from training.checkpoint import load_checkpoint, load_weights, save_checkpoint
from training.data import build_datasets, make_loader
from training.engine import build_model, seed_everything
from training.loop import (adjust_learning_rate, build_optimizer, evaluate, learning_rate,
                           spike_loss, train_one_epoch)
from training.metrics import AverageMeter, accuracy
from training.synthetic import synthetic_dataset

validate = evaluate  # the name pytorch/examples and the authors' scripts used

__all__ = ["AverageMeter", "Experiment", "UsageError", "accuracy", "adjust_learning_rate",
           "build_datasets", "build_model", "build_optimizer", "evaluate", "learning_rate",
           "load_checkpoint", "load_weights", "main", "make_loader", "run", "save_checkpoint",
           "seed_everything", "spike_loss", "synthetic_dataset", "train_one_epoch", "validate"]
