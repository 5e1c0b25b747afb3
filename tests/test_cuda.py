"""The same forward and backward on CUDA as on the CPU (skipped where no GPU is present), with
the PyTorch loops (backend ``torch``) and with the Triton kernels (backend ``triton``)."""
import pytest
import torch

from spiking import IFNeuron, LIFNeuron, OutputIntegrator, PoolingNeuron, TimeHeldDropout, backends
from spiking.backends import pytorch, triton_kernels
from test_parity import build, fix_dropout_masks, input_spikes, masked_layer, mse_sum

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def skip_unless_triton_runs() -> None:
    reason = backends.unavailable("triton", torch.device("cuda"))
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("gpu_backend", ["torch", "triton"])
@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
@pytest.mark.parametrize("gpu_time_chunk", [None, 2], ids=["gpu-whole", "gpu-chunks-of-2"])
def test_cuda_matches_cpu_in_float64(arch, gpu_time_chunk, gpu_backend):
    if gpu_backend == "triton":
        skip_unless_triton_runs()
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
    with backends.use_backend(gpu_backend):
        assert backends.select(spikes.cuda()) is backends.table(gpu_backend)
        out_gpu = model(spikes.cuda())
        mse_sum(out_gpu, spikes.shape[1]).backward()

    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-9, atol=1e-12)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), grads_cpu[name], rtol=1e-9, atol=1e-12)


def run_tables(table, current, grad, scale, image_spikes, grad_pooled):
    """Every neuron kernel of ``table`` on the given CUDA tensors."""
    lif, pool = LIFNeuron(0.75, 0.95), PoolingNeuron(0.75, 2)
    out, membrane = current.clone(), torch.zeros_like(current[0])
    stats = lif.spike_stats(membrane)
    fired = torch.empty(current.shape, dtype=torch.bool, device="cuda")
    membrane = table.neuron_forward(lif, out, membrane, stats, out, fired)
    pooled_fired = torch.empty(grad_pooled.shape, dtype=torch.bool, device="cuda")
    pooled, pooled_membrane = table.pooling_forward(
        pool, image_spikes, torch.zeros_like(grad_pooled[0]), (), pooled_fired)
    image_grad, first = table.pooling_backward(pool, grad_pooled, pooled_fired, 1.0,
                                               grad_pooled[0], image_spikes.shape[-2:])
    pack = triton_kernels.pack_spikes if table is triton_kernels else pytorch.pack_spikes
    codes, code_scale = pack(out / 0.75)
    return {"spikes": out, "bool": fired, "membrane": membrane, "trace": stats[0],
            "count": stats[1], "codes": codes, "code scale": code_scale,
            "gradient": table.neuron_backward(IFNeuron(), grad, fired, scale, scale),
            "output": table.integrator_forward(OutputIntegrator(0.95), current.flatten(2),
                                               torch.zeros_like(current[0].flatten(1))),
            "pooling spikes": pooled, "pooling membrane": pooled_membrane,
            "pooling gradient": image_grad, "pooling carry": first}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_kernels_match_the_cuda_loops(dtype):
    """Each kernel against the PyTorch loop on the same GPU: the same bits are expected (no fused
    multiply-adds); float32 is held to rounding, spikes and packed codes to equality."""
    skip_unless_triton_runs()
    gen = torch.Generator(device="cuda").manual_seed(0)
    current = torch.rand((6, 4, 3, 10, 9), generator=gen, dtype=dtype, device="cuda") * 1.5
    grad = torch.randn(current.shape, generator=gen, dtype=dtype, device="cuda")
    scale = torch.rand(current.shape[1:], generator=gen, dtype=dtype, device="cuda")
    image_spikes = (current > 0.7).to(dtype)
    grad_pooled = torch.randn((6, 4, 3, 5, 4), generator=gen, dtype=dtype, device="cuda")
    results = {table.NAME: run_tables(table, current, grad, scale, image_spikes, grad_pooled)
               for table in (pytorch, triton_kernels)}
    for key, expected in results["torch"].items():
        actual = results["triton"][key]
        if dtype == torch.float64 or key in ("spikes", "bool", "codes", "count",
                                             "pooling spikes"):
            assert torch.equal(actual, expected), key
        else:
            torch.testing.assert_close(actual, expected, rtol=2e-6, atol=1e-6, msg=key)
