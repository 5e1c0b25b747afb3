"""Count spikes and synaptic operations of a spiking network during inference (``--stats``);
docs/analysis.md says what is counted and what is not.

:class:`SpikeMonitor` is a context manager over a model: it registers forward hooks on entry and
removes them on exit, so a model outside the ``with`` block runs exactly as without it.

Rows are the spiking layers in the order they first fire: ``input`` (the model's first
positional argument, the Poisson spike train; -1 and +1 both count), then every
:class:`~spiking.SpikingNeuron` (the LIF, pooling and any other neurons) by module name, counted
at the neuron's output, before dropout (docs/algorithm.md, *Dropout*). Synaptic operations are
attributed to the spiking layer whose spikes cause them: a conv input at (h, w) reaches
``out_channels / groups`` times the output windows covering it (borders, padding and stride
exact), a linear input ``out_features``, an average-pool input one addition per window covering
it, an identity shortcut's input one addition; every synapse counts whatever its weight. The
equivalent ANN's operations come from shapes: ``output elements x fan_in`` MACs per conv or
linear module, ``output elements x kh x kw`` additions per average pool (one per identity
shortcut output). :meth:`SpikeMonitor.observe` counts the outputs: images no spike
reached (output exactly zero) and images classified correctly.

A network may run its T steps in chunks (``SpikingNetwork.time_chunk``), calling each layer once
per chunk: counts add up over the chunks, images are counted once per layer and forward pass,
and the raster joins the chunks of the first pass in time order.

Which layer produced a synapse's input is found from tensor storage: each spiking layer's
output storage is registered (weakly) as it is produced, and a synapse's input, or any view of
it such as ``x.flatten(2)``, is looked up by its storage. Dropout outputs in training mode inherit
their input's layer.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_input
from torch.nn.modules.utils import _pair
from torch.utils.hooks import RemovableHandle

from spiking.dropout import TimeHeldDropout
from spiking.neurons import PoolingNeuron, SpikingNeuron
from spiking.synapses import SpikingConv2d, SpikingLinear, TimeFolded

__all__ = ["INPUT", "LayerCounts", "OutputCounts", "SpikeMonitor", "SynapseCounts",
           "spiking_layer_names"]

INPUT = "input"


def spiking_layer_names(model: nn.Module) -> list[str]:
    """Names a :class:`SpikeMonitor` reports for ``model``: ``"input"``, then every spiking
    neuron module (hidden LIF, or another neuron, and pooling) in definition order."""
    return [INPUT] + [name for name, module in model.named_modules()
                      if isinstance(module, SpikingNeuron)]


@dataclass
class LayerCounts:
    """Spike counts of one spiking layer, summed over all images seen."""

    name: str  # module name, or "input" for the Poisson input
    kind: str  # "input", "lif" or "pool"
    neurons: int  # per image: C x H x W, or features
    time_steps: int = 0  # T of the last forward pass
    images: int = 0
    spikes: int = 0  # nonzero outputs over all images and time steps
    neuron_steps: int = 0  # neurons x T x images, summed over forward passes


@dataclass
class SynapseCounts:
    """Operations of one synapse module (``"cnn2"``, ``"shortcut1.0"``; a pooling neuron's
    average pool carries the neuron's name, ``"pool1"``), attributed to the spiking layer
    ``source`` whose spikes enter it."""

    name: str
    source: str
    weighted: bool  # conv and linear (ANN MACs); False: average pool or identity (additions)
    ann_ops_per_image: int  # MACs (weighted) or additions of the equivalent ANN
    snn_ac: int = 0  # accumulates caused by input spikes, summed over all images
    images: int = 0


@dataclass
class OutputCounts:
    """What :meth:`SpikeMonitor.observe` saw of the network's outputs."""

    images: int = 0
    silent: int = 0  # whole output [K] exactly zero: no spike reached the output layer
    correct: int = 0  # largest output is the label


def _add_sums(total: LayerCounts | SynapseCounts | OutputCounts,
              part: LayerCounts | SynapseCounts | OutputCounts) -> None:
    """Add ``part``'s summed fields (images, spikes, operations) to ``total``'s."""
    for name in ("images", "spikes", "neuron_steps", "snn_ac", "silent", "correct"):
        if hasattr(part, name):
            setattr(total, name, getattr(total, name) + getattr(part, name))


def _window_cover(height: int, width: int, out_hw: tuple[int, int], kernel: Any, stride: Any,
                  padding: Any, dilation: Any) -> Tensor:
    """``[H, W]`` int64: for each input position, how many output windows contain it.

    The gradient of a sum of window sums with an all-ones kernel is exactly that count, with
    padding and stride handled by the convolution's own arithmetic.
    """
    kernel = _pair(kernel)
    cover = conv2d_input((1, 1, height, width), torch.ones(1, 1, *kernel, dtype=torch.float64),
                         torch.ones(1, 1, *out_hw, dtype=torch.float64), stride=_pair(stride),
                         padding=_pair(padding), dilation=_pair(dilation))
    return cover[0, 0].round().to(torch.int64)


def _pool_window(module: nn.Module) -> tuple[Any, Any, Any]:
    """``(kernel, stride, padding)`` of a pooling neuron's or a ``TimeFolded`` average pool; an
    identity shortcut is a window of one."""
    if isinstance(module, PoolingNeuron):
        return module.kernel_size, module.kernel_size, 0
    pool = module.module
    if isinstance(pool, nn.Identity):
        return 1, 1, 0
    return pool.kernel_size, pool.stride, pool.padding


class SpikeMonitor:
    """Count spikes and synaptic operations of ``model`` while inside a ``with`` block.

    Usage::

        model.eval()
        with torch.no_grad(), SpikeMonitor(model, raster_layer="lif1") as monitor:
            for images, labels in loader:
                monitor.observe(model(encoder(images)), labels)  # observe: optional
        monitor.layers, monitor.synapses, monitor.raster, monitor.output

    Run it in eval mode for the statistics of the paper (no dropout); see the module docstring
    for exactly what is counted.

    Also usable as ``attach(model)`` ... ``detach()``, the protocol of
    ``training.loop.evaluate``'s ``monitor``.

    Args:
        model: a network whose ``forward`` takes the input spike train ``[T, B, ...]`` first
            (optional when :meth:`attach` is used instead of ``with``).
        raster_layer: name of a spiking layer (``"input"``, ``"lif1"``, ...) whose spike train
            for one image is kept in :attr:`raster`; None keeps none.
        raster_image: index of that image in the first mini-batch.

    Attributes:
        layers: ``{name: LayerCounts}`` in firing order, ``"input"`` first.
        synapses: ``{name: SynapseCounts}`` in call order.
        raster: ``[T, N]`` bool spike train of ``raster_layer`` for the chosen image, neurons
            flattened in ``[C, H, W]`` order; None until recorded.
        output: :class:`OutputCounts` of the outputs passed to :meth:`observe`.
    """

    def __init__(self, model: nn.Module | None = None, raster_layer: str | None = None,
                 raster_image: int = 0) -> None:
        self.model = model
        self.raster_layer = raster_layer
        self.raster_image = raster_image
        self.layers: dict[str, LayerCounts] = {}
        self.synapses: dict[str, SynapseCounts] = {}
        self.raster: Tensor | None = None
        self.output = OutputCounts()
        self._handles: list[RemovableHandle] = []
        # storage data_ptr -> (weak reference to that storage, spiking layer name)
        self._sources: dict[int, tuple[weakref.ref, str]] = {}
        self._cover_cache: dict[tuple, Tensor] = {}
        # names of the layers and synapses already counted in the current forward pass
        self._seen_this_pass: set[str] = set()
        self._raster_done = False

    # ------------------------------------------------------------------ hooks on and off

    def attach(self, model: nn.Module) -> None:
        """Start counting on ``model``: register the forward hooks."""
        if self._handles:
            raise RuntimeError("SpikeMonitor is already attached")
        self.model = model
        self._cover_cache.clear()  # keyed by module id, which another model may reuse
        self._handles.append(model.register_forward_pre_hook(self._on_model_input))
        for name, module in model.named_modules():
            if isinstance(module, PoolingNeuron):
                # both a synapse (the average pool of its input) and a spiking layer
                self._hook(module, self._synapse_hook(name, weighted=False))
                self._hook(module, self._layer_hook(name, "pool"))
            elif isinstance(module, SpikingNeuron):  # a hidden layer: the LIF, or a new neuron
                self._hook(module, self._layer_hook(name, "lif"))
            elif isinstance(module, TimeHeldDropout):
                self._hook(module, self._on_dropout)
            elif isinstance(module, (SpikingConv2d, SpikingLinear)):
                self._hook(module, self._synapse_hook(name, weighted=True))
            elif isinstance(module, TimeFolded) and isinstance(module.module,
                                                               (nn.AvgPool2d, nn.Identity)):
                if getattr(module.module, "ceil_mode", False):
                    self.detach()
                    raise ValueError(f"{name}: AvgPool2d with ceil_mode is not supported")
                self._hook(module, self._synapse_hook(name, weighted=False))

    def detach(self) -> None:
        """Stop counting: remove every hook (the counts stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._sources.clear()

    @torch.no_grad()
    def observe(self, output: Tensor, target: Tensor) -> None:
        """Count the network's ``[B, K]`` ``output`` for labels ``target`` ``[B]``: silent
        (all zero) and correctly classified images, into :attr:`output`."""
        self.output.images += output.shape[0]
        self.output.silent += int((output == 0).all(dim=1).sum())
        self.output.correct += int((output.argmax(dim=1) == target).sum())

    def counts(self) -> tuple[dict[str, LayerCounts], dict[str, SynapseCounts], OutputCounts]:
        """The counts alone (picklable): what :meth:`add` takes, e.g. from another DDP rank."""
        return self.layers, self.synapses, self.output

    def add(self, counts: tuple[dict[str, LayerCounts], dict[str, SynapseCounts],
                                OutputCounts]) -> None:
        """Add another monitor's :meth:`counts` (its share of the test set) to these; the
        raster stays this monitor's."""
        layers, synapses, output = counts
        for mine, theirs in ((self.layers, layers), (self.synapses, synapses)):
            for name, part in theirs.items():
                if name in mine:
                    _add_sums(mine[name], part)
                else:
                    mine[name] = part
        _add_sums(self.output, output)

    def __enter__(self) -> SpikeMonitor:
        if self.model is None:
            raise ValueError("SpikeMonitor needs a model to be used as a context manager")
        self.attach(self.model)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def _hook(self, module: nn.Module, hook) -> None:
        self._handles.append(module.register_forward_hook(hook))

    # ------------------------------------------------------------------ spike sources

    def _on_model_input(self, module: nn.Module, args: tuple) -> None:
        # A new forward pass: storages of the previous one may be reused.
        self._sources.clear()
        self._seen_this_pass.clear()
        self._raster_done = self.raster is not None
        self._record_layer(INPUT, "input", args[0])

    def _layer_hook(self, name: str, kind: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self._record_layer(name, kind, output)
        return hook

    def _on_dropout(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if output is not args[0]:  # training mode: the masked spikes belong to the same layer
            self._register_source(output, self._source_of(args[0], type(module).__name__))

    @torch.no_grad()
    def _record_layer(self, name: str, kind: str, spikes: Tensor) -> None:
        """Count ``spikes`` ``[T, B, ...]`` for layer ``name`` and register it as a source."""
        time_steps, batch = spikes.shape[:2]
        layer = self.layers.get(name)
        if layer is None:
            layer = self.layers[name] = LayerCounts(name, kind, spikes[0, 0].numel())
        if self._first_call_this_pass(name):
            layer.time_steps = 0
            layer.images += batch
        layer.time_steps += time_steps
        layer.spikes += int(torch.count_nonzero(spikes))
        layer.neuron_steps += spikes.numel()
        if name == self.raster_layer and not self._raster_done and self.raster_image < batch:
            steps = (spikes[:, self.raster_image].reshape(time_steps, -1) != 0).cpu()
            self.raster = steps if self.raster is None else torch.cat([self.raster, steps])
        self._register_source(spikes, name)

    def _first_call_this_pass(self, name: str) -> bool:
        """True once per forward pass for each layer or synapse: it may be called per chunk."""
        first = name not in self._seen_this_pass
        self._seen_this_pass.add(name)
        return first

    def _register_source(self, spikes: Tensor, name: str) -> None:
        storage = spikes.untyped_storage()
        self._sources[storage.data_ptr()] = (weakref.ref(storage), name)

    def _source_of(self, spikes: Tensor, consumer: str) -> str:
        storage = spikes.untyped_storage()
        entry = self._sources.get(storage.data_ptr())
        if entry is None or entry[0]() is not storage:
            raise RuntimeError(f"SpikeMonitor: the input of {consumer!r} is not the output of a "
                               "monitored spiking layer (or a view of one)")
        return entry[1]

    # ------------------------------------------------------------------ synaptic operations

    def _synapse_hook(self, name: str, weighted: bool):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self._record_synapse(name, module, weighted, args[0], output)
        return hook

    @torch.no_grad()
    def _record_synapse(self, name: str, module: nn.Module, weighted: bool, spikes: Tensor,
                        output: Tensor) -> None:
        """Count the ACs of ``spikes`` ``[T, B, ...]`` entering ``module`` (output ``[T, B, ...]``).
        """
        source = self._source_of(spikes, name)
        entry = self.synapses.get(name)
        if entry is None:
            entry = self.synapses[name] = SynapseCounts(
                name, source, weighted, self._ann_ops_per_image(module, output))
        if self._first_call_this_pass("synapse " + name):
            entry.images += spikes.shape[1]
        if isinstance(module, SpikingLinear):
            entry.snn_ac += int(torch.count_nonzero(spikes)) * module.out_features
            return
        fan_out = self._fan_out(module, tuple(spikes.shape[-2:]), tuple(output.shape[-2:]))
        if fan_out.min() == fan_out.max():
            # every position reaches as many synapses (e.g. 2x2 pooling of an even map): a plain
            # count, much cheaper than the per-position reduction over a full-resolution layer
            entry.snn_ac += int(torch.count_nonzero(spikes)) * int(fan_out[0, 0])
        else:
            # spikes per input position (h, w), over time, batch and channels, times fan-out
            per_position = (spikes != 0).sum(dim=(0, 1, 2))
            entry.snn_ac += int((per_position * fan_out.to(per_position.device)).sum())

    def _fan_out(self, module: nn.Module, in_hw: tuple[int, int],
                 out_hw: tuple[int, int]) -> Tensor:
        """``[H, W]`` int64: synapses one input spike at (h, w) reaches in ``module``."""
        key = (id(module), in_hw, out_hw)
        if key not in self._cover_cache:
            if isinstance(module, SpikingConv2d):
                cover = _window_cover(*in_hw, out_hw, module.kernel_size, module.stride,
                                      module.padding, module.dilation)
                self._cover_cache[key] = cover * (module.out_channels // module.groups)
            else:
                self._cover_cache[key] = _window_cover(*in_hw, out_hw, *_pool_window(module), 1)
        return self._cover_cache[key]

    @staticmethod
    def _ann_ops_per_image(module: nn.Module, output: Tensor) -> int:
        """MACs (conv, linear) or additions (average pool) of the equivalent ANN per image."""
        outputs_per_image = output[0, 0].numel()
        if isinstance(module, (SpikingConv2d, SpikingLinear)):
            return outputs_per_image * module.weight[0].numel()
        kernel_h, kernel_w = _pair(_pool_window(module)[0])
        return outputs_per_image * kernel_h * kernel_w
