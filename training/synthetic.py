"""The synthetic stand-in for a data set (``--synthetic``): deterministic, learnable images of
the real set's shape, class count, density and pixel statistics, drawn in memory from a seed, so
that the whole pipeline runs anywhere without files. MNIST gets white pen strokes on black,
Fashion-MNIST grey objects on black, CIFAR-10 and SVHN dense smooth colour images; images are
``[N, C, H, W]`` in [0, 1] (before normalisation), labels ``[N]``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import TensorDataset


class ImitatedSet(Protocol):
    """What the stand-in needs to know of the set it imitates
    (:class:`training.datasets.DatasetInfo` has it): the ``(C, H, W)`` of an image, the classes,
    the real training images' per-channel mean and standard deviation in [0, 1], the kind of
    image, ``"strokes"``, ``"silhouettes"`` or ``"scenes"``, and the fraction of pixels that are
    not 0."""

    input_shape: tuple[int, int, int]
    num_classes: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    synthetic_style: str
    density: float


def synthetic_dataset(info: ImitatedSet, size: int, seed: int, train: bool,
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> TensorDataset:
    """A deterministic, learnable stand-in for the set ``info`` describes: ``size`` images
    ``[size, C, H, W]`` (float32) and labels ``[size]`` (int64) with the real images' density
    and pixel statistics, so the networks see as many input spikes as on real data. Class
    patterns come from ``seed`` (shared by train and test, which draw different variations);
    with ``mean`` and ``std`` the images are normalised as the real set's ``Normalize``."""
    draw = torch.Generator().manual_seed(seed + (1 if train else 2))
    labels = torch.randperm(size, generator=draw) % info.num_classes
    make = _STYLES[info.synthetic_style]
    images = make(info, labels, torch.Generator().manual_seed(seed), draw)
    if mean is not None and std is not None:
        images = (images - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return TensorDataset(images, labels)


def _strokes(info: ImitatedSet, labels: Tensor, classes: torch.Generator,
             draw: torch.Generator) -> Tensor:
    """``[N, C, H, W]`` white pen strokes on black in [0, 1] for ``labels`` ``[N]``, about 19 %
    of the pixels lit as in MNIST: each class is three fixed quadratic Bezier curves; an image
    moves their control points and the whole figure by a few pixels and varies the pen width."""
    channels, height, width = info.input_shape
    size, strokes, curve_points = len(labels), 3, 24
    # control points [class, stroke, point, xy], in the central 60 % of the image as in MNIST
    prototypes = 0.2 + 0.6 * torch.rand((info.num_classes, strokes, 3, 2), generator=classes)
    control = (prototypes[labels] + 0.04 * torch.randn((size, strokes, 3, 2), generator=draw)
               + 0.06 * torch.randn((size, 1, 1, 2), generator=draw))
    t = torch.linspace(0, 1, curve_points).view(1, 1, -1, 1)
    curve = ((1 - t) ** 2 * control[:, :, :1] + 2 * (1 - t) * t * control[:, :, 1:2]
             + t ** 2 * control[:, :, 2:]).flatten(1, 2) * torch.tensor([width - 1, height - 1])
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([cols.flatten(), rows.flatten()], 1).float()
    distance = torch.cdist(pixels.expand(size, -1, -1), curve).min(dim=2).values  # [N, H*W]
    # full ink within the pen's radius, fading to 0 over one more pixel (anti-aliasing)
    radius = 1.1 + 0.3 * torch.rand((size, 1), generator=draw)
    ink = (radius + 1 - distance).clamp(0.0, 1.0)
    return ink.view(size, 1, height, width).expand(size, channels, height, width).contiguous()


def _scenes(info: ImitatedSet, labels: Tensor, classes: torch.Generator,
            draw: torch.Generator) -> Tensor:
    """``[N, C, H, W]`` dense colour images in [0, 1] for ``labels`` ``[N]``: a fixed smooth
    colour field per class, plus the image's own smooth field, finer texture and pixel noise,
    scaled to the real set's per-channel mean and standard deviation."""
    channels, height, width = info.input_shape
    size = len(labels)

    def smooth(noise: Tensor) -> Tensor:
        return F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)

    # parts of unit variance: class field, image field, texture, pixel noise
    parts = ((1.0, smooth(torch.randn((info.num_classes, channels, 4, 4),
                                      generator=classes))[labels]),
             (0.6, smooth(torch.randn((size, channels, 4, 4), generator=draw))),
             (0.4, smooth(torch.randn((size, channels, 8, 8), generator=draw))),
             (0.2, torch.randn((size, channels, height, width), generator=draw)))
    field = sum(weight * part for weight, part in parts)
    # natural images' colour channels are strongly correlated (mostly brightness)
    field = 2 * field.mean(dim=1, keepdim=True) + field
    field = (field - field.mean(dim=(0, 2, 3), keepdim=True)) / field.std(dim=(0, 2, 3),
                                                                      keepdim=True)
    mean = torch.tensor(info.pixel_mean).view(-1, 1, 1)
    std = torch.tensor(info.pixel_std).view(-1, 1, 1)
    return (mean + std * field).clamp(0.0, 1.0)


def _silhouettes(info: ImitatedSet, labels: Tensor, classes: torch.Generator,
                 draw: torch.Generator) -> Tensor:
    """``[N, C, H, W]`` grey objects on black in [0, 1] for ``labels`` ``[N]``, as in
    Fashion-MNIST: each class is a fixed smooth shape, which an image varies; the
    ``info.density`` of its pixels where the shape is strongest are lit, textured, the rest 0.
    The lit pixels' mean and spread are those that give the real set's statistics."""
    channels, height, width = info.input_shape
    size = len(labels)

    def smooth(noise: Tensor) -> Tensor:
        return F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)

    shape = (smooth(torch.randn((info.num_classes, 1, 4, 4), generator=classes))[labels]
             + 0.4 * smooth(torch.randn((size, 1, 4, 4), generator=draw))).flatten(1)
    cut = shape.quantile(1 - info.density, dim=1, keepdim=True)
    lit = (shape > cut).view(size, 1, height, width)
    texture = (smooth(torch.randn((size, channels, 8, 8), generator=draw))
               + 0.3 * torch.randn((size, channels, height, width), generator=draw))
    texture = (texture - texture.mean()) / texture.std()
    # mean m and square s of the whole image are density times those of its lit pixels
    mean, std = torch.tensor(info.pixel_mean), torch.tensor(info.pixel_std)
    lit_mean = mean / info.density
    lit_std = ((std ** 2 + mean ** 2) / info.density - lit_mean ** 2).clamp(min=0).sqrt()
    values = lit_mean.view(-1, 1, 1) + lit_std.view(-1, 1, 1) * texture
    return torch.where(lit, values.clamp(1 / 255, 1.0), 0.0)


_STYLES = {"strokes": _strokes, "silhouettes": _silhouettes, "scenes": _scenes}
