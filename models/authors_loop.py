"""The authors' per-time-step training loop: a literal port of their PyTorch 0.3 scripts.

Lee, Sarwar, Panda, Srinivasan, Roy (2020), "Enabling Spike-Based Backpropagation for Training Deep
Neural Network Architectures". docs/algorithm.md describes the algorithm; this module follows the
authors' code to the letter. It is not used for training: it is the oracle of the parity tests
(every network's outputs and gradients equal it in float64) and the ``authors`` baseline of
``benchmarks/bench.py``. It is deliberately slow and simple: one ``conv2d``/``linear`` call per
layer per time step, the backward pass is plain autograd through the authors' own mechanisms:

* ``SpikeFn`` (their ``SpikingNN``): forward ``input > 0``; backward passes the gradient where
  ``input > 0``.
* ``lif_step`` (their ``LIF_sNeuron``): ``F.threshold`` + hard reset by subtraction, the leak and the
  ``1/threshold`` gradient scale as ``detach()`` tricks (value unchanged, gradient straight through /
  scaled).
* ``pool_step`` (their ``Pooling_sNeuron``): integrate-and-fire on ``avg_pool2d(spikes, 2)``, threshold
  0.75, no leak, no ``1/threshold``, no leak correction.
* ``LeakCorrection`` (their ``LF_Unit`` + ``grad_cal`` + ``register_hook``): the counters ``LF`` and ``N``
  and one gradient hook per layer and step that multiplies the gradient arriving at that step's spike
  output by ``NG``, computed from the *final* ``LF`` and ``N`` after the whole forward pass.

Two deliberate, value-only deviations from the authors' literal expressions, so that the oracle's
forward values are exactly those of docs/algorithm.md (``m_t = l * r_t``, ``s_t`` in {0, 1})
rather than off by one rounding step: the detach tricks are written ``l * m.detach() + (m - m.detach())`` and
``s.detach() + (s / theta - (s / theta).detach())``. The authors wrote them without the parentheses,
``(l * m.detach() + m) - m.detach()``, whose value differs from ``l * m`` in the last bit for about half
of all ``m`` in float64. Gradients are identical either way.

Everything runs in the dtype/device of the input spikes (tests use float64).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SpikeFn",
    "lif_step",
    "pool_step",
    "output_step",
    "LeakCorrection",
    "oracle_forward",
    "ARCHS",
]


class SpikeFn(torch.autograd.Function):
    """Heaviside spike with the authors' pass-through derivative.

    Forward: ``input.gt(0)`` in ``input``'s dtype (any shape). Backward: the incoming gradient where
    ``input > 0``, else 0 (their ``grad_input[input <= 0] = 0``).
    """

    @staticmethod
    def forward(ctx, input: Tensor) -> Tensor:  # noqa: A002 - the authors' name
        ctx.save_for_backward(input)
        return input.gt(0).to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        (input,) = ctx.saved_tensors
        return grad_output.masked_fill(input <= 0, 0)


def lif_step(mem: Tensor, current: Tensor, threshold: float, leak: float) -> tuple[Tensor, Tensor]:
    """One time step of a hidden LIF neuron layer (the authors' ``LIF_sNeuron``).

    Args:
        mem: membrane ``m_{t-1}`` after the previous step's reset and leak, shape ``[B, ...]``
            (zeros at ``t = 0``).
        current: input current ``I_t``, same shape as ``mem``.
        threshold: firing threshold theta (> 0).
        leak: leak l.

    Returns:
        ``(mem, out)``: the new membrane ``m_t = l * r_t`` and the spikes ``s_t`` (values 0/1, same
        shape). ``out`` carries the gradient scale ``1/threshold``; ``mem`` carries the leak as a
        straight-through (gradient 1).
    """
    mem = mem + current                              # u_t = m_{t-1} + I_t
    ex = F.threshold(mem, threshold, 0)              # u_t where u_t > theta (strict), else 0
    mem = mem - ex                                   # hard reset: r_t
    out = SpikeFn.apply(ex)                          # s_t, gradient passes where it spiked
    # leak: value l * r_t, gradient straight through
    mem = leak * mem.detach() + (mem - mem.detach())
    # 1/theta: value s_t, gradient scaled by 1/theta
    out = out.detach() + (out / threshold - (out / threshold).detach())
    return mem, out


def pool_step(mem: Tensor, spikes: Tensor, pool_threshold: float = 0.75) -> tuple[Tensor, Tensor]:
    """One time step of a spatial-pooling IF neuron layer (the authors' ``Pooling_sNeuron``).

    Args:
        mem: membrane ``[B, C, H/2, W/2]`` (zeros at ``t = 0``).
        spikes: the (masked) spikes of the layer below, ``[B, C, H, W]``.
        pool_threshold: threshold of the pooling neuron (0.75).

    Returns:
        ``(mem, out)``, both ``[B, C, H/2, W/2]``: the membrane after the hard reset (no leak) and the
        spikes (0/1; gradient passes unscaled where it spiked).
    """
    mem = mem + F.avg_pool2d(spikes, 2)
    ex = F.threshold(mem, pool_threshold, 0)
    mem = mem - ex
    out = SpikeFn.apply(ex)
    return mem, out


def output_step(mem: Tensor, x: Tensor, weight: Tensor, leak: float) -> Tensor:
    """One time step of the non-spiking output layer fc1.

    Args:
        mem: output membrane ``[B, classes]`` (zeros at ``t = 0``).
        x: the (masked) spikes of fc0, ``[B, F]``.
        weight: fc1 weight ``[classes, F]``.
        leak: leak l.

    Returns:
        The new membrane ``l * (mem + x @ weight.T)``; the leak is straight-through for the gradient.
    """
    mem = mem + F.linear(x, weight)
    return leak * mem.detach() + (mem - mem.detach())


class LeakCorrection:
    """Leak-correction counters and NG gradient hooks of every hidden LIF layer.

    Per layer ``name`` and step, :meth:`record` updates ``LF <- leak * LF + s_t`` and ``N <- N + s_t``
    (on detached, unmasked spikes, so the counters carry no gradient) and registers a hook on that
    step's spike tensor that multiplies its incoming gradient by ``NG[name]``. :meth:`finalize`, called
    once after the last step, fills ``NG[name] = [LF > 1e-3] + ln(leak) * LF / (N + [N < 1e-3])``
    (shape ``[B, ...]`` like the spikes); the hooks look it up only when backward runs.
    """

    def __init__(self, leak: float):
        self.leak = leak
        self.LF: dict[str, Tensor] = {}
        self.N: dict[str, Tensor] = {}
        self.NG: dict[str, Tensor] = {}

    def record(self, name: str, out: Tensor) -> None:
        """Count step ``t``'s spikes ``out`` ``[B, ...]`` of layer ``name`` and hook their gradient."""
        s = out.detach()
        if name not in self.LF:
            self.LF[name] = torch.zeros_like(s)
            self.N[name] = torch.zeros_like(s)
        self.LF[name] = self.leak * self.LF[name] + s
        self.N[name] = self.N[name] + s
        if out.requires_grad:
            out.register_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[[Tensor], Tensor]:
        def hook(grad: Tensor) -> Tensor:
            return grad * self.NG[name]   # NG read at backward time: the final one
        return hook

    def finalize(self) -> None:
        """Compute NG of every recorded layer from the final counters."""
        for name, lf in self.LF.items():
            n = self.N[name]
            self.NG[name] = (lf > 1e-3).to(lf.dtype) + math.log(self.leak) * lf / (n + (n < 1e-3).to(n.dtype))


class _Net:
    """Per-call state of one oracle run: membranes per layer, masks, the leak-correction helper.

    All membranes start at zero in the input's dtype/device, shaped like the layer's first current.
    """

    def __init__(self, weights: dict[str, Tensor], masks: dict[str, Tensor] | None, leak: float,
                 threshold: float, pool_threshold: float, dtype: torch.dtype, device: torch.device):
        self.w = weights
        self.masks = masks
        self.leak = leak
        self.threshold = threshold
        self.pool_threshold = pool_threshold
        self.dtype = dtype
        self.device = device
        self.mem: dict[str, Tensor] = {}
        self.lc = LeakCorrection(leak)
        self.mem_f: Tensor | None = None

    def _zeros(self, like: Tensor) -> Tensor:
        return torch.zeros(like.shape, dtype=self.dtype, device=self.device)

    def conv(self, name: str, x: Tensor, stride: int = 1) -> Tensor:
        """``conv2d`` without bias; padding ``k // 2`` (5x5 -> 2, 3x3 -> 1, 1x1 -> 0)."""
        w = self.w[name + ".weight"]
        return F.conv2d(x, w, None, stride=stride, padding=w.shape[-1] // 2)

    def linear(self, name: str, x: Tensor) -> Tensor:
        """``linear`` without bias on ``x.reshape(B, -1)`` (C, H, W order)."""
        return F.linear(x.reshape(x.shape[0], -1), self.w[name + ".weight"])

    def hidden(self, name: str, current: Tensor) -> Tensor:
        """LIF layer ``name`` on ``current`` ``[B, ...]``: spikes, NG hook, then the dropout mask."""
        mem = self.mem.get(name)
        if mem is None:
            mem = self._zeros(current)
        mem, out = lif_step(mem, current, self.threshold, self.leak)
        self.mem[name] = mem
        self.lc.record(name, out)            # hook on the unmasked spike output
        if self.masks is not None and name in self.masks:
            out = out * self.masks[name]     # same mask at every step
        return out

    def pool(self, name: str, spikes: Tensor) -> Tensor:
        """Pooling neuron layer ``name``: ``[B, C, H, W]`` spikes -> ``[B, C, H/2, W/2]`` spikes."""
        mem = self.mem.get(name)
        if mem is None:
            mem = self._zeros(F.avg_pool2d(spikes.detach(), 2))
        mem, out = pool_step(mem, spikes, self.pool_threshold)
        self.mem[name] = mem
        return out

    def readout(self, x: Tensor) -> None:
        """Output layer fc1 on fc0's (masked) spikes ``[B, F]``."""
        w = self.w["fc1.weight"]
        if self.mem_f is None:
            self.mem_f = torch.zeros((x.shape[0], w.shape[0]), dtype=self.dtype, device=self.device)
        self.mem_f = output_step(self.mem_f, x, w, self.leak)


def _lenet_step(n: _Net, x: Tensor) -> None:
    """cnn1 -> LIF -> pool -> cnn2 -> LIF -> pool -> fc0 -> LIF -> fc1 (5x5 convs, pad 2)."""
    x = n.hidden("cnn1", n.conv("cnn1", x))
    x = n.pool("pool1", x)
    x = n.hidden("cnn2", n.conv("cnn2", x))
    x = n.pool("pool2", x)
    x = n.hidden("fc0", n.linear("fc0", x))
    n.readout(x)


def _vgg9_step(n: _Net, x: Tensor) -> None:
    """cnn11, cnn12, pool, cnn21, cnn22, pool, cnn31, cnn32, cnn33, pool, fc0, fc1 (3x3, pad 1)."""
    x = n.hidden("cnn11", n.conv("cnn11", x))
    x = n.hidden("cnn12", n.conv("cnn12", x))
    x = n.pool("pool1", x)
    x = n.hidden("cnn21", n.conv("cnn21", x))
    x = n.hidden("cnn22", n.conv("cnn22", x))
    x = n.pool("pool2", x)
    x = n.hidden("cnn31", n.conv("cnn31", x))
    x = n.hidden("cnn32", n.conv("cnn32", x))
    x = n.hidden("cnn33", n.conv("cnn33", x))
    x = n.pool("pool3", x)
    x = n.hidden("fc0", n.linear("fc0", x))
    n.readout(x)


def _resnet_step(n: _Net, x: Tensor, extra_block: bool) -> None:
    """ResNet11; with ``extra_block`` the ResNet13 block cnn61/cnn62 (identity shortcut).

    The shortcut current is added to the input current of the block's second conv neuron; the
    shortcut input is the block's input spikes (unmasked pooled spikes for block 1, the previous
    block's masked output spikes afterwards).
    """
    x = n.hidden("cnn11", n.conv("cnn11", x))
    x1 = n.pool("pool1", x)
    # block 1
    h = n.hidden("cnn21", n.conv("cnn21", x1))
    out1 = n.hidden("cnn22", n.conv("cnn22", h) + n.conv("shortcut1.0", x1))
    # block 2 (stride 2)
    h = n.hidden("cnn31", n.conv("cnn31", out1))
    out2 = n.hidden("cnn32", n.conv("cnn32", h, stride=2) + n.conv("shortcut2.0", out1, stride=2))
    # block 3
    h = n.hidden("cnn41", n.conv("cnn41", out2))
    out3 = n.hidden("cnn42", n.conv("cnn42", h) + n.conv("shortcut3.0", out2))
    # block 4 (stride 2, shortcut4 = AvgPool2d(kernel_size=1, stride=2))
    h = n.hidden("cnn51", n.conv("cnn51", out3))
    out = n.hidden("cnn52", n.conv("cnn52", h, stride=2) + F.avg_pool2d(out3, kernel_size=1, stride=2))
    if extra_block:
        # block 5 (ResNet13, our extension): stride 1, identity shortcut
        h = n.hidden("cnn61", n.conv("cnn61", out))
        out = n.hidden("cnn62", n.conv("cnn62", h) + out)
    x = n.hidden("fc0", n.linear("fc0", out))
    n.readout(x)


ARCHS: dict[str, Callable[[_Net, Tensor], None]] = {
    "lenet": _lenet_step,
    "vgg9": _vgg9_step,
    "resnet11": lambda n, x: _resnet_step(n, x, extra_block=False),
    "resnet13": lambda n, x: _resnet_step(n, x, extra_block=True),
}


def oracle_forward(arch: str, weights: dict[str, Tensor], spikes: Tensor,
                   masks: dict[str, Tensor] | None = None, leak: float = 0.99,
                   threshold: float = 1.0, pool_threshold: float = 0.75) -> Tensor:
    """Run the authors' T-step forward; autograd then gives their approximate BPTT gradients.

    Args:
        arch: ``"lenet"``, ``"vgg9"``, ``"resnet11"`` or ``"resnet13"``.
        weights: ``"<layer>.weight"`` tensors under the authors' state_dict names; widths are
            read from their shapes. No biases.
        spikes: encoded input spike train ``[T, B, C, H, W]`` (values in {-1, 0, 1}); step ``t`` uses
            ``spikes[t]``. Its dtype/device is used for all membranes.
        masks: ``{hidden LIF layer name: [B, *layer_output_shape]}`` dropout masks (values 0 or
            1/(1-p)) multiplied onto that layer's output spikes at every step; a missing key means no
            mask. ``None``: evaluation, no masks.
        leak: leak l of every LIF neuron and of the output membrane.
        threshold: threshold theta of every hidden LIF layer (and the output scale).
        pool_threshold: threshold of the pooling neurons.

    Returns:
        Output ``[B, classes]`` = ``M_T / (threshold * T)``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
    if spikes.dim() != 5:
        raise ValueError(f"spikes must be [T, B, C, H, W], got shape {tuple(spikes.shape)}")
    steps = spikes.shape[0]
    net = _Net(weights, masks, leak, threshold, pool_threshold, spikes.dtype, spikes.device)
    step = ARCHS[arch]
    for t in range(steps):
        step(net, spikes[t])
    net.lc.finalize()
    return net.mem_f / (threshold * steps)
