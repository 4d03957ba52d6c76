"""The flow-matching math against hand-computed values (docs/hunyuan_video.md)."""

from __future__ import annotations

import math

import pytest
import torch

from hv_tune.diffusion import (
    add_noise,
    euler_step,
    flow_matching_loss,
    flow_target,
    guidance_tensor,
    loss_weights,
    sample_sigmas,
    shift_sigmas,
    timesteps_from_sigmas,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_noising_and_target_sign():
    x0, noise = torch.full((2, 3), 2.0), torch.full((2, 3), -1.0)
    sigma = torch.tensor([0.25, 1.0])
    xt = add_noise(x0, noise, sigma)
    assert torch.allclose(xt[0], torch.full((3,), 0.75 * 2.0 + 0.25 * -1.0))
    assert torch.allclose(xt[1], noise[1])
    v = flow_target(x0, noise)
    assert torch.allclose(v, noise - x0)  # v = noise - x0, not x0 - noise
    # a step along v from sigma to 0 lands on x0: x_t + v * (0 - sigma) = x0
    assert torch.allclose(euler_step(xt[0], v[0], 0.25, 0.0), x0[0])


def test_timestep_and_guidance_scale():
    assert torch.allclose(timesteps_from_sigmas(torch.tensor([0.5, 0.001])), torch.tensor([500.0, 1.0]))
    assert torch.equal(guidance_tensor(1.0, 2), torch.tensor([1000.0, 1000.0]))
    assert torch.equal(guidance_tensor(6.0, 1), torch.tensor([6000.0]))


def test_shift_formula():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_sigmas(s, 3.0), 3 * s / (1 + 2 * s))
    assert shift_sigmas(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)
    assert torch.equal(shift_sigmas(s, 1.0), s)


def test_sigma_sampling_distributions():
    u = sample_sigmas(200_000, "uniform", gen())
    assert 0 < u.min() and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=0.005)
    ln = sample_sigmas(200_000, "logit_normal", gen(), logit_mean=0.0, logit_std=1.0)
    assert ln.median().item() == pytest.approx(0.5, abs=0.005)
    assert ln.std().item() < u.std().item()  # concentrated in the middle
    logits = torch.log(ln / (1 - ln))
    assert logits.std().item() == pytest.approx(1.0, abs=0.01)
    shifted = sample_sigmas(200_000, "logit_normal", gen(), logit_mean=0.0, logit_std=1.0, shift=3.0)
    assert shifted.median().item() == pytest.approx(0.75, abs=0.005)  # shift(0.5, 3) = 0.75
    moved = sample_sigmas(200_000, "logit_normal", gen(), logit_mean=1.0)
    assert moved.median().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.005)


def test_sigma_sampling_is_a_function_of_the_generator():
    assert torch.equal(sample_sigmas(8, "uniform", gen(3)), sample_sigmas(8, "uniform", gen(3)))
    assert not torch.equal(sample_sigmas(8, "uniform", gen(3)), sample_sigmas(8, "uniform", gen(4)))
    with pytest.raises(ValueError, match="cosine"):
        sample_sigmas(1, "cosine", gen())


def test_loss_weights_known_values():
    s = torch.tensor([0.5])
    assert loss_weights(s, "none").item() == 1.0
    assert loss_weights(s, "sigma_sqrt").item() == pytest.approx(4.0)
    assert loss_weights(s, "cosmap").item() == pytest.approx(2 / (math.pi * 0.5))
    assert loss_weights(s, "logit_normal").item() == pytest.approx(4 / math.sqrt(2 * math.pi), rel=1e-6)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "cosmap"])
def test_density_weights_integrate_to_one(scheme):
    u = torch.linspace(0, 1, 200_001, dtype=torch.float64)[1:-1]
    w = loss_weights(u, scheme).double()
    assert torch.trapezoid(w, u).item() == pytest.approx(1.0, abs=2e-3)


def test_mode_density_matches_sd3_sampling_histogram():
    # SD3 mode sampling: t = 1 - u - s * (cos(pi u / 2)^2 - 1 + u); compare its histogram to the weight
    scale = 1.29
    u = torch.rand(2_000_000, generator=gen(), dtype=torch.float64)
    t = 1 - u - scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    hist = torch.histc(t, bins=20, min=0, max=1) / (len(t) * 0.05)
    centers = torch.arange(20, dtype=torch.float64) * 0.05 + 0.025
    assert torch.allclose(loss_weights(centers, "mode", scale).double(), hist, rtol=0.03)


def test_logit_normal_weight_is_importance_weighting():
    # E_uniform[w(s) f(s)] == E_logit_normal[f(s)] for a test function f
    def f(s):
        return (s - 0.3) ** 2

    u = sample_sigmas(1_000_000, "uniform", gen(1), eps=1e-6).double()
    ln = sample_sigmas(1_000_000, "logit_normal", gen(2), eps=1e-6).double()
    weighted = (loss_weights(u, "logit_normal").double() * f(u)).mean().item()
    assert weighted == pytest.approx(f(ln).mean().item(), rel=0.01)


def test_weighted_mse():
    pred, target = torch.zeros(2, 4), torch.ones(2, 4)
    target[1] *= 2
    assert flow_matching_loss(pred, target, torch.tensor([1.0, 1.0])).item() == pytest.approx(2.5)
    assert flow_matching_loss(pred, target, torch.tensor([2.0, 0.0])).item() == pytest.approx(1.0)
