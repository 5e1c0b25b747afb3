"""The same forward and backward on CUDA as on the CPU (skipped where no GPU is present), with
the PyTorch loops (backend ``torch``), the Triton kernels (``triton``) and the loops replayed as
CUDA graphs (``graphs``)."""
import pytest
import torch

from spiking import LIFNeuron, OutputIntegrator, PoolingNeuron, TimeHeldDropout, backends
from spiking.backends import cuda_graphs, pytorch, triton_kernels
from test_parity import build, fix_dropout_masks, input_spikes, masked_layer, mse_sum

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def skip_unless_triton_runs() -> None:
    reason = backends.unavailable("triton", torch.device("cuda"))
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("gpu_backend", ["torch", "triton", "graphs"])
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
    membrane, saved = table.neuron_forward(lif, out, membrane, stats, out, True)
    gradient, _ = table.neuron_backward(lif, saved, grad, scale, scale)
    pooled = table.average_pool(image_spikes, 2)
    pooled_membrane, pooled_saved = table.neuron_forward(
        pool, pooled, torch.zeros_like(pooled[0]), (), pooled, True)
    pooled_grad, _ = table.neuron_backward(pool, pooled_saved, grad_pooled, 1.0,
                                           torch.zeros_like(grad_pooled[0]))
    codes, code_scale = (triton_kernels if table is triton_kernels else pytorch).pack_spikes(
        out / 0.75)
    return {"spikes": out, "bool": saved.kept, "membrane": membrane, "trace": stats[0],
            "count": stats[1], "codes": codes, "code scale": code_scale, "gradient": gradient,
            "output": table.integrator_forward(OutputIntegrator(0.95), current.flatten(2),
                                               torch.zeros_like(current[0].flatten(1))),
            "pooling spikes": pooled, "pooling membrane": pooled_membrane,
            "pooling gradient": table.average_pool_backward(pooled_grad, 2,
                                                            image_spikes.shape[-2:])}


@pytest.mark.parametrize("fast", [triton_kernels, cuda_graphs], ids=lambda table: table.NAME)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_kernels_match_the_cuda_loops(dtype, fast):
    """Each kernel of the Triton table and of the replayed graphs against the PyTorch loop on
    the same GPU: the same bits are expected (no fused multiply-adds); float32 is held to
    rounding, spikes and packed codes to equality."""
    if fast is triton_kernels:
        skip_unless_triton_runs()
    gen = torch.Generator(device="cuda").manual_seed(0)
    current = torch.rand((6, 4, 3, 10, 9), generator=gen, dtype=dtype, device="cuda") * 1.5
    grad = torch.randn(current.shape, generator=gen, dtype=dtype, device="cuda")
    scale = torch.rand(current.shape[1:], generator=gen, dtype=dtype, device="cuda")
    image_spikes = (current > 0.7).to(dtype)
    grad_pooled = torch.randn((6, 4, 3, 5, 4), generator=gen, dtype=dtype, device="cuda")
    results = {table.NAME: run_tables(table, current, grad, scale, image_spikes, grad_pooled)
               for table in (pytorch, fast)}
    for key, expected in results["torch"].items():
        actual = results[fast.NAME][key]
        if dtype == torch.float64 or key in ("spikes", "bool", "codes", "count",
                                             "pooling spikes"):
            assert torch.equal(actual, expected), key
        else:
            torch.testing.assert_close(actual, expected, rtol=2e-6, atol=1e-6, msg=key)
