"""The MPM materials' closed forms by hand (issue 22: the mutation job's tests for ``tphys/mpm/materials.py``).

F = U·diag(s)·Vᵀ is built from chosen rotations and stretches, so every return mapping and stress has a closed form
in (U, s, V) written out here in numpy: Lamé parameters from (E, nu), plasticine's von Mises return on the deviatoric
Hencky strain, sand's Drucker-Prager cone and tip, water's volume-only F, and the five Kirchhoff stresses.
"""

import math

import numpy as np
import pytest
import torch

from tphys.mpm import Material, kirchhoff_stress, project
from tphys.mpm.materials import elastic_stress

E, NU, YIELD, PHI = 1e4, 0.3, 300.0, 25.0
MU, LAM = E / (2 * (1 + NU)), E * NU / ((1 + NU) * (1 - 2 * NU))


def rotation(axis, angle):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


U, V = rotation([1.0, 2.0, 0.5], 0.7), rotation([-0.3, 1.0, 2.0], 1.2)


def compose(s):
    return U @ np.diag(s) @ V.T


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def mat(kind):
    return Material.from_young(kind, E, NU, yield_stress=YIELD, friction_angle=PHI)


def test_lame_parameters_from_young_and_poisson_and_bad_inputs():
    m = Material.from_young("corotated", 2e5, 0.25, yield_stress=7.0)
    assert m.mu == pytest.approx(2e5 / 2.5, rel=1e-15) and m.lam == pytest.approx(2e5 * 0.25 / (1.25 * 0.5), rel=1e-15)
    assert (m.kind, m.yield_stress, m.friction_angle) == ("corotated", 7.0, 30.0)
    with pytest.raises(ValueError, match="unknown material kind 'jelly'; valid: corotated, neo_hookean, water, plasticine, sand"):
        Material.from_young("jelly", 1.0, 0.3)
    for young, poisson in ((0.0, 0.3), (-1.0, 0.3), (1.0, 0.5), (1.0, -1.0)):
        with pytest.raises(ValueError, match=f"need young > 0 and -1 < poisson < 0.5, got {young}, {poisson}"):
            Material.from_young("sand", young, poisson)
    Material.from_young("sand", 1e-9, 0.4999)  # just inside
    Material.from_young("sand", 1.0, -0.9999)


def plasticine_flow(s):
    eps = np.log(s)
    dev = eps - eps.mean()
    norm = np.linalg.norm(dev)
    excess = max(norm - YIELD / (2 * MU), 0.0)
    return np.exp(eps - excess * dev / norm)


def sand_flow(s):
    eps = np.log(s)
    tr = eps.sum()
    if tr >= 0:
        return np.ones(3)
    sine = math.sin(math.radians(PHI))
    alpha = math.sqrt(2 / 3) * 2 * sine / (3 - sine)
    dev = eps - tr / 3
    norm = np.linalg.norm(dev)
    excess = max(norm + (3 * LAM + 2 * MU) / (2 * MU) * tr * alpha, 0.0)
    return np.exp(eps - excess * dev / norm)


@pytest.mark.parametrize("kind, s, moves", [
    ("plasticine", [1.3, 0.9, 0.85], True),  # beyond yield: onto the surface
    ("plasticine", [1.01, 0.995, 0.996], False),  # inside: unchanged
    ("sand", [0.7, 0.98, 1.1], True),  # compressed with shear beyond the cone
    ("sand", [0.9, 0.9, 0.895], False),  # compressed, nearly hydrostatic: inside the cone
    ("sand", [1.2, 0.95, 0.9], True),  # tr eps > 0: to the tip, F = I (U Vᵀ)
])
def test_return_mappings_by_hand(kind, s, moves):
    s = np.array(s)
    flow = plasticine_flow if kind == "plasticine" else sand_flow
    expected = compose(flow(s))
    assert moves == (not np.allclose(flow(s), s, rtol=1e-9, atol=0))
    for backend in ("torch", "auto"):
        out = project(mat(kind), t(compose(s))[None], backend=backend)[0]
        torch.testing.assert_close(out, t(expected), rtol=1e-9, atol=1e-10)


def test_water_projects_to_the_cube_root_of_the_volume_keeping_its_sign():
    s = np.array([1.2, 0.9, 0.7])
    f = compose(s)
    j = np.prod(s)
    torch.testing.assert_close(project(mat("water"), t(f)[None])[0], t(j ** (1 / 3) * np.eye(3)), rtol=1e-12, atol=1e-12)
    flipped = f @ np.diag([1.0, 1.0, -1.0])  # J < 0: an inverted element keeps its sign
    torch.testing.assert_close(project(mat("water"), t(flipped)[None])[0], t(-(j ** (1 / 3)) * np.eye(3)), rtol=1e-12, atol=1e-12)
    for kind in ("corotated", "neo_hookean"):
        assert project(mat(kind), t(f)[None]) is not None
        torch.testing.assert_close(project(mat(kind), t(f)[None])[0], t(f), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown material kind 'gel'; valid: corotated, neo_hookean, water, plasticine, sand"):
        project(Material("gel", 1.0, 1.0), t(f)[None])


def stress_by_hand(kind, s):
    f = compose(s)
    j = np.prod(s)
    r = U @ V.T
    if kind in ("corotated", "plasticine"):
        return 2 * MU * (f - r) @ f.T + LAM * (j - 1) * j * np.eye(3)
    if kind == "neo_hookean":
        return MU * (f @ f.T - np.eye(3)) + LAM * math.log(j) * np.eye(3)
    if kind == "water":
        return (LAM + 2 * MU / 3) * (j - 1) * j * np.eye(3)
    eps = np.log(s)
    return U @ np.diag(2 * MU * eps + LAM * eps.sum()) @ U.T


@pytest.mark.parametrize("kind", ["corotated", "plasticine", "neo_hookean", "water", "sand"])
def test_kirchhoff_stresses_by_hand(kind):
    s = np.array([1.15, 0.92, 0.81])
    for backend in ("torch", "auto"):
        tau = kirchhoff_stress(mat(kind), t(compose(s))[None], backend=backend)[0]
        torch.testing.assert_close(tau, t(stress_by_hand(kind, s)), rtol=1e-9, atol=1e-8)
    with pytest.raises(ValueError, match="unknown material kind 'gel'; valid: corotated, neo_hookean, water, plasticine, sand"):
        kirchhoff_stress(Material("gel", 1.0, 1.0), t(compose(s))[None])


def test_neo_hookean_log_is_floored_for_inverted_elements():
    """J <= 0 (an inverted element): log(J) is taken at the floor 1e-4, a finite stress."""
    f = compose(np.array([1.0, 1.0, 1.0])) @ np.diag([1.0, 1.0, -1.0])
    tau = kirchhoff_stress(mat("neo_hookean"), t(f)[None], backend="torch")[0]
    torch.testing.assert_close(tau, t(MU * (f @ f.T - np.eye(3)) + LAM * math.log(1e-4) * np.eye(3)), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("kind", ["corotated", "neo_hookean", "water", "plasticine", "sand"])
def test_elastic_stress_is_the_projection_and_its_stress_by_hand(kind):
    """(F, tau) of the one-SVD path, torch ops (fused=False) and the default (C kernels where built)."""
    s = np.array([1.3, 0.9, 0.85]) if kind != "sand" else np.array([0.7, 0.98, 1.1])
    flow = {"plasticine": plasticine_flow, "sand": sand_flow, "water": None}.get(kind, lambda x: x)
    if kind == "water":
        j = np.prod(s)
        f_expected, tau_expected = j ** (1 / 3) * np.eye(3), None
    else:
        f_expected = compose(flow(s))
        tau_expected = stress_by_hand(kind, flow(s))
    for options in (dict(fused=False, backend="torch"), dict()):
        f, tau = elastic_stress(mat(kind), t(compose(s))[None], **options)
        torch.testing.assert_close(f[0], t(f_expected), rtol=1e-9, atol=1e-10)
        if tau_expected is not None:
            torch.testing.assert_close(tau[0], t(tau_expected), rtol=1e-9, atol=1e-8)
        else:
            jj = np.prod(s)
            torch.testing.assert_close(tau[0], t((LAM + 2 * MU / 3) * (jj - 1) * jj * np.eye(3)), rtol=1e-9, atol=1e-8)
    with pytest.raises(ValueError, match="^fused=True runs a C kernel, which backend='torch' rules out$"):
        elastic_stress(mat(kind), t(compose(s))[None], fused=True, backend="torch")


def test_default_backend_is_auto_and_torch_backend_runs_no_c_kernel(monkeypatch):
    """No backend given: "auto" (the same stresses); backend="torch": torch ops only, no C kernel is entered (every C
    entry point goes through ``c_kernels.call``, made to fail here), for every kind's projection and stress."""
    from tphys.kernels import c_kernels

    s = np.array([1.15, 0.92, 0.81])
    f = t(compose(s))[None]
    for kind in ("corotated", "plasticine", "neo_hookean", "water", "sand"):
        torch.testing.assert_close(kirchhoff_stress(mat(kind), f), t(stress_by_hand(kind, s))[None], rtol=1e-9, atol=1e-8)

    def no_c(name, *args):
        raise AssertionError(f"C kernel {name} entered under backend='torch'")

    monkeypatch.setattr(c_kernels, "call", no_c)
    for kind in ("corotated", "plasticine", "neo_hookean", "water", "sand"):
        tau = kirchhoff_stress(mat(kind), f, backend="torch")
        torch.testing.assert_close(tau[0], t(stress_by_hand(kind, s)), rtol=1e-9, atol=1e-8)
        project(mat(kind), f, backend="torch")
        elastic_stress(mat(kind), f, backend="torch")
    if c_kernels.available(torch.float64):  # the patch is live: "auto" on CPU enters the C kernels
        with pytest.raises(AssertionError, match="C kernel"):
            kirchhoff_stress(mat("corotated"), f, backend="auto")


@pytest.mark.parametrize("kind", ["corotated", "plasticine", "neo_hookean", "water", "sand"])
def test_batches_of_any_leading_dims_give_each_matrix_its_own_stress(kind):
    """[..., 3, 3] -> [..., 3, 3] with one and two leading dims of different F's (default backend): every entry is the
    stress (and projection) of its own F."""
    stretches = [np.array(s) for s in ([1.15, 0.92, 0.81], [0.7, 0.98, 1.1], [1.3, 0.9, 0.85], [0.95, 1.05, 1.0],
                                         [1.2, 1.1, 0.6], [0.85, 0.9, 0.95])]
    f = t(np.stack([compose(s) for s in stretches])).reshape(2, 3, 3, 3)
    tau, projected = kirchhoff_stress(mat(kind), f), project(mat(kind), f)
    flow = {"plasticine": plasticine_flow, "sand": sand_flow}.get(kind)
    for k, s in enumerate(stretches):
        i, j = divmod(k, 3)
        torch.testing.assert_close(tau[i, j], t(stress_by_hand(kind, s)), rtol=1e-9, atol=1e-8)
        if flow is not None:
            torch.testing.assert_close(projected[i, j], t(compose(flow(s))), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(kirchhoff_stress(mat(kind), f[1]), tau[1], rtol=1e-12, atol=1e-9)


def test_sand_at_rest_sits_on_the_tip_only_rotations_pass_the_gradient():
    """tr eps = 0 (F = I, every particle's start) projects to the tip F = R: the projection's vector-Jacobian product at
    F = I is that of the polar rotation, the skew part (W - Wᵀ)/2 of the incoming W (no volumetric part)."""
    f = torch.eye(3, dtype=torch.float64)[None].clone().requires_grad_(True)
    w = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for backend in ("torch", "auto"):
        (grad,) = torch.autograd.grad((project(mat("sand"), f, backend=backend) * w).sum(), f)
        torch.testing.assert_close(grad, (w - w.transpose(-1, -2)) / 2, rtol=1e-9, atol=1e-9)


def test_plasticine_takes_the_fused_c_path_by_default_on_cpu_with_the_torch_twins_values_and_gradients(monkeypatch):
    """Where the C kernels run, plasticine's default elastic stress is the fused C loop (``plasticine_stress``), equal in
    value and gradient to the torch ops; other kinds never enter it."""
    from tphys.kernels import c_kernels

    if not c_kernels.available(torch.float64):
        pytest.skip("no C compiler")
    names, call = [], c_kernels.call
    monkeypatch.setattr(c_kernels, "call", lambda name, *args: names.append(name) or call(name, *args))
    s = np.array([1.3, 0.9, 0.85])
    f = t(compose(s))[None].requires_grad_(True)
    w1, w2 = (torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in (1, 2))
    fc, tau_c = elastic_stress(mat("plasticine"), f)
    assert "plasticine_stress" in names
    (g_c,) = torch.autograd.grad((fc * w1).sum() + (tau_c * w2).sum() * 1e-4, f)
    ft, tau_t = elastic_stress(mat("plasticine"), f, fused=False, backend="torch")
    (g_t,) = torch.autograd.grad((ft * w1).sum() + (tau_t * w2).sum() * 1e-4, f)
    torch.testing.assert_close(fc, ft, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(tau_c, tau_t, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(g_c, g_t, rtol=1e-7, atol=1e-8)
    names.clear()
    elastic_stress(mat("corotated"), f)
    assert "plasticine_stress" not in names


def test_plasticine_at_rest_stays_put_with_a_finite_projection():
    """F = I or a rotation (zero deviatoric strain, where the deviator's norm is 0 and only its floor keeps the flow
    finite): the projection is F itself."""
    for f in (np.eye(3), U):
        out = project(mat("plasticine"), t(f)[None], backend="torch")[0]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, t(f), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["plasticine", "sand"])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_the_return_mapping_materials_take_one_svd_for_the_projection_and_the_stress(kind, backend, monkeypatch):
    """``elastic_stress``'s promise: plasticine and sand reuse the trial F's singular bases for the projected F and its
    stress, one SVD per call (the project-then-stress path gives the same values with two)."""
    import tphys.mpm.materials as materials
    import tphys.mpm.svd as svd

    calls = []
    original = svd.signed_svd

    def counted(f, backend="auto"):
        calls.append(backend)
        return original(f, backend)

    monkeypatch.setattr(svd, "signed_svd", counted)
    monkeypatch.setattr(materials, "signed_svd", counted)
    s = np.array([1.3, 0.9, 0.85]) if kind != "sand" else np.array([0.7, 0.98, 1.1])
    elastic_stress(mat(kind), t(compose(s))[None], fused=False, backend=backend)
    assert len(calls) == 1
    calls.clear()
    f = project(mat(kind), t(compose(s))[None], backend=backend)
    kirchhoff_stress(mat(kind), f, backend=backend)
    assert len(calls) >= 2  # the count sees the SVDs of the two-step path (sand: 3)
