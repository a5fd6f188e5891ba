"""Forces are minus the gradient of their energies; smooth ramps are C¹; safe norm is finite at 0."""

import torch
from helpers import PARTICLE_ENVS, no_damping
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.math import safe_norm
from tphys.particles.forces import potential_energy, smooth_ramp, smooth_step, total_forces

ENV_NAMES = list(PARTICLE_ENVS)


@settings(max_examples=12)
@given(name=st.sampled_from(ENV_NAMES), seed=st.integers(0, 2**31 - 1), noise=st.floats(0.0, 0.05))
def test_conservative_forces_are_minus_energy_gradient(name, seed, noise):
    env = E.make(name, num_envs=3, dtype=torch.float64, seed=seed, drag=0.0, **no_damping(name))
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    x = (td["x"] + noise * torch.randn(td["x"].shape, generator=gen, dtype=torch.float64)).requires_grad_()
    energy = potential_energy(env.model, x).sum()
    (gradient,) = torch.autograd.grad(energy, x)
    # Zero velocity: no damping or friction, every remaining force is conservative.
    force = total_forces(env.model, x.detach(), torch.zeros_like(x))
    free = env.model.free_mask[:, None]
    assert torch.allclose(force, -gradient * free, rtol=1e-9, atol=1e-9 * (1 + force.abs().max().item()))


@given(width=st.floats(1e-4, 1e-1))
def test_smooth_ramp_is_c1_and_matches_relu_away_from_zero(width):
    width_t = torch.tensor(width, dtype=torch.float64)
    s = torch.linspace(-3 * width, 3 * width, 601, dtype=torch.float64, requires_grad=True)
    ramp = smooth_ramp(s, width_t)
    (slope,) = torch.autograd.grad(ramp.sum(), s)
    assert torch.all(ramp >= 0)
    assert torch.allclose(slope, torch.clamp(s.detach() / width, 0, 1), atol=1e-12)
    far = s.detach() > width
    assert torch.allclose(ramp[far], s.detach()[far] - width / 2)
    assert torch.all(ramp[s.detach() <= 0] == 0)
    assert (slope[1:] - slope[:-1]).abs().max() <= (s[1] - s[0]).item() / width + 1e-12  # continuous slope


@given(width=st.floats(1e-4, 1e-1))
def test_smooth_step_is_c1_from_zero_to_one(width):
    width_t = torch.tensor(width, dtype=torch.float64)
    s = torch.linspace(-2 * width, 2 * width, 401, dtype=torch.float64, requires_grad=True)
    step = smooth_step(s, width_t)
    (slope,) = torch.autograd.grad(step.sum(), s)
    assert torch.all(step[s.detach() <= 0] == 0) and torch.all(step[s.detach() >= width] == 1)
    assert slope[0] == 0 and slope[-1] == 0 and torch.all(slope >= 0)
    assert (slope[1:] - slope[:-1]).abs().max() <= 6 * (s[1] - s[0]).item() / width**2 + 1e-9


def test_safe_norm_has_finite_gradient_at_zero():
    x = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(safe_norm(x).sum(), x)
    assert torch.isfinite(grad).all()
