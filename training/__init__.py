"""The shared training engine behind ``mnist_LeNet.py``, ``cifar10_VGG9.py``,
``cifar10_ResNet11.py`` and ``svhn_ResNet13.py``: :mod:`training.engine` (``run``, ``main``)
ties together the settings (:mod:`~training.experiment`), data (:mod:`~training.data`), the
training and test passes (:mod:`~training.loop`), what they measure (:mod:`~training.metrics`),
checkpoints (:mod:`~training.checkpoint`) and DDP (:mod:`~training.distributed`); the ``--stats``
counts and the figures are :mod:`analysis`'s. ``utils.py`` gathers the parts researchers call.
"""
from .engine import Interrupted, main, run
from .experiment import Experiment, UsageError

__all__ = ["Experiment", "Interrupted", "UsageError", "main", "run"]
