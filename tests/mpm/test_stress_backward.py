"""The fused plasticine stress's backward in C (``cpu/stress.c``, ``materials.plasticine_stress_vjp_c``) against its
torch twin (``plasticine_stress_vjp_torch``) on the forward's own saved tensors: at rest (all singular values
repeated), elastic, yielding, inverted, with either incoming gradient absent; float32; gradcheck through the C path;
and the rule (the twin where ``cpu/stress.c`` does not build)."""

import pytest
import torch

from tphys.mpm import Material, elastic_stress, materials
from tphys.mpm.materials import _PlasticineStress, plasticine_stress_vjp_c, plasticine_stress_vjp_torch

F64 = dict(dtype=torch.float64)
MATERIAL = Material.from_young("plasticine", 5e3, 0.2, yield_stress=50.0)

pytestmark = pytest.mark.skipif(not materials.stress_c_available(torch.float64), reason="no C compiler")


def trial_gradients(dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    eye = torch.eye(3, **F64)
    f = torch.cat([eye.expand(4, 3, 3), eye + 1e-3 * torch.randn(30, 3, 3, generator=gen, **F64),
                   eye + 0.3 * torch.randn(60, 3, 3, generator=gen, **F64),
                   torch.diag(torch.tensor([1.0, 1.0, -0.9], **F64)).expand(2, 3, 3),
                   torch.diag(torch.tensor([1.2, 0.9, 0.9], **F64)).expand(2, 3, 3)])  # two stretches repeated
    return f.to(dtype).reshape(2, -1, 3, 3), [torch.randn(f.shape, generator=gen, **F64).to(dtype).reshape(2, -1, 3, 3) for _ in range(2)]


class _Ctx:
    pass


def saved(f):
    ctx = _Ctx()
    ctx.save_for_backward = lambda *t: setattr(ctx, "saved_tensors", t)
    out = _PlasticineStress.forward(ctx, f, MATERIAL, "auto")
    return ctx.saved_tensors, out


@pytest.mark.parametrize("present", [(True, True), (True, False), (False, True)])
def test_c_backward_equals_the_twin_in_float64(present):
    f, grads = trial_gradients()
    tensors, (elastic, _) = saved(f)
    assert (elastic - f).abs().amax((-2, -1)).max() > 1e-2, "no sample yielded"
    grad_f, grad_tau = (g if p else None for g, p in zip(grads, present))
    c = plasticine_stress_vjp_c(*tensors, grad_f, grad_tau, MATERIAL)
    twin = plasticine_stress_vjp_torch(*tensors, grad_f, grad_tau, MATERIAL, backend="torch")
    torch.testing.assert_close(c, twin, rtol=1e-12, atol=1e-12 * twin.abs().max().item())


def test_float32_agrees():
    f, grads = trial_gradients(torch.float32)
    tensors, _ = saved(f)
    c = plasticine_stress_vjp_c(*tensors, *grads, MATERIAL)
    assert c.dtype == torch.float32
    twin = plasticine_stress_vjp_torch(*[t.double() for t in tensors], *[g.double() for g in grads], MATERIAL, backend="torch")
    torch.testing.assert_close(c.double(), twin, rtol=1e-4, atol=1e-4 * twin.abs().max().item())


def test_gradcheck_through_the_c_backward(monkeypatch):
    calls = []
    monkeypatch.setattr(materials, "plasticine_stress_vjp_c", lambda *a: calls.append(1) or plasticine_stress_vjp_c(*a))
    gen = torch.Generator().manual_seed(5)
    f = (torch.eye(3, **F64) + 0.15 * torch.randn(8, 3, 3, generator=gen, **F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: elastic_stress(MATERIAL, a, fused=True), (f,))
    assert calls


def test_the_twin_serves_where_the_c_file_does_not_build(monkeypatch):
    f, grads = trial_gradients()
    results = []
    for available in (True, False):
        monkeypatch.setattr(materials, "stress_c_available", lambda dtype, a=available: a)
        monkeypatch.setattr(materials, "plasticine_stress_vjp_c", lambda *a: results.append("c") or plasticine_stress_vjp_c(*a))
        leaf = f.clone().requires_grad_()
        elastic, tau = elastic_stress(MATERIAL, leaf, fused=True)
        results.append(torch.autograd.grad((elastic * grads[0]).sum() + (tau * grads[1]).sum(), leaf)[0])
    assert results[0] == "c" and len(results) == 3  # C once, then the twin
    torch.testing.assert_close(results[1], results[2], rtol=1e-12, atol=1e-12 * results[2].abs().max().item())
