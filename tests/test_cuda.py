"""The same forward and backward on CUDA as on the CPU (skipped where no GPU is present)."""
import pytest
import torch

from spiking import TimeHeldDropout
from test_parity import build, fix_dropout_masks, input_spikes, masked_layer, mse_sum

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
@pytest.mark.parametrize("gpu_time_chunk", [None, 2], ids=["gpu-whole", "gpu-chunks-of-2"])
def test_cuda_matches_cpu_in_float64(arch, gpu_time_chunk):
    model, gen = build(arch, seed=2)
    spikes = input_spikes(arch, gen)
    masks = fix_dropout_masks(model, gen)
    out_cpu = model(spikes)
    mse_sum(out_cpu, spikes.shape[1]).backward()
    grads_cpu = {k: p.grad.clone() for k, p in model.named_parameters()}

    model.zero_grad()
    model.cuda()
    model.time_chunk = gpu_time_chunk
    for name, module in model.named_modules():
        if isinstance(module, TimeHeldDropout) and module.p > 0:
            module.draw_mask = lambda spikes, mask=masks[masked_layer(name)]: mask.cuda()
    out_gpu = model(spikes.cuda())
    mse_sum(out_gpu, spikes.shape[1]).backward()

    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-9, atol=1e-12)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), grads_cpu[name], rtol=1e-9, atol=1e-12)
