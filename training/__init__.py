"""The shared training engine behind ``mnist_LeNet.py``, ``cifar10_VGG9.py``,
``cifar10_ResNet11.py`` and ``svhn_ResNet13.py``: :mod:`training.engine` (``run``, ``main``)
ties together the settings (:mod:`~training.experiment`), data (:mod:`~training.data`,
:mod:`~training.synthetic`), the training and test passes (:mod:`~training.loop`), what they
measure (:mod:`~training.metrics`), checkpoints (:mod:`~training.checkpoint`), signals
(:mod:`~training.interrupts`) and DDP (:mod:`~training.distributed`); the ``--stats`` counts and
the figures are :mod:`analysis`'s. ``utils.py`` gathers the parts researchers call.

Importing this package first sets how OpenMP's idle threads wait (:mod:`training.cpu_threads`),
which must happen before torch loads.
"""
from .cpu_threads import apply_thread_policy

apply_thread_policy()

from .engine import main, run  # noqa: E402  (after the thread policy, which must precede torch)
from .experiment import Experiment, UsageError  # noqa: E402
from .interrupts import Interrupted  # noqa: E402

__all__ = ["Experiment", "Interrupted", "UsageError", "main", "run"]
