"""Benchmark: the project's training and evaluation steps against baselines run in the same process.

For one network, T, batch and device this times a training step (encode, forward, summed-MSE
loss, backward, SGD step: ``training.loop.train_one_epoch`` on one batch, the step the trainer
runs) and an evaluation step (``training.loop.evaluate`` on that batch), and measures the peak
memory of a training step, for variants that start from identical weights and see identical
images:

* ``project``: ``models.get_model(...)`` fed by ``spiking.PoissonEncoder``.
* ``authors``: :mod:`models.authors_loop`, the literal per-time-step port of the authors' loop,
  drawing its Poisson spikes step by step inside its time loop and its dropout masks once per
  batch before it, like the released scripts.
* ``ann``: the dense-ANN cost floor (:class:`DenseFloor`): the same convolutions and linear
  layers with ReLU in place of every spiking neuron, run once on the ``T*B`` images. Not a model:
  what any implementation has to compute at least.
* ``snntorch``, ``spikingjelly`` (LeNet only, where the library is installed): the same LeNet
  written with that library's layers and neurons (:mod:`benchmarks.peers`).
* ``project:NAME`` (``--neuron NAME``): the project's network with another neuron class in
  every hidden layer (:data:`NEURONS`: the worked examples' soft reset, fast-sigmoid surrogate
  and learnable leak, or any ``module:Class``), the same weights; its ratio is to ``project``,
  the paper's LIF neuron.

It reports medians, the ratios project / each other variant, and the input density of every
synapse layer of the project; it judges nothing (the project's own targets are in
benchmarks/README.md). When the machine's load exceeds its cores, before or after the run, the
timings are marked unreliable. ``python benchmarks/bench.py --help``; benchmarks/README.md
describes the method.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import inspect
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import cpu_threads  # first: the scripts' thread policy must precede torch

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import models
from benchmarks import peers
from models.authors_loop import ARCHS, oracle_forward
from spiking import PoissonEncoder, SpikingConv2d, SpikingLinear, SpikingNeuron, backends
from spiking.backends import cpu as cpu_backend
from training import Experiment, UsageError
from training.checkpoint import load_checkpoint, load_weights
from training.loop import Precision, build_optimizer, evaluate, train_one_epoch
from training.metrics import EpochStats

__all__ = [
    "NEURONS",
    "PHASES",
    "VARIANTS",
    "BenchSettings",
    "DenseFloor",
    "PerStepPoissonSpikes",
    "Variant",
    "available_variants",
    "build_variants",
    "input_densities",
    "neuron_class",
    "machine_load",
    "measure_memory",
    "step_memory",
    "summarise",
    "time_variants",
]

ROOT = Path(__file__).resolve().parents[1]
BASELINES: tuple[str, ...] = ("authors", "ann")
VARIANTS: tuple[str, ...] = ("project", *BASELINES, *peers.PEERS)
PHASES: tuple[str, ...] = ("train", "eval")
# The neurons --neuron names: the worked examples' variations of the paper's LIF neuron.
NEURONS: dict[str, str] = {"soft_reset": "examples.custom_neuron:SoftResetLIF",
                           "fast_sigmoid": "examples.surrogate_neuron:FastSigmoidLIF",
                           "plif": "examples.plif_neuron:PLIFNeuron"}
NEURON_VARIANT = "project:"  # the prefix of a variant that runs the project with another neuron
# Small, so that repeated steps leave the weights (and with them the spike rates) where they began.
LEARNING_RATE = 1e-4
# The data set of each network's published run, and its rate code's scale a (docs/algorithm.md,
# *Input encoding*): with them the optimiser and the encoding are the training scripts' own.
DATASETS = {"lenet": "mnist", "vgg9": "cifar10", "resnet11": "cifar10", "resnet13": "svhn"}
INPUT_SCALES = {"mnist": 0.5}
# glibc keeps freed blocks above its (self-raising) mmap threshold in the heap for reuse, so after
# a warm-up step RSS would not show a step's peak; a fixed threshold returns every large block.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures: one field per command-line flag (``--help``).

    ``variants`` empty means every variant :func:`available_variants` offers for ``arch``.
    ``data`` takes real MNIST digits (LeNet) instead of synthetic images, ``resume`` a
    checkpoint's weights instead of the model's initialisation. ``threshold_scale`` multiplies
    every neuron threshold (below 1: denser spikes); ``event_density_max`` overrides the spiking
    core's event-driven crossover for every kind of layer. Each of ``neurons`` (a name of
    :data:`NEURONS` or ``module:Class``) adds the variant ``project:NAME``.
    """

    arch: str = "lenet"
    time_steps: int = 100
    batch: int = 32
    device: str = "cpu"
    width: float = 1.0
    variants: tuple[str, ...] = ()
    neurons: tuple[str, ...] = ()
    repeats: int = 3
    warmup: int = 1
    memory: bool = True
    seed: int = 0
    amp: bool = False
    time_chunk: int | None = None
    threads: int | None = None
    data: Path | None = None
    resume: str | None = None
    threshold_scale: float = 1.0
    event_density_max: float | None = None
    json: Path | None = None

    def argv(self) -> list[str]:
        """Command-line flags that reproduce these settings, paths made absolute."""
        argv = ["--arch", self.arch, "-T", str(self.time_steps), "-b", str(self.batch),
                "--device", self.device, "--width", repr(self.width), "--repeats",
                str(self.repeats), "--warmup", str(self.warmup), "--seed", str(self.seed),
                "--threshold-scale", repr(self.threshold_scale)]
        optional = {"--variants": ",".join(self.variants) or None,
                    "--neuron": ",".join(self.neurons) or None,
                    "--time-chunk": self.time_chunk, "--threads": self.threads,
                    "--data": self.data and Path(self.data).resolve(),
                    "--resume": self.resume and Path(self.resume).resolve(),
                    "--event-density-max": self.event_density_max,
                    "--json": self.json and Path(self.json).resolve()}
        argv += [item for flag, value in optional.items() if value is not None
                 for item in (flag, str(value))]
        return argv + ["--amp"] * self.amp + ["--no-memory"] * (not self.memory)


def training_settings(arch: str) -> Experiment:
    """The settings the training scripts would give ``arch``'s optimiser and encoder (the
    authors' momentum and weight decay, the data set's input scale), at the benchmark's small
    learning rate."""
    dataset = DATASETS[arch]
    return Experiment(tag="benchmark", dataset=dataset, arch=arch, lr=LEARNING_RATE,
                      input_scale=INPUT_SCALES.get(dataset, 1.0))


@dataclass
class Variant:
    """One implementation under test: a network and its encoder (images ``[B, C, H, W]`` -> its
    input), its optimiser, and the batch it is timed on (``images``, labels ``[B]``)."""

    name: str
    model: nn.Module
    encoder: Callable[[Tensor], Any]
    optimizer: torch.optim.Optimizer
    images: Tensor
    labels: Tensor
    precision: Precision

    def train_step(self) -> EpochStats:
        """One training step, as the trainer runs it: ``train_one_epoch`` over this one batch."""
        return train_one_epoch(self.model, self.encoder, [(self.images, self.labels)],
                               self.optimizer, self.images.device, precision=self.precision)

    def eval_step(self) -> EpochStats:
        """One evaluation step: ``evaluate`` over this one batch (no autograd, eval mode)."""
        return evaluate(self.model, self.encoder, [(self.images, self.labels)],
                        self.images.device, precision=self.precision)


class PerStepPoissonSpikes:
    """Stands in for the ``[T, B, C, H, W]`` spike tensor that ``oracle_forward`` reads.

    ``oracle_forward`` uses ``dim()``, ``shape``, ``dtype``, ``device`` and ``spikes[t]`` once per
    step; here ``spikes[t]`` draws step t's spikes ``[B, C, H, W]`` at that moment, as the
    authors' scripts encode inside their time loop: ``[|a x| > U(0, 1)] * sign(x)``.
    """

    def __init__(self, images: Tensor, time_steps: int, scale: float) -> None:
        self.images = images
        self.scale = scale
        self.shape = torch.Size((time_steps, *images.shape))
        self.dtype = images.dtype
        self.device = images.device

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, step: int) -> Tensor:
        intensity = (self.images * self.scale).abs()
        return (intensity > torch.rand_like(intensity)).to(self.dtype) * self.images.sign()


class _AuthorsWeights(nn.Module):
    """Weights under the authors' names (``"cnn1.weight"``, ...) as parameters of a module."""

    def __init__(self, weights: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.names = list(weights)
        self.params = nn.ParameterList(nn.Parameter(w.detach().clone()) for w in weights.values())

    def named_weights(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.params))


class DenseFloor(_AuthorsWeights):
    """The dense-ANN cost floor: a plain ReLU network with the spiking networks' layers.

    Not a model of anything: it bounds from below what a spiking implementation must compute,
    namely every convolution and linear layer, forward and backward, on all ``T*B`` images. Its
    wiring is the authors' own (``models.authors_loop.ARCHS``, which the parity tests tie to the
    project's models), so it follows every architecture without knowing the project's internals:
    each architecture function calls the methods below once per layer, here on the whole
    time-folded batch instead of once per step. ReLU replaces each LIF neuron (followed by the
    dropout mask, held over time, in training), ``avg_pool2d(2)`` each pooling neuron, residual
    shortcut currents are added as in the original, and the output layer's currents are averaged
    over T.

    Args:
        arch: ``"lenet"``, ``"vgg9"``, ``"resnet11"`` or ``"resnet13"``.
        weights: ``"<layer>.weight"`` tensors under the authors' names (copied; convolutions get
            padding ``k // 2``, strides come from the architecture function).
        time_steps: T; the input batch holds ``T*B`` images, time-major.
        dropout: p of the mask after every ReLU in training (0 = none).
    """

    def __init__(self, arch: str, weights: Mapping[str, Tensor], time_steps: int,
                 dropout: float) -> None:
        super().__init__(weights)
        self.step = ARCHS[arch]
        self.time_steps = time_steps
        self.dropout = dropout
        self.hidden_shapes: dict[str, torch.Size] = {}
        self.weights: dict[str, Tensor] = {}
        self.output: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        """``[T*B, C, H, W]`` images (step-major) -> output ``[B, classes]``."""
        self.weights = self.named_weights()
        self.step(self, images)
        return self.output

    def conv(self, name: str, x: Tensor, stride: int = 1) -> Tensor:
        weight = self.weights[name + ".weight"]
        return F.conv2d(x, weight, None, stride=stride, padding=weight.shape[-1] // 2)

    def linear(self, name: str, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.weights[name + ".weight"])

    def hidden(self, name: str, current: Tensor) -> Tensor:
        """ReLU in place of LIF layer ``name``; in training, a ``[B, ...]`` mask for all T steps."""
        self.hidden_shapes[name] = current.shape[1:]
        out = F.relu(current)
        if not self.training or self.dropout == 0:
            return out
        out = out.unflatten(0, (self.time_steps, -1))
        keep = torch.full(out.shape[1:], 1 - self.dropout, dtype=out.dtype, device=out.device)
        return (out * torch.bernoulli(keep).div_(1 - self.dropout)).flatten(0, 1)

    def pool(self, name: str, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2)

    def readout(self, x: Tensor) -> None:
        current = F.linear(x, self.weights["fc1.weight"])
        self.output = current.unflatten(0, (self.time_steps, -1)).mean(0)


class AuthorsLoop(_AuthorsWeights):
    """:func:`models.authors_loop.oracle_forward` as a module: ``forward(spikes)`` ->
    ``[B, classes]``, the weights its parameters. In training it draws one dropout mask per
    hidden LIF layer before the time loop, as the released scripts do.

    Args:
        arch: the network.
        model: the project's network whose weights (copied) and neuron settings it takes.
        image: one input image ``[1, C, H, W]``, to find the hidden layers' shapes.
    """

    def __init__(self, arch: str, model: models.SpikingNetwork, image: Tensor) -> None:
        weights = {name: w.detach() for name, w in model.state_dict().items()}
        super().__init__(weights)
        self.arch = arch
        self.dropout = model.dropout
        self.neurons = {"leak": model.leak, "threshold": model.threshold,
                        "pool_threshold": model.pool_threshold}
        probe = DenseFloor(arch, weights, 1, 0.0).eval()
        with torch.no_grad():
            probe(image)
        self.hidden_shapes = probe.hidden_shapes

    def masks(self, batch: int, device: torch.device) -> dict[str, Tensor] | None:
        """One ``[B, ...]`` mask per hidden LIF layer (values 0 or ``1/(1-p)``), or None."""
        if not self.training or self.dropout == 0:
            return None
        keep = 1 - self.dropout
        return {name: torch.bernoulli(torch.full((batch, *shape), keep, device=device)).div_(keep)
                for name, shape in self.hidden_shapes.items()}

    def forward(self, spikes: PerStepPoissonSpikes) -> Tensor:
        return oracle_forward(self.arch, self.named_weights(), spikes,
                              self.masks(spikes.shape[1], spikes.device), **self.neurons)


def available_variants(arch: str) -> tuple[str, ...]:
    """The variants a run of ``arch`` has by default: the project, its baselines, and for LeNet
    each peer whose library is installed."""
    here = tuple(name for name in peers.PEERS if arch == "lenet" and peers.installed(name))
    return ("project", *BASELINES, *here)


def neuron_class(name: str) -> type[SpikingNeuron]:
    """The neuron class ``--neuron name`` names: one of :data:`NEURONS`, or ``module:Class``.

    Raises:
        UsageError: an unknown name, a module or class that does not import, not a neuron.
    """
    module_name, colon, class_name = NEURONS.get(name, name).partition(":")
    if not colon:
        raise UsageError(f"unknown neuron {name!r}; choose from {', '.join(NEURONS)}, or name "
                         "a class as module:Class")
    try:
        neuron = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--neuron {name}: {error}") from None
    if not (isinstance(neuron, type) and issubclass(neuron, SpikingNeuron)):
        raise UsageError(f"--neuron {name}: {module_name}.{class_name} is not a SpikingNeuron")
    return neuron


def _chosen_variants(settings: BenchSettings) -> tuple[str, ...]:
    """``settings.variants`` checked (a :class:`UsageError` names what cannot run), or the
    default ones; then ``project:NAME`` for each of ``settings.neurons``, with ``project``,
    their baseline."""
    neurons = tuple(NEURON_VARIANT + name for name in settings.neurons)
    if neurons and settings.variants and "project" not in settings.variants:
        raise UsageError("--neuron compares with the paper's neuron: --variants needs project")
    if not settings.variants:
        return (*available_variants(settings.arch), *neurons)
    for name in settings.variants:
        if name.startswith(NEURON_VARIANT):
            neuron_class(name[len(NEURON_VARIANT):])
            continue
        if name not in VARIANTS:
            raise UsageError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        if name in peers.PEERS and settings.arch != "lenet":
            raise UsageError(f"the {name} variant is a LeNet: it needs --arch lenet")
        if name in peers.PEERS and not peers.installed(name):
            raise UsageError(f"the {name} variant needs the {peers.PEERS[name]} package: "
                             'pip install -e ".[bench]"')
    return tuple(dict.fromkeys((*settings.variants, *neurons)))


def _synthetic_batch(arch: str, input_shape: tuple[int, ...], batch: int, classes: int,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """Images ``[B, C, H, W]`` and labels ``[B]``: MNIST-like in [0, 1) for LeNet,
    normalised-CIFAR-like N(0, 1) otherwise (the dense kernels do not depend on the values)."""
    shape = (batch, *input_shape)
    images = torch.rand(shape) if arch == "lenet" else torch.randn(shape)
    return images.to(device), torch.randint(classes, (batch,)).to(device)


def _mnist_batch(data_dir: Path, batch: int, device: torch.device,
                 seed: int) -> tuple[Tensor, Tensor]:
    """``batch`` real MNIST test digits ``[B, 1, 28, 28]`` in [0, 1] (as the training scripts
    see them) drawn with ``seed``, and their labels ``[B]``."""
    from torchvision import datasets, transforms

    try:
        digits = datasets.MNIST(str(data_dir), train=False, transform=transforms.ToTensor())
    except RuntimeError as missing:
        raise UsageError(f"no MNIST under {data_dir} ({str(missing).strip().splitlines()[0]}); "
                         "--data takes the folder holding MNIST/raw") from None
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))[:batch]
    images = torch.stack([digits[int(i)][0] for i in order])
    labels = torch.tensor([digits[int(i)][1] for i in order])
    return images.to(device), labels.to(device)


def _project_model(settings: BenchSettings, device: torch.device,
                   neuron: type[SpikingNeuron] | None = None) -> models.SpikingNetwork:
    """The project's network: its initialisation or ``settings.resume``'s weights, thresholds
    times ``settings.threshold_scale``; ``neuron`` in every hidden layer, if given."""
    neuron_kwargs = {} if neuron is None else {"neuron": neuron}
    if settings.threshold_scale != 1.0:
        defaults = inspect.signature(models.MODELS[settings.arch]).parameters
        neuron_kwargs |= {key: settings.threshold_scale * defaults[key].default
                          for key in ("threshold", "pool_threshold")}
    model = models.get_model(settings.arch, width=settings.width, **neuron_kwargs)
    if settings.resume:
        load_weights(model, load_checkpoint(settings.resume), settings.arch, settings.resume)
    model.time_chunk = settings.time_chunk
    return model.to(device)


def _network_and_encoder(name: str, settings: BenchSettings, model: models.SpikingNetwork,
                         images: Tensor, scale: float) -> tuple[nn.Module, Callable]:
    """Variant ``name``'s network, built from the project's ``model``, and its encoder."""
    steps = settings.time_steps
    if name == "project":
        return model, PoissonEncoder(steps, scale)
    if name.startswith(NEURON_VARIANT):
        neuron = neuron_class(name[len(NEURON_VARIANT):])
        other = _project_model(dataclasses.replace(settings, resume=None), images.device, neuron)
        # the project's weights; a neuron's own parameters (a learned leak) keep their start
        unexpected = other.load_state_dict(model.state_dict(), strict=False).unexpected_keys
        if unexpected:
            raise UsageError(f"--neuron {neuron.__name__} drops the paper's {unexpected[0]}")
        return other, PoissonEncoder(steps, scale)
    if name == "authors":
        network = AuthorsLoop(settings.arch, model, images[:1])
        return network, lambda batch: PerStepPoissonSpikes(batch, steps, scale)
    if name == "ann":
        weights = {key: w.detach() for key, w in model.state_dict().items()}
        # the T*B images, step-major like the project's folded batch
        return (DenseFloor(settings.arch, weights, steps, model.dropout),
                lambda batch: batch.repeat(steps, 1, 1, 1))
    network, encoder = peers.build_peer(name, model, steps, scale)
    return network.to(images.device), encoder


def build_variants(settings: BenchSettings) -> dict[str, Variant]:
    """The variants of ``settings`` (in its order), all from one ``models.get_model`` instance's
    weights and on one batch: ``settings.batch`` synthetic images, or real MNIST test digits
    from ``settings.data``. The seed makes a variant built alone (in a memory-measuring child
    process) identical to one built with the others. Only the project runs under ``--amp``.

    Raises:
        UsageError: a variant that cannot run here, unreadable data or checkpoint.
    """
    names = _chosen_variants(settings)
    if settings.data is not None and settings.arch != "lenet":
        raise UsageError(f"--data reads MNIST digits, for lenet only, not {settings.arch}")
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model = _project_model(settings, device)
    if settings.data is not None:
        images, labels = _mnist_batch(settings.data, settings.batch, device, settings.seed)
    else:
        images, labels = _synthetic_batch(settings.arch, model.input_shape, settings.batch,
                                          model.num_classes, device)
    training = training_settings(settings.arch)
    variants = {}
    for name in names:
        network, encoder = _network_and_encoder(name, settings, model, images,
                                                training.input_scale)
        precision = Precision(device.type, settings.amp and name == "project")
        variants[name] = Variant(name, network, encoder, build_optimizer(network, training),
                                 images, labels, precision)
    return variants


def _synapses(model: nn.Module) -> dict[str, SpikingConv2d | SpikingLinear]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, (SpikingConv2d, SpikingLinear))}


def input_densities(variant: Variant) -> dict[str, dict[str, float | int]]:
    """One training step of the project ``variant``, recording for every synapse layer the
    fraction of its input entries that are nonzero (spikes) and how many chunks took the
    event-driven and the dense path.

    Returns:
        ``{layer: {"density", "event_chunks", "dense_chunks"}}`` in the model's order.
    """
    synapses = _synapses(variant.model)
    counts = {name: [0, 0] for name in synapses}
    before = {name: (m.event_chunks, m.dense_chunks) for name, m in synapses.items()}

    def hook(name: str) -> Callable:
        def record(module, args) -> None:
            counts[name][0] += int(torch.count_nonzero(args[0]))
            counts[name][1] += args[0].numel()
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in synapses.items()]
    try:
        variant.train_step()
    finally:
        for handle in handles:
            handle.remove()
    return {name: {"density": counts[name][0] / max(1, counts[name][1]),
                   "event_chunks": m.event_chunks - before[name][0],
                   "dense_chunks": m.dense_chunks - before[name][1]}
            for name, m in synapses.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(variants: Mapping[str, Variant], repeats: int, warmup: int = 1,
                  device: str | torch.device = "cpu") -> dict[str, dict[str, list[float]]]:
    """Time every variant's training and evaluation step, alternating the variants.

    Each of ``warmup + repeats`` rounds runs the training step of every variant in turn, then the
    evaluation step of every variant in turn, so slow drifts of the machine hit all variants
    alike. The first ``warmup`` rounds (allocator growth, kernel selection, lazy initialisation)
    are discarded. The garbage collector runs before each step, outside the timed region.

    Returns:
        ``{variant: {"train": [seconds] * repeats, "eval": [seconds] * repeats}}``.
    """
    device = torch.device(device)
    samples = {name: {phase: [] for phase in PHASES} for name in variants}
    for round_index in range(warmup + repeats):
        for phase in PHASES:
            for name, variant in variants.items():
                step = variant.train_step if phase == "train" else variant.eval_step
                gc.collect()
                _synchronize(device)
                start = time.perf_counter()
                step()
                _synchronize(device)
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    samples[name][phase].append(elapsed)
    return samples


def _proc_status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def step_memory(variant: Variant, device: str | torch.device = "cpu") -> dict[str, int | bool]:
    """Peak memory of one training step of ``variant``, in bytes, in this process.

    One warm-up step first (lazy initialisation, kernel caches: one-time costs, alike for all
    variants), then ``zero_grad(set_to_none=True)`` so the baseline holds weights, data and
    optimiser but no gradients; the measured step's gradients count towards its peak.
    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: VmHWM, reset to the
    current RSS through ``/proc/self/clear_refs``; run under :data:`MALLOC_ENV` so freed memory
    leaves the RSS. Where the reset is refused the warm-up is skipped and the first step of the
    fresh process is measured instead (``"warm_up": False``).

    Returns:
        ``{"baseline": before the step, "peak": during it, "increment": peak - baseline,
        "warm_up": bool}``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        variant.train_step()
        variant.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        variant.train_step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        warm_up = True
    else:
        warm_up = _reset_peak_rss()
        if warm_up:
            variant.train_step()
            variant.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        baseline = _proc_status_bytes("VmRSS")
        if warm_up:
            _reset_peak_rss()
        variant.train_step()
        peak = _proc_status_bytes("VmHWM")
    return {"baseline": baseline, "peak": peak, "increment": peak - baseline, "warm_up": warm_up}


def _memory_child(settings: BenchSettings, name: str) -> dict[str, int | bool]:
    """:func:`step_memory` of variant ``name`` in a fresh process: this module run from the
    repository root (the same code as this process), same settings and thread count."""
    threads = settings.threads or torch.get_num_threads()
    child_settings = dataclasses.replace(settings, variants=(name,), neurons=(), threads=threads,
                                         json=None)
    command = [sys.executable, "-m", "benchmarks.bench", "--memory-child", name,
               *child_settings.argv()]
    child = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, **MALLOC_ENV})
    if child.returncode != 0:
        raise RuntimeError(f"memory child for {name!r} exited with {child.returncode} "
                           f"(negative: killed by that signal):\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure_memory(settings: BenchSettings) -> dict[str, dict[str, int | bool]]:
    """Training-step peak memory of each variant of ``settings`` (:func:`step_memory`), bytes.

    CUDA: in this process, one variant built at a time (the allocator's statistics are exact).
    CPU: each variant in a fresh child process, because RSS is per process and its peak cannot
    be attributed otherwise.
    """
    device = torch.device(settings.device)
    results = {}
    for name in _chosen_variants(settings):
        if device.type != "cuda":
            results[name] = _memory_child(settings, name)
            continue
        variant = build_variants(dataclasses.replace(settings, variants=(name,)))[name]
        results[name] = step_memory(variant, device)
        del variant
        torch.cuda.empty_cache()
    return results


def summarise(samples: Mapping[str, Mapping[str, Sequence[float]]],
              memory: Mapping[str, Mapping[str, int | bool]] | None) -> dict:
    """Medians and spreads, and the ratios of the project to every other variant.

    Returns:
        ``{"time": {variant: {phase: {"median", "min", "max"}}}, "memory": ...,
        "ratios": {"project/<variant>": {metric: ratio}}}``; a ``project:NAME`` variant's
        ratio is the other way round, ``"project:NAME/project"``: the cost of that neuron.
        Ratio metrics: ``train``, ``eval`` (of medians), ``train_min``, ``eval_min`` (of the
        fastest samples: on a machine shared with other jobs the least disturbed run is the
        better estimate of the cost), ``memory`` (of peak increments) and ``memory_absolute``
        (of absolute peaks). A ratio is ``None`` where a variant was not run or its memory not
        measured.
    """
    time_stats = {name: {phase: {"median": statistics.median(values), "min": min(values),
                                 "max": max(values)}
                         for phase, values in phases.items()}
                  for name, phases in samples.items()}

    def value(name: str, metric: str) -> float | None:
        if metric.startswith(PHASES):
            phase, _, statistic = metric.partition("_")
            return time_stats[name][phase][statistic or "median"] if name in time_stats else None
        if not memory or name not in memory:
            return None
        return memory[name]["peak" if metric == "memory_absolute" else "increment"]

    ratios = {}
    for other in (name for name in samples if name != "project"):
        numerator, denominator = ((other, "project") if other.startswith(NEURON_VARIANT)
                                  else ("project", other))
        row = ratios[f"{numerator}/{denominator}"] = {}
        for metric in (*PHASES, "train_min", "eval_min", "memory", "memory_absolute"):
            mine, theirs = value(numerator, metric), value(denominator, metric)
            row[metric] = None if mine is None or theirs is None or theirs <= 0 else mine / theirs
    return {"time": time_stats, "memory": memory, "ratios": ratios}


def machine_load() -> dict[str, Any] | None:
    """The 1-, 5- and 15-minute load averages and the CPU count, and ``busy``: the 1-minute
    load above the CPU count, i.e. more runnable threads than cores, where torch's parallel
    regions wait for descheduled threads. None where the system keeps no load average."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg(), os.cpu_count() or 1
    return {"load": list(load), "cores": cores, "busy": load[0] > cores}


def _git_state() -> str:
    """The commit, and which files of spiking/ and models/ differ from it (the code measured)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.rstrip("\n")

    try:
        changed = git("status", "--porcelain", "--", "spiking", "models").splitlines()
        commit = git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (f", uncommitted: {' '.join(line[3:] for line in changed)}" if changed else "")


def machine_info(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on, for the header and the JSON."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE).group(1)
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": f"{cpu} ({cores} cores available)",
            "torch": f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, "
                     f"{torch.get_num_interop_threads()} inter-op threads, "
                     f"{cpu_threads.describe()}",
            "python": platform.python_version(),
            "git": _git_state()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["backend"] = backends.describe(device)
    return info


def _busy_note(loads: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """Why the timings are unreliable (a load above the cores before or after the run), or None."""
    busy = {when: load for when, load in loads.items() if load and load["busy"]}
    if not busy:
        return None
    cores = next(iter(busy.values()))["cores"]
    when = " and ".join(f"{load['load'][0]:.2f} {when} the run" for when, load in busy.items())
    return (f"UNRELIABLE TIMINGS: the machine was busy (1-minute load average {when}, above its "
            f"{cores} cores); other processes slowed the variants unequally. Memory is unaffected.")


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:9.1f}"


def _ratio(ratio: float | None) -> str:
    return "      n/a" if ratio is None else f"{ratio:8.3f}x"


def _header(settings: BenchSettings, info: Mapping[str, str], ran: Sequence[str],
            loads: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The command, the machine, the settings, the variants ``ran``, and what the images and
    weights are."""
    lines = [f"command : {shlex.join([Path(sys.executable).name, *sys.argv])}"]
    lines += [f"{key:8s}: {value}" for key, value in info.items()]
    lines += [f"load    : 1/5/15-min load average {' '.join(f'{v:.2f}' for v in load['load'])} "
              f"{when} the run, {load['cores']} cores" for when, load in loads.items() if load]
    lines.append(f"settings: arch {settings.arch}, width {settings.width}, T "
                 f"{settings.time_steps}, batch {settings.batch}, device {settings.device}, "
                 f"repeats {settings.repeats}, warmup {settings.warmup}, seed {settings.seed}, "
                 f"project precision {'amp' if settings.amp else 'float32'}, project time "
                 f"chunk {settings.time_chunk or 'default'}, threshold scale "
                 f"{settings.threshold_scale}")
    absent = [name for name in peers.PEERS if settings.arch == "lenet" and name not in ran]
    lines.append(f"variants: {', '.join(ran)}" + (
        f" (not run: {', '.join(absent)}; the peers need pip install -e \".[bench]\")"
        if absent else ""))
    lines.append("images  : " + (f"{settings.batch} real MNIST test digits from {settings.data}"
                                 if settings.data else f"{settings.batch} synthetic images"))
    lines.append("weights : " + (f"checkpoint {settings.resume}" if settings.resume else
                                 "the model's initialisation (untrained)"))
    return lines


def _tables(summary: Mapping, densities: Mapping | None, unreliable: bool) -> list[str]:
    """Densities, times, memory and ratios; with ``unreliable``, every timing marked ``*``."""
    mark = " *" if unreliable else ""
    lines = []
    if densities:
        lines += ["", "project synapse inputs (one training step): layer, fraction of entries "
                      "that are spikes, chunks event-driven / dense"]
        lines += [f"  {name:14s} {row['density']:8.4f}   {row['event_chunks']:4d} / "
                  f"{row['dense_chunks']}" for name, row in densities.items()]
    wide = max(13, *map(len, summary["time"]))  # a column as wide as the longest name
    lines += ["", f"step   {'variant':{wide}s}  median ms     min ms     max ms"]
    for phase in PHASES:
        for name, phases in summary["time"].items():
            stats = phases[phase]
            lines.append(f"{phase:6s} {name:{wide}s} {stats['median'] * 1e3:10.1f} "
                         f"{stats['min'] * 1e3:10.1f} {stats['max'] * 1e3:10.1f}{mark}")
    if summary["memory"]:
        lines += ["", "training-step memory, MiB: peak above the pre-step baseline (increment), "
                      "baseline, absolute peak",
                  f"{'variant':{wide}s}  increment  baseline      peak"]
        for name, mem in summary["memory"].items():
            note = "" if mem["warm_up"] else "  (first step, no warm-up)"
            lines.append(f"{name:{wide}s} {_mib(mem['increment'])} {_mib(mem['baseline'])} "
                         f"{_mib(mem['peak'])}{note}")
    columns = {"train": "train", "eval": "eval", "train_min": "train min", "eval_min": "eval min",
               "memory": "mem incr", "memory_absolute": "mem abs"}
    lines += ["", "ratios: the project's figure over the other variant's (below 1: the project "
                  "is cheaper, 1/ratio times),",
              "a project:NAME variant's over the project's (its neuron's cost against the "
              "paper's LIF);",
              "train, eval: of medians; min: of the fastest samples; mem: of the training "
              "step's peak increment, absolute peak",
              f"{'':{wide + 9}s}" + "".join(f"{title:>11s}" for title in columns.values())]
    for key, row in summary["ratios"].items():
        cells = [_ratio(row[metric]) + ("" if metric.startswith("memory") else mark)
                 for metric in columns]
        lines.append(f"{key:{wide + 9}s}" + "".join(f"{cell:>11s}" for cell in cells))
    return lines


def report(settings: BenchSettings, info: Mapping[str, str], summary: Mapping,
           densities: Mapping[str, Mapping[str, float | int]] | None,
           loads: Mapping[str, Mapping[str, Any] | None]) -> str:
    """The printed report: header, tables, and the busy-machine note where there is one."""
    note = _busy_note(loads)
    lines = _header(settings, info, list(summary["time"]), loads)
    lines += _tables(summary, densities, unreliable=note is not None)
    if note:
        lines += ["", f"* {note}"]
    return "\n".join(lines)


def _write_json(path: Path, content: Mapping) -> None:
    """Write ``content`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(content, out, indent=2, default=str)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchSettings, str | None]:
    """The settings, and the variant a memory-measuring child measures (None: a normal run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--arch", default="lenet", choices=sorted(models.MODELS))
    add("-T", "--time-steps", type=int, default=100)
    add("-b", "--batch", type=int, default=32)
    add("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    add("--width", type=float, default=1.0,
        help="multiplies every hidden width (quick runs: e.g. 0.25)")
    add("--variants", type=lambda s: tuple(s.split(",")), default=(),
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: project,authors,ann and, "
             "for lenet, each peer whose library is installed)")
    add("--neuron", dest="neurons", type=lambda s: tuple(s.split(",")), default=(),
        help=f"comma-separated neuron classes, each timed as variant project:NAME against the "
             f"paper's LIF: {', '.join(NEURONS)}, or module:Class")
    add("--repeats", type=int, default=3, help="timed rounds (default 3)")
    add("--warmup", type=int, default=1, help="discarded rounds (default 1)")
    add("--no-memory", dest="memory", action="store_false",
        help="skip the peak-memory measurement")
    add("--seed", type=int, default=0)
    add("--amp", action="store_true", help="run the project under --amp's mixed precision")
    add("--time-chunk", type=int, default=None,
        help="the project's time steps per chunk (default: the model's choice)")
    add("--threads", type=int, default=None,
        help="torch intra-op threads (default: torch's own choice)")
    add("--data", type=Path, default=None,
        help="real MNIST digits from this folder (torchvision's MNIST/raw under it; lenet only) "
             "instead of synthetic images")
    add("--resume", default=None,
        help="start from the weights of this checkpoint (a training run's .pth.tar)")
    add("--threshold-scale", type=float, default=1.0,
        help="multiply every neuron threshold (below 1: denser spikes)")
    add("--event-density-max", type=float, default=None,
        help="the spiking core's event-driven crossover for every kind of layer (0: never "
             "event-driven, 1: whenever the input is spikes)")
    add("--json", type=Path, help="also write the results to this file")
    # A child process measuring the peak RSS of one variant's training step (CPU memory).
    add("--memory-child", help=argparse.SUPPRESS)
    args = vars(parser.parse_args(argv))
    memory_child = args.pop("memory_child")
    settings = BenchSettings(**args)
    if settings.repeats < 1 or settings.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if settings.time_steps < 1 or settings.batch < 1 or settings.width <= 0:
        parser.error("-T and -b must be at least 1 and --width positive")
    if settings.threshold_scale <= 0:
        parser.error("--threshold-scale must be positive")
    return settings, memory_child


def _check_before_work(settings: BenchSettings) -> None:
    """What can be checked before any measurement: that the packages imported are this
    repository's (else another checkout's code would be measured), and the JSON's folder."""
    imported_from = Path(models.__file__).resolve().parents[1]
    if imported_from != ROOT:
        raise UsageError(f"this script is in {ROOT} but imports the project from "
                         f"{imported_from}; to measure {ROOT}, run python -m benchmarks.bench "
                         f"in that folder, or pip install -e {ROOT}")
    if settings.json is not None:
        folder = settings.json.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UsageError(f"--json {settings.json}: {folder} is not a writable folder")


def _measure(settings: BenchSettings, variants: dict[str, Variant]) -> dict[str, Any]:
    """Time and measure ``variants``: the results :func:`report` and the JSON show."""
    info = machine_info(torch.device(settings.device))
    densities = input_densities(variants["project"]) if "project" in variants else None
    samples = time_variants(variants, settings.repeats, settings.warmup, settings.device)
    variants.clear()  # free their memory before the children measure theirs
    memory, memory_error = None, None
    if settings.memory:
        try:
            memory = measure_memory(settings)
        except RuntimeError as error:  # keep the timings of a long run when a child dies
            memory_error = str(error)
    return {"machine": info, "densities": densities, "samples": samples,
            **summarise(samples, memory), "memory_error": memory_error}


def _run(settings: BenchSettings) -> None:
    """A whole benchmark run: variants, load check, measurements, report, JSON."""
    variants = build_variants(settings)
    loads = {"before": machine_load()}
    if _busy_note(loads):
        print(f"warning: {_busy_note(loads)}", file=sys.stderr)
    results = _measure(settings, variants)
    loads["after"] = machine_load()
    note = _busy_note(loads)
    print(report(settings, results["machine"], results, results["densities"], loads))
    if settings.json:
        _write_json(settings.json, {"command": sys.argv, "settings": dataclasses.asdict(settings),
                                    "variants": list(results["samples"]), "load": loads,
                                    "reliable": note is None, "unreliable_because": note,
                                    **results})
    if results["memory_error"]:
        sys.exit(f"memory measurement failed: {results['memory_error']}")


def main(argv: Sequence[str] | None = None) -> None:
    settings, memory_child = parse_args(argv)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.event_density_max is not None:
        cpu_backend.EVENT_DENSITY_MAX = settings.event_density_max
    try:
        _check_before_work(settings)
        if memory_child:
            variant = build_variants(dataclasses.replace(settings, variants=(memory_child,)))
            print(json.dumps(step_memory(variant[memory_child], settings.device)))
            return
        _run(settings)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
