"""The stable neo-Hookean tetrahedron by hand (issue 22: the mutation job's tests for ``tphys/particles/fem.py``).

One element with an arbitrary rest shape and a generic (non-symmetric) deformation: F = Ds·Dm⁻¹, the first Piola stress
P = mu·(1 - 1/(Ic + 1))·F + lam·(J - alpha)·cof F + damping·dF/dt + a·sigma·(F f)/|F f| ⊗ f, alpha = 1 + 3mu/(4lam),
the corner forces -V·P·Dm⁻ᵀ (corner 0: minus their sum) and the energy
V·(mu/2 (Ic - 3) - mu/2 log((Ic + 1)/4) + lam/2 ((J - alpha)² - (1 - alpha)²) + a·sigma·|F f|), written out in numpy.
"""

import numpy as np
import pytest
import torch

from tphys.particles import ParticleBuilder
from tphys.particles.fem import deformation_gradient, tet_energy, tet_forces

MU, LAM, DAMP, SIGMA = 3.0e3, 7.0e3, 40.0, 2.5e3
REST = np.array([[0.1, 0.0, 0.2], [0.5, 0.1, 0.2], [0.2, 0.6, 0.1], [0.15, 0.1, 0.7]])
FIBER = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])


def element():
    b = ParticleBuilder(dim=3)
    idx = [b.add_particle(p.tolist(), mass=0.1) for p in REST]
    b.add_tetrahedron(*idx, mu=MU, lam=LAM, damping=DAMP, fiber=FIBER.tolist(), max_stress=SIGMA)
    model, _ = b.build()
    return model.tetrahedra


def deformed():
    rng = np.random.default_rng(0)
    f = np.eye(3) + 0.25 * rng.normal(size=(3, 3))
    assert np.linalg.det(f) > 0.3
    x = REST @ f.T + np.array([0.3, -0.2, 0.1])
    v = rng.normal(size=(4, 3))
    return f, x, v


def by_hand(f, x, v, a):
    dm = (REST[1:] - REST[0]).T
    vol = np.linalg.det(dm) / 6
    ic = (f * f).sum()
    j = np.linalg.det(f)
    cof = j * np.linalg.inv(f).T
    alpha = 1 + 0.75 * MU / LAM
    fdot = (v[1:] - v[0]).T @ np.linalg.inv(dm)
    ff = f @ FIBER
    p = MU * (1 - 1 / (ic + 1)) * f + LAM * (j - alpha) * cof + DAMP * fdot + a * SIGMA * np.outer(ff / np.linalg.norm(ff), FIBER)
    h = -vol * p @ np.linalg.inv(dm).T
    forces = np.vstack([-h.sum(1), h.T])
    energy = vol * (0.5 * MU * (ic - 3) - 0.5 * MU * np.log((ic + 1) / 4) + 0.5 * LAM * ((j - alpha) ** 2 - (1 - alpha) ** 2)
                    + a * SIGMA * np.linalg.norm(ff))
    return forces, energy


def test_rest_shape_is_oriented_with_positive_volume():
    tets = element()
    assert tets.rest_volume.item() == pytest.approx(np.linalg.det((REST[1:] - REST[0]).T) / 6, rel=1e-14)
    assert tets.rest_volume.item() > 0


@pytest.mark.parametrize("a", [0.0, 0.6])
def test_deformation_gradient_forces_and_energy_by_hand(a):
    tets = element()
    f, x, v = deformed()
    xt, vt = torch.tensor(x)[None], torch.tensor(v)[None]
    act = torch.tensor([[a]], dtype=torch.float64)
    torch.testing.assert_close(deformation_gradient(tets, xt)[0, 0], torch.tensor(f), rtol=1e-12, atol=1e-13)
    forces, energy = by_hand(f, x, v, a)
    torch.testing.assert_close(tet_forces(tets, xt, vt, act)[0], torch.tensor(forces), rtol=1e-11, atol=1e-9)
    assert tet_energy(tets, xt, act).item() == pytest.approx(energy, rel=1e-12)
    if a == 0.0:  # no activation given: passive
        torch.testing.assert_close(tet_forces(tets, xt, vt)[0], torch.tensor(forces), rtol=1e-11, atol=1e-9)
        assert tet_energy(tets, xt).item() == pytest.approx(energy, rel=1e-12)


def test_rest_energy_is_zero_and_alpha_makes_the_rest_state_stress_free():
    """(J - alpha)² - (1 - alpha)² vanishes at J = 1 and Ic = 3 makes log((Ic + 1)/4) = 0; with alpha = 1 + 3mu/(4lam),
    mu·(1 - 1/4)·I + lam·(1 - alpha)·I = 0 at F = I."""
    tets = element()
    x = torch.tensor(REST)[None]
    assert abs(tet_energy(tets, x).item()) < 1e-12
    assert tet_forces(tets, x, torch.zeros_like(x)).abs().max() < 1e-9


def test_forces_on_a_batch_of_two_elements_sharing_a_face_add_up():
    b = ParticleBuilder(dim=3)
    pts = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
    idx = [b.add_particle(p, mass=0.1) for p in pts]
    b.add_tetrahedron(idx[0], idx[1], idx[2], idx[3], mu=MU, lam=LAM)
    b.add_tetrahedron(idx[1], idx[2], idx[3], idx[4], mu=2 * MU, lam=LAM)
    model, rest = b.build()
    tets = model.tetrahedra
    g = torch.Generator().manual_seed(3)
    x = (rest + 0.1 * torch.randn(rest.shape, generator=g, dtype=torch.float64))[None]
    total = tet_forces(tets, x, torch.zeros_like(x))
    parts = []
    for t in range(2):
        one = type(tets)(*[field[t:t + 1] for field in tets])
        parts.append(tet_forces(one, x, torch.zeros_like(x)))
    torch.testing.assert_close(total, parts[0] + parts[1], rtol=1e-12, atol=1e-10)
    assert parts[1][0, 0].abs().max() == 0 and parts[0][0, 4].abs().max() == 0
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tet_energy(tets, xr).sum(), xr)
    torch.testing.assert_close(total, -grad, rtol=1e-10, atol=1e-9)


def test_several_active_elements_with_any_leading_batch_dims():
    """Forces [..., P, 3] for positions [..., P, 3] with no, one or two leading dims: the same per-env values; with
    several elements and fibers active, forces are minus the energy gradient (each element its own fiber)."""
    b = ParticleBuilder(dim=3)
    pts = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
    idx = [b.add_particle(p, mass=0.1) for p in pts]
    b.add_tetrahedron(idx[0], idx[1], idx[2], idx[3], mu=MU, lam=LAM, damping=DAMP, fiber=(1.0, 0.0, 0.0), max_stress=SIGMA)
    b.add_tetrahedron(idx[1], idx[2], idx[3], idx[4], mu=MU, lam=LAM, damping=DAMP, fiber=(0.0, 1.0, 2.0), max_stress=SIGMA)
    model, rest = b.build()
    tets = model.tetrahedra
    g = torch.Generator().manual_seed(4)
    x = rest + 0.1 * torch.randn(2, 3, *rest.shape, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    a = torch.rand(2, 3, 2, generator=g, dtype=torch.float64)
    forces = tet_forces(tets, x, v, a)
    assert forces.shape == x.shape
    for i in range(2):
        torch.testing.assert_close(tet_forces(tets, x[i], v[i], a[i]), forces[i], rtol=1e-13, atol=1e-12)
        for j in range(3):
            torch.testing.assert_close(tet_forces(tets, x[i, j], v[i, j], a[i, j]), forces[i, j], rtol=1e-13, atol=1e-12)
            torch.testing.assert_close(deformation_gradient(tets, x[i, j]), deformation_gradient(tets, x)[i, j], rtol=0, atol=0)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tet_energy(tets, xr, a).sum(), xr)
    torch.testing.assert_close(tet_forces(tets, x, torch.zeros_like(v), a), -grad, rtol=1e-10, atol=1e-9)
    energy = tet_energy(tets, x, a)
    assert energy.shape == (2, 3)
    for i in range(2):
        torch.testing.assert_close(tet_energy(tets, x[i], a[i]), energy[i], rtol=1e-13, atol=0)
        for j in range(3):
            assert tet_energy(tets, x[i, j], a[i, j]).item() == pytest.approx(energy[i, j].item(), rel=1e-13)
