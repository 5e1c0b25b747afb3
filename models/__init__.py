"""The paper's spiking networks, built from :mod:`spiking`, and a lookup by name."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import SpikingNetwork
from .lenet import LeNet
from .resnet import ResNet11, ResNet13
from .vgg import VGG9

__all__ = ["MODELS", "LeNet", "ResNet11", "ResNet13", "SpikingNetwork", "VGG9", "get_model"]

# name -> network class (or any callable taking the keyword arguments of get_model)
MODELS: dict[str, Callable[..., SpikingNetwork]] = {
    "lenet": LeNet,
    "vgg9": VGG9,
    "resnet11": ResNet11,
    "resnet13": ResNet13,
}


def get_model(name: str, **kwargs: Any) -> SpikingNetwork:
    """Build a network by name (``lenet``, ``vgg9``, ``resnet11``, ``resnet13``; any case).

    Keyword arguments go to the network's constructor, which every network names alike:
    ``num_classes``, ``leak``, ``threshold``, ``pool_threshold``, ``dropout``, ``width`` (the
    channel multiplier) and ``input_shape``.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[key](**kwargs)
