"""Newton's globalisation: the incremental potential and the restart from its minimiser."""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import PARTICLE_ENVS, no_damping, summed_reward
from hypothesis import given, settings
from hypothesis import strategies as st

import tphys.envs as E
from tphys.particles import implicit
from tphys.particles.forces import total_forces
from tphys.particles.integrators import _bdf_kinematics, _incremental_potential, bdf2, handle_velocity_field
from tphys.particles.model import ParticleControl, ParticleState

ENV_NAMES = list(PARTICLE_ENVS)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(ENV_NAMES), seed=st.integers(0, 2**31 - 1), history=st.booleans())
def test_incremental_potential_gradient_is_the_scaled_conservative_residual(name, seed, history):
    """dE/dy = (m/dt)·G for every free coordinate when nothing dissipates but drag."""
    env = E.make(name, num_envs=2, dtype=torch.float64, seed=seed, drag=0.03, **no_damping(name))
    model, dt = env.model, env.dt
    td = env.reset()
    gen = torch.Generator().manual_seed(seed)
    x_n, v_n = td["x"], td["v"]
    x_p = x_n - dt * v_n + 0.01 * torch.randn(x_n.shape, generator=gen, dtype=torch.float64)
    v_p = v_n + 0.1 * torch.randn(v_n.shape, generator=gen, dtype=torch.float64)
    coefficients = torch.tensor([1.5, -2.0, 0.5] if history else [1.0, -1.0, 0.0], dtype=torch.float64).expand(2, 3)
    u = handle_velocity_field(model, 0.1 * torch.randn(2, model.handle_index.numel(), x_n.shape[-1], generator=gen, dtype=torch.float64))
    free = torch.einsum("fp,npd->nfd", model.free_scatter, x_n + dt * v_n)
    y = (free + 0.01 * torch.randn(free.shape, generator=gen, dtype=torch.float64)).reshape(2, -1).requires_grad_()

    x, v = _bdf_kinematics(model, y, x_n, x_p, u, coefficients, dt)
    (gradient,) = torch.autograd.grad(_incremental_potential(model, x, v, v_n, v_p, coefficients, dt).sum(), y)
    with torch.no_grad():
        c0, c1, c2 = (coefficients[:, k, None, None] for k in range(3))
        g = c0 * v + c1 * v_n + c2 * v_p - dt * total_forces(model, x, v) / model.mass.unsqueeze(-1)
        scaled = torch.einsum("fp,npd->nfd", model.free_scatter, model.mass[:, None] / dt * g).reshape(2, -1)
    assert torch.allclose(gradient, scaled, rtol=1e-9, atol=1e-9 * scaled.abs().max().item())


def test_minimize_energy_escapes_a_maximum_of_a_double_well():
    """Projected Newton from the top of E = (y² - 1)² reaches a minimum; plain Newton on E' would stay."""
    energy = lambda y: ((y**2 - 1) ** 2).sum(-1)  # noqa: E731
    start = torch.tensor([[1e-3, -2e-3], [0.5, 3.0]], dtype=torch.float64)
    found = implicit.minimize_energy(energy, start, max_iter=50)
    assert torch.allclose(found.abs(), torch.ones_like(found), atol=1e-10)


def test_cloth_bdf2_converges_where_plain_newton_stalls(monkeypatch):
    """A buckling first step (seed 11, env 1) where Newton on |G| stalls at |G| ~ 0.65 m/s."""
    env = E.make("cloth", num_envs=2, dtype=torch.float64, seed=11)
    td = env.reset()
    gen = torch.Generator().manual_seed(11)
    action = 0.5 * (2 * torch.rand(3, 2, env.action_dim, generator=gen, dtype=torch.float64) - 1)[0]
    handle_velocity = env.task.max_handle_speed * torch.einsum("ahd,na->nhd", env.action_basis, action)
    state = ParticleState.without_history(td["x"], td["v"])

    with monkeypatch.context() as patch:  # the solver without its restart, for contrast
        patch.setattr(implicit, "globalized_newton", lambda fn, y0, tol, max_iter, energy=None: implicit.newton(fn, y0, tol, max_iter))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bdf2(env.model, state, ParticleControl(handle_velocity), env.dt, tol=1e-12)
        assert any("Newton stopped" in str(w.message) for w in caught), "the stall this test guards against is gone"

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        bdf2(env.model, state, ParticleControl(handle_velocity), env.dt, tol=1e-12)


@pytest.mark.parametrize("integrator", ["semi_implicit", "bdf2"])
def test_forward_mode_jvp_through_the_env_equals_the_reverse_mode_directional_derivative(integrator):
    """Forward-mode AD (dual tensors) through env.step: the fused springs and the adjoint solve have tangents."""
    env = E.make("rope", num_envs=2, dtype=torch.float64, seed=0, integrator=integrator)
    start = env.reset()
    gen = torch.Generator().manual_seed(0)
    actions = 0.3 * torch.randn(3, 2, env.action_dim, generator=gen, dtype=torch.float64)
    tangent = torch.randn(actions.shape, generator=gen, dtype=torch.float64)
    with fwAD.dual_level():
        jvp = fwAD.unpack_dual(summed_reward(env, start, fwAD.make_dual(actions, tangent))).tangent
    leaf = actions.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(summed_reward(env, start, leaf), leaf)
    assert torch.allclose(jvp, (gradient * tangent).sum(), rtol=1e-9)
