"""A new neuron for an experiment: LIF neurons with a soft reset, trained in LeNet, checked.

The paper's LIF neuron resets its membrane to 0 after a spike; a soft reset subtracts the
threshold instead, keeping the overshoot. The class below is the whole neuron: the step and the
approximate derivative. The ``cpu`` and ``triton`` backends generate their fused scans from its
methods (the first run compiles them and says so in one line; later runs find them cached).

The script trains LeNet with it for a few steps on the synthetic MNIST stand-in, then checks in
float64 that every parameter gradient equals per-step autograd through the same equations (the
``reference`` backend: one autograd node per time step), and exits 1 if one does not.

    python examples/custom_neuron.py
"""
import sys

import torch

import models
from spiking import LIFNeuron, PoissonEncoder, backends
from training.data import DATASETS, synthetic_dataset
from training.loop import spike_loss


class SoftResetLIF(LIFNeuron):
    """LIF neurons whose reset subtracts the threshold: ``m_t = l (u_t - theta s_t)``.

    Backward: the authors' rule at a spike (``NG / theta`` times the spike's gradient), but the
    membrane's path is no longer cut there, since the reset keeps the overshoot:
    ``dLoss/du_t = [s_t] (NG / theta) g_t + dLoss/dm_t``, the leak straight-through as before.
    """

    grad_only_at_spikes = True  # backward_step reads g_t only at spikes, as the authors' does

    def reset(self, potential, spikes):
        return self.leak * (potential - self.threshold * spikes)

    def backward_step(self, grad_spikes, grad_membrane, spikes, scale):
        return torch.where(spikes, scale * grad_spikes, 0.0) + grad_membrane


def train(neuron: type[LIFNeuron], steps: int = 6, time_steps: int = 20,
          batch: int = 32) -> torch.nn.Module:
    """A few SGD steps of LeNet with ``neuron`` on synthetic MNIST-like digits."""
    torch.manual_seed(0)
    images, labels = synthetic_dataset(DATASETS["mnist"], steps * batch, seed=0, train=True)[:]
    model = models.get_model("lenet", neuron=neuron)
    encoder = PoissonEncoder(time_steps, scale=0.5)
    # a neuron's own parameters (a leak's logit) train without weight decay, which would pull
    # them towards 0 (a leak of 0.5), and with a larger step than the weights
    own = [p for m in model.modules() if isinstance(m, LIFNeuron) for p in m.parameters()]
    weights = [p for p in model.parameters() if all(p is not q for q in own)]
    optimizer = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4},
                                 {"params": own, "lr": 0.5}], lr=0.0085)
    for step, (x, y) in enumerate(zip(images.split(batch), labels.split(batch)), 1):
        output = model(encoder(x))
        loss = spike_loss(output, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        correct = int((output.argmax(1) == y).sum())
        print(f"step {step}: loss {loss.item():.3f}, {correct}/{len(y)} correct", flush=True)
    return model


def gradients(model: torch.nn.Module, spikes: torch.Tensor, labels: torch.Tensor,
              backend: str) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with backends.use_backend(backend):
        spike_loss(model(spikes), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def check(neuron: type[LIFNeuron], time_steps: int = 8, batch: int = 4) -> bool:
    """Every parameter gradient of a float64 LeNet of ``neuron``, run in chunks of 3 steps on
    the default backend, against one autograd node per step on the reference backend."""
    torch.manual_seed(1)
    model = models.get_model("lenet", neuron=neuron, width=0.5).double()
    with torch.no_grad():  # enough drive that spikes reach the output within 8 steps
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.add_(0.3 * weight.std())
    model.time_chunk = 3
    images, labels = synthetic_dataset(DATASETS["mnist"], batch, seed=1, train=False)[:]
    spikes = PoissonEncoder(time_steps, scale=0.5)(images.double())
    fast = gradients(model, spikes, labels, "auto")
    stepped = gradients(model, spikes, labels, "reference")
    worst = max(float((fast[k] - stepped[k]).abs().max() / stepped[k].abs().max())
                for k in stepped)
    silent = [k for k in stepped if not stepped[k].abs().max() > 0]
    print(f"checked {len(stepped)} parameter gradients ({', '.join(stepped)}) of a float64 "
          f"LeNet with {neuron.__name__}, T={time_steps}, in chunks of 3 steps on the default "
          f"backend ({backends.describe('cpu').split(':')[0]}) against one autograd node per "
          f"step (reference backend): largest relative difference {worst:.1e}")
    if silent:
        print(f"no gradient reached {', '.join(silent)}: nothing was checked there")
    return worst <= 1e-9 and not silent


if __name__ == "__main__":
    train(SoftResetLIF)
    sys.exit(0 if check(SoftResetLIF) else 1)
