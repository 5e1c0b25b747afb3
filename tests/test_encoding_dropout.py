"""Poisson encoding and dropout held over time (docs/algorithm.md, *Input encoding*, *Dropout*)."""
import pytest
import torch

from spiking import PoissonEncoder, TimeHeldDropout
from spiking.functional import poisson_encode


def test_firing_probability_is_scaled_intensity():
    # 7 intensities x 400 pixels x T = 100 gives 40 000 draws each: binomial std <= 0.0025,
    # so 0.015 is six standard deviations.
    levels = torch.tensor([-1.0, -0.6, -0.2, 0.0, 0.3, 0.7, 1.0])
    images = levels.repeat_interleave(400).reshape(1, 7, 20, 20)
    spikes = poisson_encode(images, 100, scale=0.5, generator=torch.Generator().manual_seed(0))
    assert spikes.shape == (100, 1, 7, 20, 20)
    rate = spikes.abs().mean(dim=(0, 1, 3, 4))
    assert torch.allclose(rate, 0.5 * levels.abs(), atol=0.015)


def test_spikes_carry_the_sign_of_the_pixel_and_saturate_at_one():
    images = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    spikes = poisson_encode(images, 500, scale=1.0, generator=torch.Generator().manual_seed(1))
    assert set(spikes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (spikes[..., 0] == -1).all() and (spikes[..., 4] == 1).all()  # |a x| >= 1 always fires
    assert (spikes[..., 1] <= 0).all() and (spikes[..., 3] >= 0).all()
    assert (spikes[..., 2] == 0).all()


def test_generator_makes_draws_reproducible_and_no_gradient_reaches_images():
    images = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    a = PoissonEncoder(6, 1.0, torch.Generator().manual_seed(3))(images)
    b = PoissonEncoder(6, 1.0, torch.Generator().manual_seed(3))(images)
    assert torch.equal(a, b) and a.dtype == torch.float64
    assert not a.requires_grad


def test_encoder_rejects_zero_time_steps():
    with pytest.raises(ValueError, match="time_steps"):
        PoissonEncoder(0)


def test_dropout_mask_is_held_over_time_and_scaled():
    torch.manual_seed(0)
    drop = TimeHeldDropout(0.25).train()
    spikes = torch.ones(5, 8, 16, 16, dtype=torch.float64)
    out = drop(spikes)
    assert all(torch.equal(out[t], out[0]) for t in range(5))
    assert set(out.unique().tolist()) == {0.0, 1.0 / 0.75}
    assert abs((out[0] == 0).float().mean().item() - 0.25) < 0.03  # 2048 draws, std 0.01


def test_dropout_mask_is_held_across_chunks_until_reset():
    torch.manual_seed(0)
    drop = TimeHeldDropout(0.5).train()
    spikes = torch.ones(2, 4, 64)
    first, second = drop(spikes), drop(spikes)
    assert torch.equal(first, second)  # a later chunk of the same sequence: the same mask
    drop.reset_state()
    assert not torch.equal(drop(spikes), first)  # a new sequence: a new mask


def test_dropout_is_identity_in_eval_and_for_p_zero():
    spikes = torch.rand(3, 2, 4)
    assert TimeHeldDropout(0.5).eval()(spikes) is spikes
    assert TimeHeldDropout(0.0).train()(spikes) is spikes
    with pytest.raises(ValueError):
        TimeHeldDropout(1.0)
