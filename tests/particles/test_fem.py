"""Tetrahedral FEM: forces against the energy, an analytic stretched block, rest states, FD rollouts."""

import math

import pytest
import torch
from helpers import check_directional_derivative
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.math import axis_angle_to_matrix
from tphys.particles import ParticleBuilder, ParticleControl, ParticleState, semi_implicit_euler
from tphys.particles.fem import deformation_gradient, tet_energy, tet_forces
from tphys.particles.meshing import box_mesh, lumped_masses, signed_volumes


def block(cells=(2, 1, 1), size=(0.2, 0.1, 0.1), mu=1e4, lam=4e4, damping=0.0, max_stress=0.0, fiber=(1.0, 0.0, 0.0), ground=False,
          lift=0.0, ground_damping=300.0):
    b = ParticleBuilder(dim=3)
    vertices, tets = box_mesh([0.0, lift, 0.0], [size[0], lift + size[1], size[2]], cells)
    b.add_solid(vertices, tets, density=1000.0, mu=mu, lam=lam, damping=damping, fiber=fiber, max_stress=max_stress)
    if ground:
        b.set_ground(height=0.0, stiffness=3e4, damping=ground_damping, friction=0.8, slip=1e-2, smoothing=1e-3)
    return b.build()


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), strain=st.floats(0.01, 0.4), activate=st.booleans())
def test_forces_are_minus_the_energy_gradient(seed, strain, activate):
    gen = torch.Generator().manual_seed(seed)
    mu, lam = (float(10 ** (3 + 2 * torch.rand(1, generator=gen))) for _ in range(2))
    model, rest = block(cells=(2, 2, 1), mu=mu, lam=lam, max_stress=5e3, fiber=torch.randn(3, generator=gen).tolist())
    tets = model.tetrahedra
    x = rest + strain * 0.1 * torch.randn(2, *rest.shape, generator=gen, dtype=torch.float64)
    activation = torch.rand(2, tets.corners.shape[0], generator=gen, dtype=torch.float64) if activate else None
    x.requires_grad_(True)
    (gradient,) = torch.autograd.grad(tet_energy(tets, x, activation).sum(), x)
    forces = tet_forces(tets, x.detach(), torch.zeros_like(x), activation)
    torch.testing.assert_close(forces, -gradient, rtol=1e-9, atol=1e-9 * gradient.abs().max().item())
    assert torch.allclose(forces.sum(-2), torch.zeros(2, 3, dtype=torch.float64), atol=1e-8 * forces.abs().max()), "no net force"


def test_rest_shape_is_force_free_in_any_rigid_pose():
    model, rest = block(cells=(3, 2, 2))
    axis = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64) / math.sqrt(5.25)
    rotation = axis_angle_to_matrix(axis, torch.tensor(1.1, dtype=torch.float64))
    x = (rest @ rotation.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))[None]
    forces = tet_forces(model.tetrahedra, x, torch.zeros_like(x))
    assert forces.abs().max() < 1e-9
    assert abs(tet_energy(model.tetrahedra, x).item()) < 1e-12


@pytest.mark.parametrize("stretch, squeeze", [(1.2, 0.95), (0.8, 1.05), (1.0, 1.0)])
def test_affinely_stretched_block_pulls_its_face_with_the_analytic_stress(stretch, squeeze):
    """F = diag(s, t, t) in every element: the nodes of the face x = L feel -P₁₁·A, the closed-form first Piola stress."""
    mu, lam = 2e4, 5e4
    model, rest = block(cells=(3, 2, 2), mu=mu, lam=lam)
    f = torch.diag(torch.tensor([stretch, squeeze, squeeze], dtype=torch.float64))
    x = (rest @ f.T)[None]
    torch.testing.assert_close(deformation_gradient(model.tetrahedra, x)[0], f.expand(model.tetrahedra.corners.shape[0], 3, 3))
    ic, j, alpha = stretch**2 + 2 * squeeze**2, stretch * squeeze**2, 1 + 0.75 * mu / lam
    p11 = mu * (1 - 1 / (ic + 1)) * stretch + lam * (j - alpha) * squeeze**2
    forces = tet_forces(model.tetrahedra, x, torch.zeros_like(x))[0]
    face = rest[:, 0] > 0.2 - 1e-9
    area = 0.1 * 0.1
    assert forces[face, 0].sum().item() == pytest.approx(-p11 * area, rel=1e-10, abs=1e-9)
    assert forces[face, 1:].sum(0).abs().max() < 1e-9


def test_activated_fibers_contract_the_block_along_the_fiber():
    model, rest = block(cells=(4, 1, 1), size=(0.4, 0.1, 0.1), mu=1e4, lam=4e4, damping=300.0, max_stress=4e3)
    model = model._replace(gravity=torch.zeros(3, dtype=torch.float64))
    state = ParticleState.without_history(rest[None], torch.zeros_like(rest[None]))
    activation = torch.ones(1, model.tetrahedra.corners.shape[0], dtype=torch.float64)
    for _ in range(100):
        state = semi_implicit_euler(model, state, ParticleControl(torch.zeros(1, 0, 3, dtype=torch.float64), activation), 1 / 60, 40)
    length = state.x[0, :, 0].max() - state.x[0, :, 0].min()
    width = state.x[0, :, 1].max() - state.x[0, :, 1].min()
    assert length < 0.4 * 0.97, f"the fiber direction (x) shortens: {length:.4f} m"
    assert width > 0.1, "and the cross-section bulges (near incompressible)"
    assert state.v.abs().max() < 1e-3, "it settles"


def test_unactuated_block_rests_on_the_ground_without_drift_over_1000_substeps():
    model, rest = block(cells=(2, 1, 2), size=(0.2, 0.1, 0.2), mu=3e4, lam=1e5, damping=50.0, ground=True, lift=0.02)
    state = ParticleState.without_history(rest[None], torch.zeros_like(rest[None]))
    none = torch.zeros(1, 0, 3, dtype=torch.float64)
    for _ in range(50):  # 50 frames x 20 substeps = 1000 substeps, 0.83 s
        state = semi_implicit_euler(model, state, ParticleControl(none), 1 / 60, 20)
    x, v = state.x[0], state.v[0]
    assert torch.isfinite(x).all()
    assert v.mean(0).norm() < 1e-3 and v.norm(dim=-1).max() < 2e-2, "at rest (corners creep below the 1 cm/s friction slip speed)"
    centre = x.mean(0)
    assert abs(centre[0] - 0.1) < 1e-3 and abs(centre[2] - 0.1) < 1e-3, "no horizontal drift"
    weight = model.mass.sum().item() * 9.81
    depth = weight / (3e4 * 6)  # six bottom vertices share the weight (penalty ground)
    assert centre[1].item() == pytest.approx(0.05 - depth, abs=2e-3), "sitting on the ground, slightly sunk"


@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1))
def test_rollout_gradients_match_finite_differences(seed):
    # The bottom starts 5 mm deep in the ground, past the 1 mm C¹ smoothing of the contact law (whose kinks
    # finite differences cannot resolve), and the contact has no approach damping (kinked at v_n = 0).
    model, rest = block(cells=(2, 1, 1), mu=5e3, lam=2e4, damping=5.0, max_stress=3e3, ground=True, lift=-0.005, ground_damping=0.0)
    gen = torch.Generator().manual_seed(seed)
    num_tets = model.tetrahedra.corners.shape[0]
    x0 = rest[None] + 0.001 * torch.randn(1, *rest.shape, generator=gen, dtype=torch.float64)
    v0 = 0.05 * torch.randn(1, *rest.shape, generator=gen, dtype=torch.float64)
    activation = 0.2 + 0.6 * torch.rand(2, 1, num_tets, generator=gen, dtype=torch.float64)
    none = torch.zeros(1, 0, 3, dtype=torch.float64)
    weights = torch.randn(*rest.shape, generator=gen, dtype=torch.float64)

    def loss(x, v, act):
        state = ParticleState.without_history(x, v)
        for a in act:
            state = semi_implicit_euler(model, state, ParticleControl(none, a), 1 / 60, 20)
        return (state.x * weights).sum() + state.v.square().sum()

    leaves = [x0, v0, activation]
    directions = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in leaves]
    check_directional_derivative(loss, leaves, directions, eps=(1e-6, 1e-5))


def test_mesh_helpers():
    vertices, tets = box_mesh([0, 0, 0], [0.3, 0.2, 0.1], (3, 2, 1))
    assert vertices.shape == (4 * 3 * 2, 3) and tets.shape == (6 * 6, 4)
    assert (signed_volumes(vertices, tets) > 0).all()
    assert signed_volumes(vertices, tets).sum().item() == pytest.approx(0.006)
    assert lumped_masses(vertices, tets, 1000.0).sum().item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="cells"):
        box_mesh([0, 0, 0], [1, 1, 1], (0, 1, 1))
    b = ParticleBuilder(dim=3)
    for p in ([0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]):
        b.add_particle(p, 1.0)
    with pytest.raises(ValueError, match="zero rest volume"):
        b.add_tetrahedron(0, 1, 2, 3, mu=1.0, lam=1.0)
    with pytest.raises(ValueError, match="repeats"):
        b.add_tetrahedron(0, 1, 1, 2, mu=1.0, lam=1.0)
