"""Benchmark: the project against the authors' loop and the dense-ANN cost floor.

For one network, T, batch and device this times a full training step (encode, forward, MSE-sum
loss, backward, SGD step) and an evaluation step (encode, forward, argmax, no autograd), and
measures the peak memory of a training step, for three variants that start from identical weights
and see identical images:

* ``project``: ``models.get_model(...)`` driven by ``spiking.PoissonEncoder``.
* ``authors``: ``tests/oracle.py``, the literal per-time-step port of the authors' loop; it draws
  its Poisson spikes step by step inside its own time loop and its dropout masks once per batch
  before it, like the released scripts.
* ``ann``: the dense-ANN floor (:class:`DenseFloor`): the same convolutions and linear layers
  with ReLU in place of every spiking neuron, run once on the ``T*B`` images. It is a cost floor,
  not a model: what any implementation has to compute at least.

Variants alternate (A B C A B C ...), warm-up rounds are dropped, medians are reported with the
ratios project/authors and project/ann and the targets, and the input density of every
synapse layer of the project (the fraction of its input entries that are spikes) with the path
(event-driven or dense) its chunks took. Images are synthetic, or real MNIST digits with ``--data
DIR``; weights are the model's initialisation, or a checkpoint's with ``--resume PATH``. Run
``python benchmarks/bench.py --help``; ``benchmarks/README.md`` describes the method and quotes
results.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
# The project packages live at the repository root, the authors' loop among the tests.
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import models  # noqa: E402
from oracle import ARCHS, oracle_forward  # noqa: E402
from spiking import PoissonEncoder, SpikingConv2d, SpikingLinear, backends  # noqa: E402
from spiking.backends import cpu as cpu_backend  # noqa: E402
from training.checkpoint import load_checkpoint, load_weights  # noqa: E402
from training import UsageError  # noqa: E402

__all__ = [
    "PHASES",
    "VARIANTS",
    "DenseFloor",
    "PerStepPoissonSpikes",
    "Variant",
    "build_variants",
    "input_densities",
    "measure_memory",
    "step_memory",
    "summarise",
    "time_variants",
]

VARIANTS: tuple[str, ...] = ("project", "authors", "ann")
PHASES: tuple[str, ...] = ("train", "eval")
# Small, so that repeated steps leave the weights (and with them the spike rates) where they began.
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 5e-4  # docs/algorithm.md, *Loss and optimiser*
# Input scale a (docs/algorithm.md, *Input encoding*): MNIST 0.5, CIFAR-10 and SVHN 1.
ENCODING_SCALE = {"lenet": 0.5}
# glibc keeps freed blocks above its (self-raising) mmap threshold in the heap for reuse, so after
# a warm-up step RSS would not show a step's peak; a fixed threshold returns every large block.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
# (what, phase or "memory", baseline variant, bound on project / baseline): the event-driven
# targets, set for LeNet (T 100, B 32, real digits, trained weights; VGG9 T 25 B 16: training
# <= 0.35x the authors' loop).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("training step time", "train", "authors", 0.2),
    ("evaluation step time", "eval", "authors", 0.15),
    ("peak training memory", "memory", "authors", 0.15),
    ("training step time", "train", "ann", 0.35),
)
# (arch, T, B) at which the targets are set, on the 2-core CPU at full width.
TARGET_CONFIGS = {("lenet", 100, 32), ("vgg9", 25, 16)}


@dataclass
class Variant:
    """One implementation under test: its two steps as closures over its weights and the batch.

    ``train_step()`` runs encode, forward, loss, backward and the SGD step; ``eval_step()`` returns
    the predicted classes ``[B]``.
    """

    name: str
    train_step: Callable[[], None]
    eval_step: Callable[[], Tensor]
    optimizer: torch.optim.Optimizer
    model: torch.nn.Module | None = None


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


class DenseFloor:
    """The dense-ANN cost floor: a plain ReLU network with the spiking networks' layers.

    Not a model of anything: it bounds from below what a spiking implementation must compute,
    namely every convolution and linear layer, forward and backward, on all ``T*B`` images. Its
    wiring is the authors' own (``oracle.ARCHS``, which the parity tests tie to the project's
    models), so it follows every architecture without knowing the project's internals: each
    architecture function calls the methods below once per layer, here on the whole time-folded
    batch instead of once per step. ReLU replaces each LIF neuron (followed by the dropout mask,
    held over time, in training), ``avg_pool2d(2)`` each pooling neuron, residual shortcut currents
    are added as in the original, and the output layer's currents are averaged over T.

    Args:
        arch: ``"lenet"``, ``"vgg9"``, ``"resnet11"`` or ``"resnet13"``.
        weights: ``"<layer>.weight"`` tensors under the authors' names (convolutions get padding
            ``k // 2``, strides come from the architecture function).
        time_steps: T; the input batch holds ``T*B`` images, time-major.
        dropout: p of the mask after every ReLU in training (0 = none).
    """

    def __init__(self, arch: str, weights: Mapping[str, Tensor], time_steps: int,
                 dropout: float) -> None:
        self.step = ARCHS[arch]
        self.weights = weights
        self.time_steps = time_steps
        self.dropout = dropout
        self.training = False
        self.hidden_shapes: dict[str, torch.Size] = {}
        self.output: Tensor | None = None

    def __call__(self, images: Tensor, training: bool) -> Tensor:
        """``[T*B, C, H, W]`` images (step-major) -> output ``[B, classes]``."""
        self.training = training
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


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def _synthetic_batch(arch: str, input_shape: tuple[int, ...], batch: int, classes: int,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """Images ``[B, C, H, W]`` and their one-hot targets ``[B, classes]``.

    MNIST-like in [0, 1) for LeNet, normalised-CIFAR-like N(0, 1) otherwise: the dense kernels
    that dominate every variant do not depend on the values.
    """
    shape = (batch, *input_shape)
    images = torch.rand(shape) if arch == "lenet" else torch.randn(shape)
    labels = torch.randint(classes, (batch,))
    return images.to(device), F.one_hot(labels, classes).float().to(device)


def _mnist_batch(data_dir: Path, batch: int, classes: int, device: torch.device,
                 seed: int) -> tuple[Tensor, Tensor]:
    """``batch`` real MNIST test digits ``[B, 1, 28, 28]`` in [0, 1] (as the training scripts
    see them) drawn with ``seed``, and their one-hot targets."""
    from torchvision import datasets, transforms

    try:
        digits = datasets.MNIST(str(data_dir), train=False, transform=transforms.ToTensor())
    except RuntimeError as missing:
        raise UsageError(f"no MNIST under {data_dir} ({str(missing).strip().splitlines()[0]}); "
                         "--data takes the folder holding MNIST/raw") from None
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))[:batch]
    images = torch.stack([digits[int(i)][0] for i in order])
    labels = torch.tensor([digits[int(i)][1] for i in order])
    return images.to(device), F.one_hot(labels, classes).float().to(device)


def _synapses(model: torch.nn.Module) -> dict[str, SpikingConv2d | SpikingLinear]:
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


def _project_variant(model: models.SpikingNetwork, encoder: PoissonEncoder, images: Tensor,
                     target: Tensor, amp: bool) -> Variant:
    """The project; with ``amp``, its synapses under bfloat16 autocast (what ``--amp`` runs)."""
    optimizer = _sgd(model.parameters())
    precision = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with precision:
            output = model(encoder(images))
        F.mse_loss(output.float(), target, reduction="sum").backward()
        optimizer.step()

    def eval_step() -> Tensor:
        model.eval()
        with torch.no_grad(), precision:
            return model(encoder(images)).argmax(1)

    return Variant("project", train_step, eval_step, optimizer, model)


def _authors_variant(arch: str, weights: Mapping[str, Tensor], model: models.SpikingNetwork,
                     images: Tensor, target: Tensor, time_steps: int, scale: float,
                     hidden_shapes: Mapping[str, torch.Size]) -> Variant:
    params = {name: w.clone().requires_grad_() for name, w in weights.items()}
    optimizer = _sgd(params.values())
    spikes = PerStepPoissonSpikes(images, time_steps, scale)
    neurons = {"leak": model.leak, "threshold": model.threshold,
               "pool_threshold": model.pool_threshold}
    p, batch = model.dropout, images.shape[0]

    def draw_masks() -> dict[str, Tensor] | None:
        """One ``[B, ...]`` mask per hidden LIF layer, drawn before the time loop."""
        if p == 0:
            return None
        return {name: torch.bernoulli(torch.full((batch, *shape), 1 - p, device=images.device))
                .div_(1 - p) for name, shape in hidden_shapes.items()}

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = oracle_forward(arch, params, spikes, draw_masks(), **neurons)
        F.mse_loss(out, target, reduction="sum").backward()
        optimizer.step()

    def eval_step() -> Tensor:
        with torch.no_grad():
            return oracle_forward(arch, params, spikes, None, **neurons).argmax(1)

    return Variant("authors", train_step, eval_step, optimizer)


def _ann_variant(arch: str, weights: Mapping[str, Tensor], images: Tensor, target: Tensor,
                 time_steps: int, dropout: float) -> Variant:
    params = {name: w.clone().requires_grad_() for name, w in weights.items()}
    optimizer = _sgd(params.values())
    floor = DenseFloor(arch, params, time_steps, dropout)
    # The T*B images, step-major like the project's folded batch; built once, as input data.
    repeated = images.repeat(time_steps, 1, 1, 1)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(floor(repeated, training=True), target, reduction="sum").backward()
        optimizer.step()

    def eval_step() -> Tensor:
        with torch.no_grad():
            return floor(repeated, training=False).argmax(1)

    return Variant("ann", train_step, eval_step, optimizer)


def build_variants(arch: str, time_steps: int, batch: int, device: str | torch.device = "cpu",
                   width: float = 1.0, names: Sequence[str] = VARIANTS,
                   seed: int = 0, amp: bool = False,
                   time_chunk: int | None = None, data: Path | None = None,
                   resume: str | None = None,
                   threshold_scale: float = 1.0) -> dict[str, Variant]:
    """Build the variants ``names`` from one ``models.get_model(arch, width=width)`` instance.

    All variants start from that instance's weights and share one batch of ``batch`` images at
    the model's ``input_shape`` with one-hot targets: synthetic, or real MNIST test digits from
    ``data`` (LeNet only). The seed makes a variant built alone (e.g. in a memory-measuring
    child process) identical to one built with the others. ``amp`` runs the project's synapses
    under bfloat16 autocast; the other variants stay float32. ``time_chunk`` sets the project's
    time steps per chunk (None: the model's default). ``resume`` loads the weights of that
    checkpoint (``training.checkpoint``). ``threshold_scale`` multiplies every neuron's threshold
    (hidden LIF and pooling; the output scaling too): below 1 more spikes, for measuring how the
    cost grows with spike density.

    Returns:
        ``{name: Variant}`` in the order of ``names``.
    """
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    device = torch.device(device)
    arch = arch.lower()
    torch.manual_seed(seed)
    neuron_kwargs = {}
    if threshold_scale != 1.0:
        defaults = inspect.signature(models.MODELS[arch]).parameters
        neuron_kwargs = {key: threshold_scale * defaults[key].default
                         for key in ("threshold", "pool_threshold")}
    model = models.get_model(arch, width=width, **neuron_kwargs)
    if resume:
        load_weights(model, load_checkpoint(resume), arch, resume)
    model = model.to(device)
    model.time_chunk = time_chunk
    weights = {name: w.detach().clone() for name, w in model.state_dict().items()}
    if data is not None:
        if arch != "lenet":
            raise UsageError(f"--data reads MNIST digits, for lenet only, not {arch}")
        images, target = _mnist_batch(data, batch, model.num_classes, device, seed)
    else:
        images, target = _synthetic_batch(arch, model.input_shape, batch, model.num_classes,
                                          device)
    scale = ENCODING_SCALE.get(arch, 1.0)

    # The shapes of the hidden layers' outputs, for the authors' masks: one image through the floor.
    probe = DenseFloor(arch, weights, 1, 0.0)
    with torch.no_grad():
        probe(images[:1], training=False)

    builders: dict[str, Callable[[], Variant]] = {
        "project": lambda: _project_variant(model, PoissonEncoder(time_steps, scale), images,
                                            target, amp),
        "authors": lambda: _authors_variant(arch, weights, model, images, target, time_steps,
                                            scale, probe.hidden_shapes),
        "ann": lambda: _ann_variant(arch, weights, images, target, time_steps, model.dropout),
    }
    return {name: builders[name]() for name in names}


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


def measure_memory(arch: str, time_steps: int, batch: int, device: str | torch.device = "cpu",
                   width: float = 1.0, names: Sequence[str] = VARIANTS, seed: int = 0,
                   threads: int | None = None, amp: bool = False,
                   time_chunk: int | None = None, data: Path | None = None,
                   resume: str | None = None,
                   threshold_scale: float = 1.0) -> dict[str, dict[str, int | bool]]:
    """Training-step peak memory of each variant (see :func:`step_memory`), in bytes.

    CUDA: in this process, one variant built at a time (the allocator's statistics are exact).
    CPU: each variant in a fresh child process (this script with a hidden flag), because RSS is
    per process and its peak cannot be attributed otherwise.
    """
    device = torch.device(device)
    results = {}
    for name in names:
        if device.type == "cuda":
            variant = build_variants(arch, time_steps, batch, device, width, [name], seed,
                                     amp, time_chunk, data, resume, threshold_scale)[name]
            results[name] = step_memory(variant, device)
            del variant
            torch.cuda.empty_cache()
            continue
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name,
                   "--arch", arch, "-T", str(time_steps), "-b", str(batch), "--width", str(width),
                   "--seed", str(seed), "--threads", str(threads or torch.get_num_threads())]
        command += ["--amp"] if amp else []
        command += ["--time-chunk", str(time_chunk)] if time_chunk else []
        command += ["--data", str(data)] if data is not None else []
        command += ["--resume", resume] if resume else []
        command += ["--threshold-scale", repr(threshold_scale)]
        if not isinstance(cpu_backend.EVENT_DENSITY_MAX, dict):
            command += ["--event-density-max", repr(cpu_backend.EVENT_DENSITY_MAX)]
        child = subprocess.run(command, capture_output=True, text=True,
                               env={**os.environ, **MALLOC_ENV})
        if child.returncode != 0:
            raise RuntimeError(f"memory child for {name!r} exited with {child.returncode} "
                               f"(negative: killed by that signal):\n{child.stderr}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
    return results


def summarise(samples: Mapping[str, Mapping[str, Sequence[float]]],
              memory: Mapping[str, Mapping[str, int | bool]] | None) -> dict:
    """Medians and spreads, the ratios project/authors and project/ann, and the targets.

    Returns:
        ``{"time": {variant: {phase: {"median", "min", "max"}}}, "memory": ...,
        "ratios": {"project/<baseline>": {metric: ratio}}, "targets": [{"what", "baseline",
        "bound", "ratio", "met"}]}``. Ratio metrics: ``train``, ``eval`` (of medians, which the
        targets use), ``train_min``, ``eval_min`` (of the fastest samples: on a machine shared with
        other jobs the least disturbed run is the better estimate of the cost), ``memory`` (of
        peak increments) and ``memory_absolute`` (of absolute peaks). A ratio is ``None`` where a
        variant was not run.
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
    for baseline in ("authors", "ann"):
        ratios[f"project/{baseline}"] = {}
        for metric in (*PHASES, "train_min", "eval_min", "memory", "memory_absolute"):
            mine, theirs = value("project", metric), value(baseline, metric)
            ratios[f"project/{baseline}"][metric] = (
                None if mine is None or theirs is None or theirs <= 0 else mine / theirs)
    targets = []
    for what, metric, baseline, bound in TARGETS:
        ratio = ratios[f"project/{baseline}"][metric]
        targets.append({"what": what, "baseline": baseline, "bound": bound, "ratio": ratio,
                        "met": None if ratio is None else ratio <= bound})
    return {"time": time_stats, "memory": memory, "ratios": ratios, "targets": targets}


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
    """What the numbers were measured on, for the header and the README."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE).group(1)
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": f"{cpu} ({cores} cores available)",
            "torch": f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, "
                     f"{torch.get_num_interop_threads()} inter-op threads",
            "python": platform.python_version(),
            "git": _git_state()}
    if hasattr(os, "getloadavg"):
        # Other processes on the cores matter: with more runnable threads than cores, torch's
        # parallel regions wait for descheduled threads and small per-step ops slow down tenfold.
        info["load"] = "1/5/15-min load average %.2f %.2f %.2f before the run" % os.getloadavg()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["backend"] = backends.describe(device)
    return info


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:9.1f}"


def _ratio(ratio: float | None) -> str:
    return "      n/a" if ratio is None else f"{ratio:8.3f}x"


def report(args: argparse.Namespace, info: Mapping[str, str], summary: Mapping,
           densities: Mapping[str, Mapping[str, float | int]] | None = None) -> str:
    """The printed tables: machine and settings, times, memory, ratios, targets."""
    lines = [f"command : {shlex.join([Path(sys.executable).name, *sys.argv])}"]
    lines += [f"{key:8s}: {value}" for key, value in info.items()]
    lines.append(f"settings: arch {args.arch}, width {args.width}, T {args.time_steps}, "
                 f"batch {args.batch}, device {args.device}, repeats {args.repeats}, "
                 f"warmup {args.warmup}, seed {args.seed}, variants {','.join(args.variants)}, "
                 f"project precision {'bf16 autocast' if args.amp else 'float32'}, "
                 f"project time chunk {args.time_chunk or 'default'}, "
                 f"images {args.data or 'synthetic'}, weights {args.resume or 'initialisation'}, "
                 f"threshold scale {args.threshold_scale}, event density max "
                 f"{cpu_backend.EVENT_DENSITY_MAX}")
    if densities:
        lines += ["", "project synapse inputs (one training step): layer, fraction of entries "
                      "that are spikes, chunks event-driven / dense"]
        lines += [f"  {name:14s} {row['density']:8.4f}   {row['event_chunks']:4d} / "
                  f"{row['dense_chunks']}" for name, row in densities.items()]
    lines += ["", "step   variant   median ms     min ms     max ms"]
    for phase in PHASES:
        for name, phases in summary["time"].items():
            stats = phases[phase]
            lines.append(f"{phase:6s} {name:8s} {stats['median'] * 1e3:10.1f} "
                         f"{stats['min'] * 1e3:10.1f} {stats['max'] * 1e3:10.1f}")
    if summary["memory"]:
        lines += ["", "training-step memory, MiB: peak above the pre-step baseline (increment), "
                      "baseline, absolute peak"]
        lines.append("variant   increment  baseline      peak")
        for name, mem in summary["memory"].items():
            note = "" if mem["warm_up"] else "  (first step, no warm-up)"
            lines.append(f"{name:8s} {_mib(mem['increment'])} {_mib(mem['baseline'])} "
                         f"{_mib(mem['peak'])}{note}")
    columns = {"train": "train", "eval": "eval", "train_min": "train min", "eval_min": "eval min",
               "memory": "mem incr", "memory_absolute": "mem abs"}
    lines += ["", "ratios (train, eval: of medians; min: of fastest samples; mem: of the "
                  "training step's peak increment, absolute peak)",
              f"{'':16s}" + "".join(f"{title:>11s}" for title in columns.values())]
    for key, row in summary["ratios"].items():
        lines.append(f"{key:16s}" + "".join(f"{_ratio(row[metric]):>11s}" for metric in columns))
    config = (args.arch.lower(), args.time_steps, args.batch)
    at_target = config in TARGET_CONFIGS and args.width == 1 and args.device == "cpu"
    lines += ["", "targets" + ("" if at_target else
                               " (set for LeNet T100 B32 on real digits with trained weights, "
                               "VGG9 T25 B16 training <= 0.35x, on the 2-core CPU; shown for "
                               "reference)")]
    for target in summary["targets"]:
        verdict = {None: "n/a", True: "met", False: "NOT met"}[target["met"]]
        lines.append(f"  {target['what']:21s} <= {target['bound']:.2f} x {target['baseline']:7s}"
                     f": {_ratio(target['ratio'])}  {verdict}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="lenet", choices=sorted(models.MODELS))
    parser.add_argument("-T", "--time-steps", type=int, default=100)
    parser.add_argument("-b", "--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--width", type=float, default=1.0,
                        help="multiplies every hidden width (quick runs: e.g. 0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds (default 1)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                        help="comma-separated subset of project,authors,ann")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory measurement")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", action="store_true",
                        help="run the project's synapses under bfloat16 autocast, as --amp does")
    parser.add_argument("--time-chunk", type=int, default=None,
                        help="the project's time steps per chunk (default: the model's choice)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--data", type=Path, default=None,
                        help="real MNIST digits from this folder (torchvision's MNIST/raw under "
                             "it; lenet only) instead of synthetic images")
    parser.add_argument("--resume", default=None,
                        help="start from the weights of this checkpoint (a training run's .pth.tar)")
    parser.add_argument("--threshold-scale", type=float, default=1.0,
                        help="multiply every neuron threshold (below 1: denser spikes)")
    parser.add_argument("--event-density-max", type=float, default=None,
                        help="override spiking.backends.cpu.EVENT_DENSITY_MAX for every kind of "
                             "layer (0: never event-driven, 1: whenever the input is spikes)")
    # A child process measuring the peak RSS of one variant's training step (CPU memory).
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if args.threshold_scale <= 0:
        parser.error("--threshold-scale must be positive")
    if args.data is not None and args.arch != "lenet":
        parser.error("--data reads MNIST digits: for --arch lenet only")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.event_density_max is not None:
        cpu_backend.EVENT_DENSITY_MAX = args.event_density_max
    device = torch.device(args.device)
    inputs = (args.data, args.resume, args.threshold_scale)
    try:
        if args.memory_child:
            variant = build_variants(args.arch, args.time_steps, args.batch, device, args.width,
                                     [args.memory_child], args.seed, args.amp,
                                     args.time_chunk, *inputs)[args.memory_child]
            print(json.dumps(step_memory(variant, device)))
            return
        variants = build_variants(args.arch, args.time_steps, args.batch, device, args.width,
                                  args.variants, args.seed, args.amp, args.time_chunk, *inputs)
    except UsageError as error:
        sys.exit(f"error: {error}")

    info = machine_info(device)
    densities = input_densities(variants["project"]) if "project" in variants else None
    samples = time_variants(variants, args.repeats, args.warmup, device)
    del variants
    memory, memory_error = None, None
    if args.memory:
        try:
            memory = measure_memory(args.arch, args.time_steps, args.batch, device, args.width,
                                    args.variants, args.seed, args.threads, args.amp,
                                    args.time_chunk, *inputs)
        except RuntimeError as error:  # keep the timings of a long run when a child dies
            memory_error = str(error)
    summary = summarise(samples, memory)
    print(report(args, info, summary, densities))
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "machine": info,
                                         "settings": {k: v for k, v in vars(args).items()
                                                      if k not in ("json", "memory_child")},
                                         "densities": densities, "samples": samples, **summary},
                                        indent=2, default=str))
    if memory_error:
        sys.exit(f"memory measurement failed: {memory_error}")


if __name__ == "__main__":
    main()
