"""Everything a researcher edits or calls, in one place (the authors kept these in their scripts).

The implementation lives in the :mod:`training` package, one module per job; this file re-exports
its public names: the train and validate loops, top-1/top-5 accuracy, running averages, the
learning-rate schedule, data loaders and checkpointing.
"""
import training
from training import *  # noqa: F401,F403  (re-export by design)
from training import evaluate

validate = evaluate  # the name pytorch/examples and the authors' scripts used

__all__ = [*training.__all__, "validate"]
