"""MLS-MPM substeps: a dropped elastic cube conserves mass exactly and momentum before contact, rests on
the floor, and rollouts have gradients that match finite differences (each material, with walls)."""

import importlib

import pytest
import torch
from helpers import check_directional_derivative, pressed_block
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.kernels import p2g
from tphys.math import axis_angle_to_matrix
from tphys.mpm import KINDS, Material, MPMControl, MPMModel, MPMState, step, substep
from tphys.mpm.grid import window as grid_window


def cube(grid_size=16, lower=(0.3, 0.5, 0.3), size=0.2, per_cell=2, kind="corotated", young=1e4, friction=0.0):
    dx = 1.0 / grid_size
    spacing = dx / per_cell
    axis = torch.arange(0.0, size, spacing, dtype=torch.float64) + spacing / 2
    x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) + torch.tensor(lower, dtype=torch.float64)
    volume = torch.full((x.shape[0],), spacing**3, dtype=torch.float64)
    model = MPMModel(grid_size, dx, 2e-4, torch.tensor([0.0, -9.8, 0.0], dtype=torch.float64), 1000.0 * volume, volume,
                     Material.from_young(kind, young, 0.3, yield_stress=200.0), wall_friction=friction)
    return model, x


def test_dropped_cube_conserves_mass_exactly_and_momentum_until_it_touches_the_floor():
    model, x = cube()
    state = MPMState.at_rest(x[None], torch.tensor([0.4, 0.0, -0.2], dtype=torch.float64).expand(1, *x.shape).clone())
    mass = model.particle_mass
    momentum0 = (mass[:, None] * state.v[0]).sum(0)
    with torch.no_grad():
        for k in range(1, 201):
            grid_mass, _ = p2g(state.x, mass[None], state.v, state.c, model.grid_size, model.dx)
            torch.testing.assert_close(grid_mass.sum(), mass.sum(), rtol=1e-14, atol=0.0)
            state = substep(model, state)
            expected = momentum0 + k * model.dt * mass.sum() * model.gravity
            torch.testing.assert_close((mass[:, None] * state.v[0]).sum(0), expected, rtol=1e-12, atol=1e-12)
    assert state.x[..., 1].min() > 3 * model.dx, "still in free fall: no wall has acted"


def test_cube_comes_to_rest_on_the_floor():
    model, x = cube(young=3e4, friction=0.5, lower=(0.4, 0.25, 0.4), size=0.15)
    state = MPMState.at_rest(x[None])
    with torch.no_grad():
        for _ in range(3000):
            state = substep(model, state)
    assert state.v.abs().max() < 0.05, state.v.abs().max()
    floor = model.bound * model.dx
    assert floor - model.dx < state.x[..., 1].min() < floor + model.dx
    assert torch.isfinite(state.f).all()


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(KINDS), backend=st.sampled_from(("torch", "cpu")))
def test_rollout_gradient_matches_central_finite_differences(seed, kind, backend):
    """6 substeps of a small block hitting the floor with friction (float64; twin kernels or C loops), per material."""
    gen = torch.Generator().manual_seed(seed)
    model, x = cube(grid_size=8, lower=(0.35, 0.24, 0.35), size=0.25, per_cell=1, kind=kind, friction=0.3)
    model = model._replace(dt=1e-3)
    v = torch.tensor([0.3, -1.0, 0.1], dtype=torch.float64) + 0.2 * torch.randn(*x.shape, generator=gen, dtype=torch.float64)
    weights = torch.randn(*x.shape, generator=gen, dtype=torch.float64)

    def loss(x0, v0):
        s = step(model, MPMState.at_rest(x0[None], v0[None]), MPMControl(), 6 * model.dt, recompute=True, backend=backend)
        return (s.x[0] * weights).sum() + 0.1 * (s.v[0] * weights).sum()

    directions = [torch.randn(*x.shape, generator=gen, dtype=torch.float64) * scale for scale in (1e-2, 1.0)]
    check_directional_derivative(loss, [x, v], directions, eps=(1e-6, 1e-5), rtol=1e-4)


def test_grid_window_gives_the_whole_domains_result_and_gradient():
    """Windowed grids (the default) against the whole 16³ domain: a plasticine cube falls on the floor for 30 substeps."""
    model, x = cube(kind="plasticine", lower=(0.3, 0.22, 0.4), size=0.2)
    v0 = torch.tensor([0.5, -2.0, 0.3], dtype=torch.float64).expand(2, *x.shape).clone()
    x0 = torch.stack([x, x + 0.05])  # two envs, different windows
    results = []
    for window in (True, False):
        start = v0.clone().requires_grad_()
        s = step(model._replace(window=window), MPMState.at_rest(x0, start), MPMControl(), 30 * model.dt, recompute=False)
        (grad,) = torch.autograd.grad((s.x * s.x).sum(), start)
        results.append((*s, grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("recompute", ["none", "step", "substep"])
def test_batched_poses_give_the_per_boundary_frame_and_gradients(recompute):
    """A moving, turning sphere: ``MPMControl(batched=True)`` (one poses call for every substep boundary) gives the state
    and gradients of the per-boundary calls, float64, in every recompute mode."""
    model, x, shapes, _ = pressed_block("plasticine", cutoff=0.0)
    f64 = dict(dtype=torch.float64)
    axis = torch.tensor([0.3, 1.0, 0.2], **f64)
    axis = axis / axis.norm()

    def poses(t, start, move, turn):  # t: a float, or [T] with batched; turn [N, S] rad
        batched = not isinstance(t, float)
        position, angle = start + (t[:, None, None, None] if batched else t) * move, (t[:, None, None] if batched else t) * turn
        return position, axis_angle_to_matrix(axis.expand(*angle.shape, 3), angle)

    def frame(batched, leaves):
        control = MPMControl(shapes, poses, leaves[1:], batched=batched)
        return step(model, MPMState.at_rest(x, leaves[0]), control, 3 * model.dt, recompute=recompute)

    gen = torch.Generator().manual_seed(4)
    leaves = [0.2 * torch.randn(x.shape, generator=gen, **f64), torch.tensor([[[0.45, 0.68, 0.45]]], **f64),
              torch.tensor([[[0.01, -0.03, 0.01]]], **f64), torch.tensor([[0.4]], **f64)]
    results = []
    for batched in (False, True):
        inputs = [t.clone().requires_grad_() for t in leaves]
        state = frame(batched, inputs)
        weights = torch.Generator().manual_seed(5)
        loss = sum((s * torch.randn(s.shape, generator=weights, **f64)).sum() for s in state)
        results.append([s.detach() for s in state] + list(torch.autograd.grad(loss, inputs)))
    assert all(g.abs().sum() > 0 for g in results[0][4:])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("segment", [1, 2, 5, 8])  # of 5 substeps: 5 x 1, 2 + 2 + 1, the frame, the frame
def test_step_recompute_runs_two_forwards_and_gives_plain_autograds_result_and_gradients(segment, monkeypatch):
    """recompute="step" (``_Recompute``: segments of ``SEGMENT`` substeps) runs each substep twice in forward + backward,
    and its state and gradients are plain autograd's (recompute="none") to float64 round-off: two frames of 5 substeps
    of a block pressed by a moving sphere, gradients to the initial velocity and the sphere's start and moves."""
    module = importlib.import_module("tphys.mpm.step")
    monkeypatch.setattr(module, "SEGMENT", segment, raising=False)
    calls = []
    plain_substep = module.substep
    monkeypatch.setattr(module, "substep", lambda *args: calls.append(1) or plain_substep(*args))
    model, x, shapes, eye = pressed_block("plasticine", cutoff=0.0)
    f64 = dict(dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    leaves = [0.2 * torch.randn(x.shape, generator=gen, **f64), torch.tensor([[[0.45, 0.68, 0.45]]], **f64),
              torch.tensor([[[[0.0, -0.03, 0.01]]], [[[0.01, -0.02, 0.0]]]], **f64)]

    def run(recompute):
        calls.clear()
        inputs = [t.clone().requires_grad_() for t in leaves]
        v, start, moves = inputs
        state = MPMState.at_rest(x, v)
        for move in moves:
            state = step(model, state, MPMControl(shapes, lambda t, p, m: (p + t * m, eye), (start, move)), 5 * model.dt,
                         recompute=recompute)
            start = start + move
        weights = torch.Generator().manual_seed(7)
        loss = sum((s * torch.randn(s.shape, generator=weights, **f64)).sum() for s in state)
        return [s.detach() for s in state] + list(torch.autograd.grad(loss, inputs)), len(calls)

    plain, plain_calls = run("none")
    recomputed, recomputed_calls = run("step")
    assert plain_calls == 10 and recomputed_calls == 20  # 2 frames x 5 substeps, once; twice
    assert all(g.abs().sum() > 0 for g in plain[4:])
    for a, b in zip(recomputed, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_window_holds_every_stencil_tightly_and_takes_the_whole_domain_for_non_finite_particles():
    """``window``: per env the origin is the lowest stencil node clamped into the domain, the shape the widest span
    (+ 1, rounded up to 4, at most G) over envs; NaN particles get the whole domain (origin 0, G³)."""
    model, _ = cube(grid_size=16)
    gen = torch.Generator().manual_seed(8)
    for _ in range(20):
        x = 0.2 + 0.6 * torch.rand(3, 50, 3, generator=gen, dtype=torch.float64) * torch.rand(3, 1, 3, generator=gen, dtype=torch.float64)
        origin, shape = grid_window(model, x)
        low = torch.floor(x.amin(1) / model.dx - 0.5).long()
        high = torch.floor(x.amax(1) / model.dx - 0.5).long() + 2
        extent = (((high - low).amax(0) + 4) // 4 * 4).clamp_max(16)
        assert shape == tuple(extent.tolist())
        assert torch.equal(origin, torch.minimum(low.clamp_min(0), 16 - extent))
        assert (origin <= low).all() and (origin + extent > high).all()  # every stencil node inside
    x[1, 3, 0] = float("nan")
    origin, shape = grid_window(model, x)
    assert shape == (16, 16, 16) and not origin.any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_water_advects_its_isotropic_f_by_a_scaling_equal_to_the_product(dtype):
    """``advect`` for water (F = c·I): update·c, the 3x3 product's values to the bit (C loops and torch), and the same
    gradient of the trial F through water's stress (float64 to 1e-12)."""
    from tphys.mpm.materials import elastic_stress
    from tphys.mpm.step import advect

    water = Material.from_young("water", 1e5, 0.3)
    gen = torch.Generator().manual_seed(9)
    f_trial = (torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(30, 3, 3, generator=gen, dtype=torch.float64)).to(dtype)
    update = (torch.eye(3, dtype=torch.float64) + 0.05 * torch.randn(30, 3, 3, generator=gen, dtype=torch.float64)).to(dtype)
    weights = torch.randn(30, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    results = []
    for product in (lambda u, f: advect(water, u, f), lambda u, f: advect(water._replace(kind="corotated"), u, f),
                    lambda u, f: u @ f):
        leaves = [f_trial.clone().requires_grad_(), update.clone().requires_grad_()]
        out = product(leaves[1], elastic_stress(water, leaves[0])[0])
        results.append([out.detach(), *torch.autograd.grad((out * weights).sum(), leaves)])
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0])
        if dtype == torch.float64:
            for a, b in zip(results[0][1:], other[1:]):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_recompute_backward_is_free_where_no_shape_acts(monkeypatch):
    """A sphere far from the block (beyond the influence band of every node with mass) and a state that needs no gradient:
    recompute="step" gives plain autograd's values, a result that still has a graph (a loss of it can call backward),
    a zero gradient (None) for the sphere's pose, as plain autograd (whose result has no graph then), and its backward
    reruns no substep; a sphere that touches (C grid update or its torch twin, which reports no contacts), or a state
    that needs a gradient, reruns every substep once."""
    module = importlib.import_module("tphys.mpm.step")
    calls = []
    plain_substep = module.substep
    monkeypatch.setattr(module, "substep", lambda *args: calls.append(1) or plain_substep(*args))
    model, x, shapes, eye = pressed_block("plasticine")  # cutoff 0.1: a band of 3.5 mm
    f64 = dict(dtype=torch.float64)

    def frame(recompute, centre, v=None, backend="auto"):
        calls.clear()
        start = torch.tensor([[centre]], **f64).requires_grad_()
        state = step(model, MPMState.at_rest(x, v), MPMControl(shapes, lambda t, p: (p, eye), (start,)), 3 * model.dt, recompute=recompute,
                     backend=backend)
        if not state.x.requires_grad:
            return state, None, len(calls)
        weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(10), **f64)
        (grad,) = torch.autograd.grad((state.x * weights).sum() + state.v.square().sum(), start, allow_unused=True)
        return state, grad, len(calls)

    far, near = [0.9, 0.9, 0.9], [0.45, 0.62, 0.45]
    plain, plain_grad, _ = frame("none", far)
    state, grad, count = frame("step", far)
    assert plain_grad is None and not plain.x.requires_grad and grad is None and count == 3
    for a, b in zip(state, plain):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)
    _, grad, count = frame("step", near)
    assert grad.abs().sum() > 0 and count == 6
    _, grad, count = frame("step", near, backend="torch")  # the twin reports no contacts: the node must not assume none
    assert grad.abs().sum() > 0 and count == 6
    _, _, count = frame("step", far, torch.zeros_like(x).requires_grad_())
    assert count == 6
