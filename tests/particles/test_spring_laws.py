"""Hand-computed spring, cable and smoothing laws of ``tphys/particles/forces.py`` and the force / energy sums
(issue 22: the mutation job's tests for the springs; the ground contact has its own, test_ground_contact_laws.py)."""

import math

import pytest
import torch

from tphys.particles import ParticleBuilder, kinetic_energy, potential_energy, total_forces
from tphys.particles.fem import tet_energy, tet_forces
from tphys.particles.forces import (
    _smooth_ramp_integral,
    ground_forces,
    membrane_energy,
    membrane_forces,
    smooth_ramp,
    smooth_step,
    spring_energy,
    spring_forces,
)

W = 0.02  # slack width of the cables here: big enough that the C1 rounding shows in the numbers


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def test_smooth_ramp_step_and_integral_by_hand():
    w = t64(0.2)
    s = t64([-0.3, 0.0, 0.05, 0.1, 0.2, 0.5])
    torch.testing.assert_close(smooth_ramp(s, w), t64([0.0, 0.0, 0.05**2 / 0.4, 0.1**2 / 0.4, 0.1, 0.4]), rtol=1e-14, atol=0)
    t = s / 0.2
    step = t64([0.0, 0.0, 0.25**2 * 2.5, 0.5**2 * 2.0, 1.0, 1.0])
    assert t[2] == 0.25
    torch.testing.assert_close(smooth_step(s, w), step, rtol=1e-14, atol=0)
    integral = t64([0.0, 0.0, 0.05**3 / 1.2, 0.1**3 / 1.2, 0.2**2 / 6, 0.5 * 0.4**2 + 0.04 / 24])
    torch.testing.assert_close(_smooth_ramp_integral(s, w), integral, rtol=1e-13, atol=0)


def two_particles(cable=False, damping=3.0, dim=3):
    b = ParticleBuilder(dim=dim, slack_width=W)
    i = b.add_particle([0.0] * dim, mass=0.5)
    j = b.add_particle([0.4] + [0.0] * (dim - 1), mass=2.0)  # rest length 0.4
    (b.add_cable if cable else b.add_spring)(i, j, stiffness=200.0, damping=damping)
    return b.build()[0]


def pair(length, vb=(1.0, 2.0, 0.5)):
    """Particle a at the origin at rest, b at length·(0.6, 0.8, 0) moving with vb."""
    x = t64([[[0.0, 0.0, 0.0], [0.6 * length, 0.8 * length, 0.0]]])
    v = t64([[[0.0, 0.0, 0.0], list(vb)]])
    return x, v


@pytest.mark.parametrize("length", [0.5, 0.3])
def test_bilateral_spring_pulls_and_pushes_with_hooke_plus_axial_damping(length):
    model = two_particles()
    x, v = pair(length)
    stretch = length - 0.4
    tension = 200.0 * stretch + 3.0 * (0.6 * 1.0 + 0.8 * 2.0)  # k·stretch + c·(v_rel · direction)
    direction = t64([0.6, 0.8, 0.0])
    expected = torch.stack([tension * direction, -tension * direction])[None]
    torch.testing.assert_close(spring_forces(model.springs, x, v), expected, rtol=1e-13, atol=1e-13)
    assert spring_energy(model.springs, x).item() == pytest.approx(0.5 * 200.0 * stretch**2, rel=1e-13)


@pytest.mark.parametrize("stretch, elastic, fade", [
    (0.1, 0.1 - W / 2, 1.0),  # taut beyond the slack width: k·(s - w/2), full damping
    (W / 2, W / 8, 0.5),  # inside the rounding: k·s²/(2w), damping faded in by t²(3 - 2t) = 1/2 at t = 1/2
    (W / 4, W / 32, 0.15625),  # t = 1/4: t²(3 - 2t) = 5/32
    (-0.05, 0.0, 0.0),  # slack: nothing, even while the ends separate
])
def test_cable_pulls_only_when_stretched_with_c1_rounding(stretch, elastic, fade):
    model = two_particles(cable=True)
    x, v = pair(0.4 + stretch)
    tension = 200.0 * elastic + fade * 3.0 * 2.2
    direction = t64([0.6, 0.8, 0.0])
    expected = torch.stack([tension * direction, -tension * direction])[None]
    torch.testing.assert_close(spring_forces(model.springs, x, v), expected, rtol=1e-12, atol=1e-13)
    energy = 200.0 * _smooth_ramp_integral(t64(stretch), t64(W))
    assert spring_energy(model.springs, x).item() == pytest.approx(energy.item(), rel=1e-12, abs=1e-15)


def full_model():
    """A handle, three free particles (springs, a cable, a membrane triangle), ground contact (y up) and drag."""
    b = ParticleBuilder(dim=3, slack_width=W, drag=0.3)
    h = b.add_handle([0.0, 1.0, 0.0])
    p = [b.add_particle(xyz, mass=m) for xyz, m in (([0.3, 0.9, 0.1], 0.2), ([0.5, 0.5, -0.2], 0.4), ([0.1, 0.02, 0.3], 0.3))]
    b.add_spring(h, p[0], stiffness=80.0, damping=0.5)
    b.add_cable(p[0], p[1], stiffness=120.0, damping=0.2)
    b.add_spring(p[1], p[2], stiffness=60.0)
    b.add_triangle(p[0], p[1], p[2])
    b.set_membrane(mu=5.0, lam=3.0)
    b.set_ground(height=0.05, stiffness=2e3, damping=2.0, friction=0.4)
    return b.build()


def test_total_forces_are_gravity_drag_springs_membrane_and_ground_on_free_particles_only():
    model, rest = full_model()
    g = torch.Generator().manual_seed(0)
    x = (rest + 0.05 * torch.randn(rest.shape, generator=g, dtype=torch.float64))[None]
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    expected = (model.mass[:, None] * model.gravity - 0.3 * v + spring_forces(model.springs, x, v)
                + membrane_forces(model.triangles, x) + ground_forces(model.ground, 1, x, v))
    expected[:, 0] = 0.0  # the handle
    for fused in (False, True):
        torch.testing.assert_close(total_forces(model, x, v, fused=fused), expected, rtol=1e-12, atol=1e-12)
    assert expected[:, 1:].abs().min() > 0
    # the gravity term alone, by hand: m·g on the up axis
    bare = model._replace(springs=None, triangles=None, ground=None, drag=t64(0.0))
    torch.testing.assert_close(total_forces(bare, x, v)[0, 1:, 1], -9.81 * model.mass[1:], rtol=1e-14, atol=0)


def test_potential_energy_terms_and_kinetic_energy_by_hand():
    model, rest = full_model()
    x = rest.clone()[None]
    x[0, 3, 1] = 0.01  # 4 cm below the ground's height
    x[0, 1, 0] += 0.03
    v = t64([[[9.0, 9.0, 9.0], [1.0, 2.0, 0.0], [0.0, -1.0, 0.0], [0.5, 0.0, 0.0]]])
    gravity = 9.81 * (model.mass[1:] * x[0, 1:, 1]).sum()
    ground = 2e3 * _smooth_ramp_integral(t64(0.04), t64(1e-3))
    expected = gravity + spring_energy(model.springs, x)[0] + membrane_energy(model.triangles, x)[0] + ground
    assert spring_energy(model.springs, x)[0] > 0 and membrane_energy(model.triangles, x)[0] > 0
    assert potential_energy(model, x).item() == pytest.approx(expected.item(), rel=1e-13)
    kinetic = 0.5 * (0.2 * 5.0 + 0.4 * 1.0 + 0.3 * 0.25)  # the handle's velocity does not count
    assert kinetic_energy(model, v).item() == pytest.approx(kinetic, rel=1e-14)


def test_solid_terms_enter_the_sums_with_the_activation():
    b = ParticleBuilder(dim=3)
    corners = [b.add_particle(p, mass=0.1) for p in ([0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1])]
    b.add_tetrahedron(*corners, mu=30.0, lam=50.0, damping=0.5, fiber=(1.0, 0.0, 0.0), max_stress=40.0)
    model, rest = b.build()
    g = torch.Generator().manual_seed(1)
    x = (rest + 0.1 * torch.randn(rest.shape, generator=g, dtype=torch.float64))[None]
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    a = t64([[0.7]])
    f = total_forces(model, x, v, activation=a)
    torch.testing.assert_close(f, model.mass[:, None] * model.gravity + tet_forces(model.tetrahedra, x, v, a), rtol=1e-12, atol=1e-12)
    e = potential_energy(model, x, activation=a)
    gravity = 9.81 * (model.mass * x[0, :, 1]).sum()
    assert e.item() == pytest.approx((gravity + tet_energy(model.tetrahedra, x, a)[0]).item(), rel=1e-13)
    assert tet_energy(model.tetrahedra, x, a)[0] != tet_energy(model.tetrahedra, x)[0]
    assert math.isfinite(e.item())


def test_energies_keep_any_leading_batch_dims():
    """[..., P, d] -> [...]: one value per env for no, one and two leading dims (every env its own sum)."""
    model, rest = full_model()
    g = torch.Generator().manual_seed(2)
    x = rest + 0.05 * torch.randn(2, 3, *rest.shape, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    ke, se = kinetic_energy(model, v), spring_energy(model.springs, x)
    assert ke.shape == se.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert ke[i, j].item() == pytest.approx(0.5 * (model.free_mask * model.mass * (v[i, j] ** 2).sum(-1)).sum().item(), rel=1e-14)
            assert kinetic_energy(model, v[i, j]).item() == pytest.approx(ke[i, j].item(), rel=1e-14)
            assert spring_energy(model.springs, x[i, j]).item() == pytest.approx(se[i, j].item(), rel=1e-14)
    torch.testing.assert_close(kinetic_energy(model, v[0]), ke[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(spring_energy(model.springs, x[0]), se[0], rtol=1e-14, atol=0)


def test_default_forces_run_under_torch_func_and_fused_ones_fall_back_under_forward_mode():
    """total_forces' default (fused=False) works under torch.func transforms (jacrev = the autograd Jacobian); fused=True
    hands springs to the twin whenever x or v carries a forward-mode tangent (the fused node is reverse-mode only)."""
    import torch.autograd.forward_ad as fwAD

    model, rest = full_model()
    g = torch.Generator().manual_seed(3)
    x = (rest + 0.05 * torch.randn(rest.shape, generator=g, dtype=torch.float64))[None]
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    jac = torch.func.jacrev(lambda y: total_forces(model, y, v))(x)
    ref = torch.autograd.functional.jacobian(lambda y: total_forces(model, y, v), x)
    torch.testing.assert_close(jac, ref, rtol=1e-12, atol=1e-12)
    tangent = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for which in ("x", "v"):
        tangents = {}
        for fused in (False, True):
            with fwAD.dual_level():
                xd = fwAD.make_dual(x, tangent) if which == "x" else x
                vd = fwAD.make_dual(v, tangent) if which == "v" else v
                tangents[fused] = fwAD.unpack_dual(total_forces(model, xd, vd, fused=fused)).tangent
        torch.testing.assert_close(tangents[True], tangents[False], rtol=1e-12, atol=1e-12)
        assert tangents[True].abs().max() > 0


def test_potential_energy_keeps_any_leading_batch_dims():
    model, rest = full_model()
    g = torch.Generator().manual_seed(4)
    x = rest + 0.05 * torch.randn(2, 3, *rest.shape, generator=g, dtype=torch.float64)
    x[..., 3, 1] = 0.02  # particle 3 below the ground in every env
    e = potential_energy(model, x)
    assert e.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert potential_energy(model, x[i, j]).item() == pytest.approx(e[i, j].item(), rel=1e-13)
    torch.testing.assert_close(potential_energy(model, x[0]), e[0], rtol=1e-13, atol=0)
