"""The fused spring node equals its torch twin in value and in gradient (float64)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.particles.forces import spring_forces
from tphys.particles.spring_vjp import fused_spring_forces


@settings(max_examples=20)
@given(
    name=st.sampled_from(["pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth"]),
    seed=st.integers(0, 2**31 - 1),
    noise=st.floats(0.0, 0.02),
)
def test_fused_spring_forces_match_the_twin_in_value_and_gradient(name, seed, noise):
    env = E.make(name, num_envs=3, dtype=torch.float64, seed=seed)
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    # Noise puts some cables inside their slack ramp and some slack.
    x = td["x"] + noise * torch.randn(td["x"].shape, generator=gen, dtype=torch.float64)
    v = td["v"] + torch.randn(td["v"].shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    results = []
    for fn in (spring_forces, fused_spring_forces):
        leaves = [x.clone().requires_grad_(), v.clone().requires_grad_()]
        force = fn(env.model.springs, *leaves)
        results.append((force.detach(), *torch.autograd.grad((force * weight).sum(), leaves)))
    for twin, fused in zip(*results):
        assert torch.allclose(fused, twin, rtol=1e-10, atol=1e-10 * (1 + twin.abs().max().item()))


def test_fused_spring_gradcheck():
    env = E.make("rope3d", num_envs=2, dtype=torch.float64, seed=0)
    td = env.reset()
    x = td["x"].clone().requires_grad_()
    v = td["v"].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, v: fused_spring_forces(env.model.springs, x, v), (x, v))
