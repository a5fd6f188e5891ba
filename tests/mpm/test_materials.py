"""MPM materials: stress-free rest states, the return mappings' yield surfaces, gradients against FD."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.mpm import KINDS, Material, kirchhoff_stress, project, svd3

EYE = torch.eye(3, dtype=torch.float64)


def material(kind):
    return Material.from_young(kind, 1e4, 0.3, yield_stress=300.0, friction_angle=30.0)


@pytest.mark.parametrize("kind", KINDS)
def test_rest_state_is_stress_free(kind):
    m = material(kind)
    f = project(m, EYE.expand(2, 3, 3).clone())
    torch.testing.assert_close(f, EYE.expand(2, 3, 3), rtol=0, atol=1e-12)
    assert kirchhoff_stress(m, f).abs().max() < 1e-9


def test_plasticine_projects_onto_the_von_mises_surface_and_keeps_volume():
    m = material("plasticine")
    f = torch.diag(torch.tensor([1.3, 0.9, 0.85], dtype=torch.float64))[None]
    projected = project(m, f)
    eps = torch.log(svd3(projected)[1].abs())
    deviator = eps - eps.mean(-1, keepdim=True)
    assert math.isclose(deviator.norm().item(), m.yield_stress / (2 * m.mu), rel_tol=1e-9)
    assert math.isclose(torch.linalg.det(projected).item(), torch.linalg.det(f).item(), rel_tol=1e-9), "plastic flow is isochoric"
    small = torch.diag(torch.tensor([1.001, 0.9995, 0.9995], dtype=torch.float64))[None]
    torch.testing.assert_close(project(m, small), small, rtol=1e-12, atol=1e-12)


def test_sand_projects_expansion_to_the_tip_and_leaves_the_cone_interior():
    m = material("sand")
    stretched = torch.diag(torch.tensor([1.2, 1.1, 1.05], dtype=torch.float64))[None]
    torch.testing.assert_close(project(m, stretched), EYE[None], rtol=1e-12, atol=1e-12)
    squeezed = torch.diag(torch.tensor([0.9, 0.9, 0.89], dtype=torch.float64))[None]  # compressed, nearly hydrostatic: inside
    torch.testing.assert_close(project(m, squeezed), squeezed, rtol=1e-10, atol=1e-10)


def test_water_keeps_only_the_volume():
    m = material("water")
    f = torch.tensor([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 0.95]], dtype=torch.float64)[None]
    projected = project(m, f)
    j = torch.linalg.det(f)
    torch.testing.assert_close(projected, j.pow(1 / 3)[:, None, None] * EYE)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(KINDS))
def test_stress_of_the_projected_gradient_matches_finite_differences(seed, kind):
    gen = torch.Generator().manual_seed(seed)
    stretch = torch.tensor([1.1, 0.95, 0.8], dtype=torch.float64) * (1 + 0.05 * torch.rand(3, generator=gen, dtype=torch.float64))
    q = [torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0] for _ in range(2)]
    f = (q[0] * torch.linalg.det(q[0])) @ torch.diag(stretch) @ (q[1] * torch.linalg.det(q[1])).T
    m = material(kind)
    stress = lambda a: kirchhoff_stress(m, project(m, a))  # noqa: E731
    assert torch.autograd.gradcheck(stress, (f[None].requires_grad_(),), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_unknown_kind_and_bad_moduli_are_rejected():
    with pytest.raises(ValueError, match="unknown material kind 'jelly'"):
        Material.from_young("jelly", 1e4, 0.3)
    with pytest.raises(ValueError, match="poisson"):
        Material.from_young("corotated", 1e4, 0.5)


@pytest.mark.parametrize("kind", ["plasticine", "sand"])
def test_projection_at_rest_passes_gradients_through_unchanged(kind):
    """Every particle starts at F = I (all singular values repeat); inside the yield surface the projection
    is the identity map, so its vector-Jacobian product must return the incoming gradient exactly."""
    m = material(kind)
    # sand at F = I sits on the apex of its cone (tr ε = 0 projects to the tip): test it slightly compressed
    for f in (EYE[None], 0.97 * EYE[None]) if kind == "plasticine" else (0.97 * EYE[None],):
        f = f.clone().requires_grad_()
        weights = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        (grad,) = torch.autograd.grad((project(m, f) * weights).sum(), f)
        torch.testing.assert_close(grad, weights, rtol=1e-9, atol=1e-9)


def test_fused_plasticine_stress_equals_its_torch_twin_in_value_and_gradient():
    """The C forward + hand-written backward against the spectral-decomposition ops (float64): at rest (F = I, all
    singular values repeated), in the elastic range, yielding, and inverted."""
    from tphys.mpm import elastic_stress

    material = Material.from_young("plasticine", 5e3, 0.2, yield_stress=50.0)
    gen = torch.Generator().manual_seed(4)
    eye = torch.eye(3, dtype=torch.float64)
    f = torch.cat([eye.expand(5, 3, 3), eye + 1e-3 * torch.randn(20, 3, 3, generator=gen, dtype=torch.float64),
                   eye + 0.2 * torch.randn(20, 3, 3, generator=gen, dtype=torch.float64),
                   torch.diag(torch.tensor([1.0, 1.0, -0.9], dtype=torch.float64)).expand(2, 3, 3)])
    weights = [torch.randn(f.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    results = []
    for fused in (True, False):
        leaf = f.clone().requires_grad_()
        elastic, tau = elastic_stress(material, leaf, fused=fused)
        (grad,) = torch.autograd.grad((elastic * weights[0]).sum() + 1e-3 * (tau * weights[1]).sum(), leaf)
        results.append((elastic, tau, grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert (results[0][0] - f).abs().amax((-2, -1))[25:45].max() > 1e-2, "no sample yielded"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_water_stress_equals_its_torch_twin_in_value_and_gradient(dtype, monkeypatch):
    """Water's C loops (``cpu/stress.c``, the default on CPU) against its torch ops (fused=False): at rest, compressed,
    stretched and inverted F_trial; each gradient alone and both (float64 to 1e-12; float32 to 1e-4: the twin rounds J - 1 in float)."""
    from tphys.mpm import elastic_stress, materials

    calls = []
    fused = materials._WaterStress.apply
    monkeypatch.setattr(materials._WaterStress, "apply", lambda *a: calls.append(1) or fused(*a))
    material = Material("water", 0.0, Material.from_young("water", 1e5, 0.3).lam)
    gen = torch.Generator().manual_seed(5)
    eye = torch.eye(3, dtype=torch.float64)
    f = torch.cat([eye.expand(3, 3, 3), eye + 0.1 * torch.randn(20, 3, 3, generator=gen, dtype=torch.float64),
                   torch.diag(torch.tensor([1.0, 1.0, -0.9], dtype=torch.float64)).expand(2, 3, 3)]).to(dtype)
    weights = [torch.randn(f.shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2)]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)  # the C loops work in double
    for scale in ((1.0, 0.0), (0.0, 1e-5), (1.0, 1e-5)):
        results = []
        for use_c in (None, False):
            leaf = f.clone().requires_grad_()
            elastic, tau = elastic_stress(material, leaf, fused=use_c)
            loss = sum(k * (out * w).sum() for k, out, w in zip(scale, (elastic, tau), weights) if k)
            results.append((elastic, tau, *torch.autograd.grad(loss, leaf)))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, **tol)
    assert len(calls) == 3, "the C loops did not run"


@pytest.mark.parametrize("kind", ["plasticine", "sand", "water"])
def test_one_svd_elastic_stress_equals_project_then_stress_and_passes_gradcheck(kind):
    """``elastic_stress`` reuses the trial F's decomposition (water: its determinant) for the stress: the same as
    ``project`` then ``kirchhoff_stress``, float64."""
    from tphys.mpm import elastic_stress

    material = Material.from_young(kind, 5e3, 0.2, yield_stress=50.0)
    gen = torch.Generator().manual_seed(1)
    f = (torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(6, 3, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    elastic, tau = elastic_stress(material, f, fused=False)
    torch.testing.assert_close(elastic, project(material, f), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tau, kirchhoff_stress(material, project(material, f)), rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda a: elastic_stress(material, a, fused=False), (f,))
