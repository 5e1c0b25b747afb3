"""The same forward and backward on CUDA as on the CPU (skipped where no GPU is present), with
the PyTorch loops (backend ``torch``) and with the Triton kernels (backend ``triton``)."""
import pytest
import torch

from spiking import TimeHeldDropout, backend, triton_kernels
from spiking import functional as SF
from spiking.synapses import compact_spikes
from test_parity import build, fix_dropout_masks, input_spikes, masked_layer, mse_sum

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]



def skip_unless_compiled_triton() -> None:
    """Checked when a test runs, not at collection: importing the kernels earlier would decide
    before tests/test_triton.py sets TRITON_INTERPRET for its own tests."""
    if not triton_kernels.available():
        pytest.skip("needs triton")
    if triton_kernels._interpreting():
        pytest.skip("triton runs in its interpreter here (TRITON_INTERPRET=1): run this file "
                    "on its own to test the compiled kernels")



@pytest.mark.parametrize("gpu_backend", ["torch", "triton"])
@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
@pytest.mark.parametrize("gpu_time_chunk", [None, 2], ids=["gpu-whole", "gpu-chunks-of-2"])
def test_cuda_matches_cpu_in_float64(arch, gpu_time_chunk, gpu_backend):
    if gpu_backend == "triton":
        skip_unless_compiled_triton()
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
    with backend.use_backend(gpu_backend):
        assert backend.backend_for("cuda") == gpu_backend
        out_gpu = model(spikes.cuda())
        mse_sum(out_gpu, spikes.shape[1]).backward()

    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-9, atol=1e-12)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), grads_cpu[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_kernels_match_the_cuda_loops(dtype):
    """Each kernel against the PyTorch loop on the same GPU: the same bits are expected (no fused
    multiply-adds); float32 is held to rounding, spikes and packed codes to equality."""
    skip_unless_compiled_triton()
    gen = torch.Generator(device="cuda").manual_seed(0)
    current = torch.rand((6, 4, 3, 10, 9), generator=gen, dtype=dtype, device="cuda") * 1.5
    grad = torch.randn(current.shape, generator=gen, dtype=dtype, device="cuda")
    scale = torch.rand(current.shape[1:], generator=gen, dtype=dtype, device="cuda")
    image_spikes = (current > 0.7).to(dtype)
    grad_pooled = torch.randn((6, 4, 3, 5, 4), generator=gen, dtype=dtype, device="cuda")
    results = {}
    for name in ("torch", "triton"):
        with backend.use_backend(name):
            image = image_spikes.clone().requires_grad_()
            pooled = SF.pooling_neuron(image, 0.75, 2)
            pooled.backward(grad_pooled)
            membrane = torch.zeros_like(current[0])
            sums = (torch.zeros_like(membrane), torch.zeros_like(membrane))
            fired = torch.empty(current.shape, dtype=torch.bool, device="cuda")
            spikes = SF.lif_scan(current, 0.75, 0.95, membrane=membrane, spikes_out=fired,
                                 spike_sums=sums)
            codes, code_scale = compact_spikes(spikes / 0.75)
            results[name] = {
                "spikes": spikes, "bool": fired, "membrane": membrane, "trace": sums[0],
                "count": sums[1], "codes": codes, "code scale": code_scale,
                "gradient": SF.spike_gradient_scan(grad, fired, scale, carry=scale),
                "pooled": SF._average_pool(current, 2),
                "output": SF.output_integrator(current.flatten(2), 0.95, 1.25),
                "pooling spikes": pooled, "pooling gradient": image.grad}
    for key, expected in results["torch"].items():
        actual = results["triton"][key]
        if dtype == torch.float64 or key in ("spikes", "bool", "codes", "count",
                                             "pooling spikes"):
            assert torch.equal(actual, expected), key
        else:
            torch.testing.assert_close(actual, expected, rtol=2e-6, atol=1e-6, msg=key)
