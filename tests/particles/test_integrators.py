"""Integrators against an independent ODE solver, energy and rest-state invariants, BDF2 adjoint."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from tensordict import TensorDict

import tphys.envs as E
from tphys.particles import ParticleControl, ParticleState, bdf2, kinetic_energy, potential_energy, semi_implicit_euler

# A soft cable keeps the pendulum's spring mode resolved by every dt of the sweep and the
# cable taut (stretch > slack width) throughout, where its force is k·(stretch - w/2).
ODE_PARAMS = dict(stiffness=50.0, damping=0.0, drag=0.0)
HORIZON_S = 0.5


def _pendulum_initial(model, dtype=torch.float64):
    angle, length = 0.5, 0.5
    stretch = 0.05 * 9.81 / 50.0 + 0.0005
    handle = torch.tensor([0.0, length], dtype=dtype)
    bob = handle + (length + stretch) * torch.tensor([math.sin(angle), -math.cos(angle)], dtype=dtype)
    x = torch.stack([handle, bob])[None]
    v = torch.zeros_like(x)
    v[0, 1] = torch.tensor([0.4, 0.3], dtype=dtype)
    return x, v


def _reference_trajectory(x0, v0):
    """The same ODE, written independently: m·a = k·(|r| - L - w/2)·(-r/|r|) + m·g."""
    m, k, rest, width, g = 0.05, 50.0, 0.5, 1e-3, 9.81
    anchor = x0[0, 0].numpy()

    def rhs(_, y):
        r = y[:2] - anchor
        length = np.linalg.norm(r)
        stretch = length - rest
        assert stretch > width, "cable went slack: the reference ODE would be wrong"
        a = -k * (stretch - width / 2) * r / length / m + np.array([0.0, -g])
        return np.concatenate([y[2:], a])

    y0 = np.concatenate([x0[0, 1].numpy(), v0[0, 1].numpy()])
    sol = solve_ivp(rhs, (0.0, HORIZON_S), y0, method="DOP853", rtol=1e-10, atol=1e-12)
    return sol.y[:2, -1]


def _simulate(step, model, x0, v0, dt):
    state = ParticleState.without_history(x0, v0)
    handle_velocity = torch.zeros(1, 1, 2, dtype=torch.float64)
    for _ in range(round(HORIZON_S / dt)):
        state = step(model, state, ParticleControl(handle_velocity), dt)
    return state.x[0, 1].numpy()


@pytest.mark.parametrize(
    "integrator, expected_order",
    [
        ("semi_implicit", 1.0),
        ("bdf2", 2.0),
    ],
)
def test_pendulum_converges_to_ode_reference_with_expected_order(integrator, expected_order):
    env = E.make("pendulum2d", dtype=torch.float64, **ODE_PARAMS)
    x0, v0 = _pendulum_initial(env.model)
    reference = _reference_trajectory(x0, v0)
    step = (lambda m, s, u, dt: semi_implicit_euler(m, s, u, dt, 1)) if integrator == "semi_implicit" else bdf2
    steps = [HORIZON_S / n for n in (100, 200, 400, 800)]
    errors = [np.linalg.norm(_simulate(step, env.model, x0, v0, dt) - reference) for dt in steps]
    slopes = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    print(f"\n{integrator}: dt {steps} -> errors {[f'{e:.3e}' for e in errors]} -> measured orders {[f'{s:.3f}' for s in slopes]}")
    assert all(b < a for a, b in zip(errors[:-1], errors[1:])), "error must shrink as dt halves"
    assert abs(slopes[-1] - expected_order) < 0.15, f"order {slopes[-1]:.3f}, expected {expected_order}"


@pytest.mark.parametrize(
    "name, options",
    [
        ("pendulum2d", {}),
        ("pendulum3d", {}),
        ("double_pendulum3d", {}),
        ("cable_payload2d", {}),
        ("rope3d", {}),
    ],
)
def test_undamped_system_keeps_energy_with_semi_implicit_euler(name, options):
    """Zero action, no damping or drag, default dt: the swing energy (above the rest state) stays within 1 %."""
    env = E.make(name, num_envs=4, dtype=torch.float64, seed=0, damping=0.0, drag=0.0, integrator="semi_implicit", **options)
    td = env.reset()
    state = env.read_state(td)
    energies = []
    for _ in range(env.horizon):
        energies.append(kinetic_energy(env.model, state.v) + potential_energy(env.model, state.x))
        state = _still_handles_step(env, state)
    energies = torch.stack(energies)  # [T, N]
    rest_energy = _rest_energy(env)
    swing = energies - rest_energy
    drift = ((swing - swing[0]).abs().max(0).values / swing[0]).max().item()
    print(f"\n{name}: max relative energy drift over {env.horizon} steps = {drift:.2e}")
    assert drift < 0.01


def _still_handles_step(env, state: ParticleState) -> ParticleState:
    """One step of ``env``'s configured integrator from ``state`` with a zero action (handles at rest), through the
    env protocol's ``physics_step`` (a state tensordict whose step_count says whether BDF2 history is there)."""
    n = state.x.shape[0]
    td = TensorDict(x=state.x, v=state.v, x_prev=state.x_prev, v_prev=state.v_prev, step_count=state.has_prev.long()[:, None],
                    batch_size=[n])
    return env.read_state(env.physics_step(td, torch.zeros(n, env.action_dim, dtype=state.x.dtype)))


def _rest_energy(env):
    """Energy of the hanging rest state below the handles, found by damped relaxation."""
    relax = E.make(env.task.name, num_envs=1, dtype=torch.float64, damping=2.0, drag=0.05)
    reference = relax.reference[None]
    state = ParticleState.without_history(reference, torch.zeros_like(reference))
    for _ in range(2000):
        state = _still_handles_step(relax, state)
    assert kinetic_energy(relax.model, state.v).item() < 1e-12
    return potential_energy(env.model, state.x - reference + env.reference[None]).min()


@pytest.mark.parametrize("integrator", ["semi_implicit", "bdf2"])
def test_rest_state_stays_at_rest(integrator):
    """A pendulum hanging at its static equilibrium with zero action does not move."""
    env = E.make("pendulum3d", num_envs=2, dtype=torch.float64, integrator=integrator, damping=0.0)
    sag = 0.05 * 9.81 / 500.0 + 0.0005  # k·(s - w/2) = m·g
    x = env.reference.clone()
    x[1, 1] -= sag
    state = ParticleState.without_history(x[None].repeat(2, 1, 1), torch.zeros(2, 2, 3, dtype=torch.float64))
    start = state.x.clone()
    for _ in range(env.horizon):
        state = _still_handles_step(env, state)
    assert (state.x - start).abs().max() < 1e-9
    assert state.v.abs().max() < 1e-9


@settings(max_examples=8)
@given(
    name=st.sampled_from(["pendulum2d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth"]),
    seed=st.integers(0, 2**31 - 1),
    steps=st.integers(1, 3),
)
def test_bdf2_adjoint_matches_unrolled_newton(name, seed, steps):
    _check_adjoint_matches_unrolled(name, seed, steps)


def _check_adjoint_matches_unrolled(name, seed, steps):
    env = E.make(name, num_envs=2, dtype=torch.float64, seed=seed, integrator="bdf2")
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    actions = 0.5 * (2 * torch.rand(steps, 2, env.action_dim, generator=gen, dtype=torch.float64) - 1)
    x0, v0 = td["x"], td["v"]

    def loss(adjoint, actions, x0, v0):
        state = ParticleState.without_history(x0, v0)
        total = 0.0
        for a in actions:
            hv = env.task.max_handle_speed * torch.einsum("ahd,na->nhd", env.action_basis, a)
            state = bdf2(env.model, state, ParticleControl(hv), env.dt, tol=1e-13, adjoint=adjoint)
            total = total + (state.x**2).sum() + 0.1 * (state.v**2).sum()
        return total

    grads = []
    for adjoint in (True, False):
        leaves = [t.clone().requires_grad_() for t in (actions, x0, v0)]
        grads.append(torch.autograd.grad(loss(adjoint, *leaves), leaves))
    for adjoint_grad, unrolled_grad in zip(*grads):
        assert torch.allclose(adjoint_grad, unrolled_grad, rtol=1e-8, atol=1e-8 * unrolled_grad.abs().max().item())
