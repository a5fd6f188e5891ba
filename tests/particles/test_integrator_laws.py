"""The particle integrators' update rules by hand (issue 22: the mutation job's tests for
``tphys/particles/integrators.py``): one symplectic-Euler step, the BDF1 / BDF2 equations the implicit step solves, the
handles' kinematics, the incremental potential whose gradient is the residual, and the adjoint's model gradients."""

import pytest
import torch

from tphys.particles import ParticleBuilder, ParticleControl, ParticleState, bdf2, semi_implicit_euler, total_forces
from tphys.particles.forces import potential_energy
from tphys.particles.integrators import _incremental_potential, default_tolerance, handle_velocity_field


def chain(ground=True, damping=0.4):
    """A handle and three free particles in 3-D: springs (damped), a cable, drag and (optionally) ground contact."""
    b = ParticleBuilder(dim=3, drag=0.2, slack_width=0.01)
    h = b.add_handle([0.0, 1.0, 0.0])
    p = [b.add_particle(xyz, mass=m) for xyz, m in (([0.2, 0.8, 0.0], 0.3), ([0.4, 0.55, 0.1], 0.5), ([0.5, 0.3, -0.1], 0.2))]
    b.add_spring(h, p[0], stiffness=90.0, damping=damping)
    b.add_cable(p[0], p[1], stiffness=150.0, damping=damping)
    b.add_spring(p[1], p[2], stiffness=70.0, damping=damping, rest_length=0.2)
    if ground:
        b.set_ground(height=0.31, stiffness=3e3, damping=2.0, friction=0.3)
    return b.build()


def start(model, rest, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (rest + 0.03 * torch.randn(rest.shape, generator=g, dtype=torch.float64))[None].repeat(2, 1, 1)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    u = torch.tensor([[[0.5, -0.2, 0.1]], [[-0.3, 0.0, 0.4]]], dtype=torch.float64)  # [N, H, d]
    return x, v, u


def test_handle_velocity_field_scatters_handle_velocities_to_their_particles():
    model, _ = chain()
    u = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    out = handle_velocity_field(model, u)
    assert out.shape == (1, 4, 3) and out[0, 0].tolist() == [1.0, 2.0, 3.0] and out[0, 1:].abs().max() == 0


def test_semi_implicit_euler_step_by_hand():
    """v' = v + h·F(x, v)/m on the free particles (v: the handles' commanded velocity), x' = x + h·v'; the state
    keeps the step's start as its history."""
    model, rest = chain()
    x, v, u = start(model, rest)
    dt = 0.01
    free = model.free_mask[:, None]
    v0 = free * v + handle_velocity_field(model, u)
    v1 = v0 + dt * total_forces(model, x, v0) / model.mass[:, None] * free
    out = semi_implicit_euler(model, ParticleState.without_history(x, v), ParticleControl(u), dt)
    torch.testing.assert_close(out.v, v1, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.x, x + dt * v1, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.x[:, 0], x[:, 0] + dt * u[:, 0], rtol=1e-14, atol=1e-14)  # the handle moves with u
    assert out.x_prev is x and out.v_prev is v and out.has_prev.all()
    # two substeps of dt/2 are two steps of dt/2
    two = semi_implicit_euler(model, ParticleState.without_history(x, v), ParticleControl(u), dt, substeps=2)
    s = ParticleState.without_history(x, v)
    for _ in range(2):
        s = semi_implicit_euler(model, s, ParticleControl(u), dt / 2)
    torch.testing.assert_close(two.x, s.x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(two.v, s.v, rtol=1e-13, atol=1e-13)


def residual_check(model, state, u, out, dt, coefficients):
    c0, c1, c2 = coefficients
    handle_u = handle_velocity_field(model, u)
    free = model.free_mask[:, None]
    v = (c0 * out.x + c1 * state.x + c2 * state.x_prev) / dt
    torch.testing.assert_close(out.v * free, v * free, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.v[:, 0], u[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out.x[:, 0], state.x[:, 0] + dt * u[:, 0], rtol=1e-14, atol=1e-14)
    g = c0 * out.v + c1 * state.v + c2 * state.v_prev - dt * total_forces(model, out.x, out.v) / model.mass[:, None]
    assert (g * free).abs().max() < 1e-9
    assert handle_u.shape == out.x.shape


def test_bdf1_then_bdf2_solve_their_equations():
    """Without history: backward Euler, v' = (x' - x)/dt and v' - v = dt·F(x', v')/m; with history:
    v' = (1.5 x' - 2 x + 0.5 x_prev)/dt and 1.5 v' - 2 v + 0.5 v_prev = dt·F(x', v')/m."""
    model, rest = chain()
    x, v, u = start(model, rest)
    dt = 0.02
    s0 = ParticleState.without_history(x, v)
    s1 = bdf2(model, s0, ParticleControl(u), dt)
    residual_check(model, s0, u, s1, dt, (1.0, -1.0, 0.0))
    assert s1.x_prev is x and s1.v_prev is v and s1.has_prev.all()
    s2 = bdf2(model, s1, ParticleControl(u), dt)
    residual_check(model, s1, u, s2, dt, (1.5, -2.0, 0.5))
    # a batch that mixes envs with and without history: each env its own formula
    mixed = ParticleState(s1.x, s1.v, s1.x_prev, s1.v_prev, torch.tensor([True, False]))
    s3 = bdf2(model, mixed, ParticleControl(u), dt)
    ref = bdf2(model, ParticleState.without_history(s1.x, s1.v), ParticleControl(u), dt)
    torch.testing.assert_close(s3.x[0], s2.x[0], rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(s3.x[1], ref.x[1], rtol=1e-10, atol=1e-11)
    with pytest.raises(ValueError, match="bdf2 does not take muscle activations"):
        bdf2(model, s0, ParticleControl(u, torch.zeros(2, 1, dtype=torch.float64)), dt)


def test_default_tolerance():
    assert default_tolerance(torch.float64) == 1e-11
    assert default_tolerance(torch.float32) == 1e-4


def test_incremental_potential_gradient_is_the_residual_without_dissipation():
    """dE/dx_free = (m/dt)·G when springs, contact and friction have no damping: E = m|v|²/2 + m(c1 v_n + c2 v_p)·x/dt
    + drag·dt·|v|²/(2 c0) + U(x), v = (c0 x + c1 x_n + c2 x_p)/dt."""
    model, rest = chain(ground=False, damping=0.0)
    x, v, _ = start(model, rest)
    g = torch.Generator().manual_seed(5)
    x_p = x - 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    v_p = torch.randn(x.shape, generator=g, dtype=torch.float64)
    dt = 0.02
    coefficients = torch.tensor([[1.5, -2.0, 0.5], [1.0, -1.0, 0.0]], dtype=torch.float64)
    y = (x + dt * v + 0.01).detach().requires_grad_(True)
    c0, c1, c2 = (coefficients[:, k, None, None] for k in range(3))
    vy = (c0 * y + c1 * x + c2 * x_p) / dt
    energy = _incremental_potential(model, y, vy, v, v_p, coefficients, dt)
    (grad,) = torch.autograd.grad(energy.sum(), y)
    m = model.mass[:, None]
    residual = c0 * vy + c1 * v + c2 * v_p - dt * total_forces(model, y, vy) / m
    free = model.free_mask[:, None]
    torch.testing.assert_close(grad * free, (m / dt * residual * free).detach(), rtol=1e-10, atol=1e-10)
    # its value by hand for env 0
    speed2 = (vy[0] ** 2).sum(-1)
    momentum = ((-2.0 * v[0] + 0.5 * v_p[0]) * y[0]).sum(-1)
    by_hand = (free[:, 0] * (model.mass * (0.5 * speed2 + momentum / dt) + 0.2 * dt * speed2 / 3.0)).sum()
    by_hand = by_hand + potential_energy(model, y[:1])[0]
    assert energy[0].item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_bdf2_gradients_in_the_model_and_the_state_match_finite_differences():
    """The adjoint differentiates through the model's tensors (here a spring stiffness) and the start state."""
    model, rest = chain(ground=False)
    x, v, u = start(model, rest)
    dt = 0.02
    k = model.springs.stiffness.clone().requires_grad_(True)
    x0 = x.clone().requires_grad_(True)

    def loss(k, x0):
        m = model._replace(springs=model.springs._replace(stiffness=k))
        out = bdf2(m, ParticleState.without_history(x0, v), ParticleControl(u), dt)
        return (out.x[:, 1:] * torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64)).sum() + out.v.square().sum()

    gk, gx = torch.autograd.grad(loss(k, x0), (k, x0))
    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        fd = (loss(k.detach() + e, x) - loss(k.detach() - e, x)) / (2 * eps)
        assert gk[i].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)
    e = torch.zeros_like(x)
    e[1, 2, 0] = eps
    fd = (loss(k.detach(), x + e) - loss(k.detach(), x - e)) / (2 * eps)
    assert gx[1, 2, 0].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)


def test_bdf_kinematics_assembles_handles_and_free_particles():
    """x: handles at x_n + dt·u, free particles at the unknowns; v: (c0 x + c1 x_n + c2 x_p)/dt on the free ones, u on
    the handles."""
    from tphys.particles.integrators import _bdf_kinematics

    model, rest = chain()
    x_n, v, u = start(model, rest)
    x_p = x_n - 0.01
    free = (x_n[:, 1:] + 0.02).reshape(2, -1)
    coefficients = torch.tensor([[1.5, -2.0, 0.5], [1.0, -1.0, 0.0]], dtype=torch.float64)
    dt = 0.05
    x, vel = _bdf_kinematics(model, free, x_n, x_p, handle_velocity_field(model, u), coefficients, dt)
    torch.testing.assert_close(x[:, 1:], x_n[:, 1:] + 0.02, rtol=0, atol=1e-15)
    torch.testing.assert_close(x[:, 0], x_n[:, 0] + dt * u[:, 0], rtol=0, atol=1e-15)
    torch.testing.assert_close(vel[:, 0], u[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(vel[0, 1:], (1.5 * x[0, 1:] - 2.0 * x_n[0, 1:] + 0.5 * x_p[0, 1:]) / dt, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vel[1, 1:], (x[1, 1:] - x_n[1, 1:]) / dt, rtol=1e-12, atol=1e-12)


def solid():
    from tphys.particles import ParticleBuilder as B

    b = B(dim=3)
    corners = [b.add_particle(p, mass=0.1) for p in ([0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1])]
    b.add_tetrahedron(*corners, mu=300.0, lam=500.0, damping=0.5, fiber=(1.0, 0.0, 0.0), max_stress=400.0)
    return b.build()


def test_semi_implicit_euler_drives_the_fibers_with_the_activation():
    model, rest = solid()
    x = rest[None].clone()
    v = torch.zeros_like(x)
    u = torch.zeros(1, 0, 3, dtype=torch.float64)
    a = torch.tensor([[0.8]], dtype=torch.float64)
    out = semi_implicit_euler(model, ParticleState.without_history(x, v), ParticleControl(u, a), 0.001)
    v1 = 0.001 * total_forces(model, x, v, activation=a) / model.mass[:, None]
    torch.testing.assert_close(out.v, v1, rtol=1e-13, atol=1e-15)
    passive = semi_implicit_euler(model, ParticleState.without_history(x, v), ParticleControl(u), 0.001)
    assert (out.v - passive.v).abs().max() > 1e-3  # the fibers pull


def test_recompute_step_reevaluates_the_forces_in_backward(monkeypatch):
    import tphys.particles.integrators as integrators

    calls = []
    forces = integrators.total_forces

    def counted(*args, **kw):
        calls.append(1)
        return forces(*args, **kw)

    monkeypatch.setattr(integrators, "total_forces", counted)
    model, rest = chain(ground=False)
    x, v, u = start(model, rest)
    v = v.clone().requires_grad_(True)
    out = semi_implicit_euler(model, ParticleState.without_history(x, v), ParticleControl(u), 0.01, substeps=3, recompute="step")
    assert len(calls) == 3
    out.x.sum().backward()
    assert len(calls) == 6 and v.grad is not None
