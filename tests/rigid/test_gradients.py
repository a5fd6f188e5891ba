"""Gradients of rigid-body rollouts: autograd against central finite differences (float64), with and
without ground contact, and finite gradients over H = 32 frames of batched ant rollouts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.rigid import RigidControl, RigidState, forward_kinematics, load_mjcf, model_path, step
from tphys.rigid.contact import contact_points

_MODELS = {}


def model(name):
    if name not in _MODELS:
        _MODELS[name] = load_mjcf(model_path(name))
    return _MODELS[name]


def start_state(name, generator, n=1):
    m = model(name)
    q = m.q0.expand(n, -1).clone()
    if name == "ant":  # gymnasium's init_qpos: legs bent down, torso low enough for the feet to touch
        q[:, 2] = 0.62
        q[:, 7:] = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0], dtype=q.dtype)
    if name == "hopper":
        q[:, 1] = 1.25  # rootz (ref 1.25): feet at the ground
    q = q + 0.05 * torch.randn(q.shape, generator=generator, dtype=q.dtype)
    height = {"ant": 2, "hopper": 1}.get(name)
    if height is not None:  # lowest contact point 1 cm into the ground: contact is active from the first substep
        _, depth = contact_points(m, forward_kinematics(m, q))
        q[:, height] -= depth.min(1).values + 0.01
    qd = 0.3 * torch.randn(n, m.nv, generator=generator, dtype=q.dtype)
    return q, qd


def rollout_value(name, q, qd, controls, contact, substeps):
    m = model(name)
    state = RigidState(q, qd)
    for u in controls:
        state = step(m, state, RigidControl(u), 1 / 60, substeps=substeps, contact=contact)
    weights = torch.linspace(0.5, 1.5, m.nq, dtype=q.dtype)
    return (state.q * weights).sum() + 0.1 * state.qd.sum()


@pytest.mark.parametrize("name,contact", [("cartpole", False), ("hopper", False), ("hopper", True), ("ant", True),
                                          ("humanoid", False)])
@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1))
def test_autograd_matches_finite_differences(name, contact, seed):
    g = torch.Generator().manual_seed(seed)
    m = model(name)
    q, qd = start_state(name, g)
    frames = 3
    controls = torch.empty(frames, 1, m.num_actuators, dtype=torch.float64).uniform_(-0.8, 0.8, generator=g)
    inputs = [qd.clone().requires_grad_(), controls.clone().requires_grad_()]
    value = rollout_value(name, q, inputs[0], inputs[1], contact, substeps=4)
    grads = torch.autograd.grad(value, inputs)
    eps = 1e-6
    for x, grad in zip((qd, controls), grads):
        direction = torch.randn(x.shape, generator=g, dtype=x.dtype)
        args = [qd, controls]
        idx = 0 if x is qd else 1
        plus, minus = list(args), list(args)
        plus[idx], minus[idx] = x + eps * direction, x - eps * direction
        fd = (rollout_value(name, q, *plus, contact, 4) - rollout_value(name, q, *minus, contact, 4)) / (2 * eps)
        ad = (grad * direction).sum()
        assert torch.isfinite(ad)
        assert abs(ad - fd) <= 1e-5 * max(abs(fd), 1.0), (name, contact, ad.item(), fd.item())


def test_finite_gradients_over_long_horizon():
    """H = 32 frames of 16 substeps, N = 64 ants from random states with ground contact (the acceptance setting)."""
    m = model("ant").to(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    q, qd = start_state("ant", g, n=64)
    controls = torch.empty(32, 64, 8).uniform_(-1, 1, generator=g).requires_grad_()
    state = RigidState(q.float(), qd.float())
    for u in controls:
        state = step(m, state, RigidControl(u), 1 / 60, substeps=16, recompute=True)
    state.q[:, 0].sum().backward()
    assert torch.isfinite(controls.grad).all() and controls.grad.abs().sum() > 0


def test_recompute_gives_the_same_gradients():
    m = model("hopper")
    g = torch.Generator().manual_seed(1)
    q, qd = start_state("hopper", g, n=4)
    controls = torch.empty(5, 4, 3, dtype=torch.float64).uniform_(-1, 1, generator=g)
    grads = []
    for recompute in (False, True):
        u = controls.clone().requires_grad_()
        state = RigidState(q, qd)
        for frame in u:
            state = step(m, state, RigidControl(frame), 1 / 60, substeps=8, recompute=recompute)
        grads.append(torch.autograd.grad(state.q.sum() + state.qd.square().sum(), u)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
