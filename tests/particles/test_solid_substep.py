"""The fused solid substep (hand-written VJP; torch backend and C backend) against its autograd twin, finite
differences, and under compile (torch backend)."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tphys.autodiff import twice_differentiable
from tphys.particles import ParticleBuilder
from tphys.particles.meshing import box_mesh
from tphys.particles.solid_substep import SolidSubstep, _Substep


def solid(seed: int, cells=(2, 1, 1), ground=True):
    """A random block: random Lamé moduli, damping, fibers and ground law; rest positions [P, 3] float64."""
    gen = torch.Generator().manual_seed(seed)
    u = lambda: float(torch.rand(1, generator=gen))  # noqa: E731
    b = ParticleBuilder(dim=3)
    vertices, tets = box_mesh([0.0, 0.0, 0.0], [0.1 * cells[0], 0.1 * cells[1], 0.1 * cells[2]], cells)
    fibers = torch.nn.functional.normalize(torch.randn(len(tets), 3, generator=gen, dtype=torch.float64), dim=-1).tolist()
    b.add_solid(vertices, tets, density=1000.0, mu=10 ** (3 + 2 * u()), lam=10 ** (3 + 2 * u()), damping=5 * u(), fiber=fibers,
                max_stress=1e4 * u())
    if ground:
        b.set_ground(height=0.02 * u(), stiffness=3e4, damping=300 * u(), friction=u(), slip=1e-2, smoothing=1e-3)
    return b.build()


def random_state(model, rest, n, gen):
    """x, v [n, P, 3], activation [n, T]: deformed, moving, partly below the ground; float64."""
    x = rest + 0.01 * torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64)
    x[..., 1] -= 0.015
    v = 0.5 * torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64)
    activation = 2 * torch.rand(n, model.tetrahedra.corners.shape[0], generator=gen, dtype=torch.float64) - 1
    return x, v, activation


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), ground=st.booleans())
def test_fused_substep_equals_its_twin_in_value_and_vector_jacobian_product(backend, seed, n, ground):
    model, rest = solid(seed, ground=ground)
    gen = torch.Generator().manual_seed(seed + 1)
    x, v, activation = random_state(model, rest, n, gen)
    stepper = SolidSubstep(model, 1e-3, backend=backend)
    inputs = [t.clone().requires_grad_() for t in (x, v, activation)]
    weights = [torch.randn(n, *rest.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    fused, twin = _Substep.apply(*inputs, stepper), stepper.twin(*inputs)
    for a, b in zip(fused, twin):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), inputs) for out in (fused, twin)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
@example(seed=164)
def test_fused_rollout_gradient_matches_central_finite_differences(seed):
    """Ten substeps in contact, float64: autograd through the fused node (torch backend; the C backend's:
    ``test_fem_kernels``) against gradcheck's central differences."""
    model, rest = solid(seed, cells=(1, 1, 1))
    x, v, activation = random_state(model, rest, 1, torch.Generator().manual_seed(seed))
    stepper = SolidSubstep(model, 5e-4, backend="torch")

    def rollout(x, v, activation):
        for _ in range(10):
            x, v = stepper(x, v, activation)
        return x, v

    # eps = 1e-8: at 1e-7 the central difference's truncation error (~eps^2 f''') exceeded atol on stiff seeds (seed=164:
    # 2.8e-3 against a Jacobian of 594, for the plain autograd twin too); round-off at 1e-8 is ~1e-7
    assert torch.autograd.gradcheck(rollout, [t.requires_grad_() for t in (x, v, activation)], eps=1e-8, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_twin_takes_over_for_forward_mode_double_backward_and_parameter_gradients(backend):
    model, rest = solid(0)
    x, v, activation = random_state(model, rest, 2, torch.Generator().manual_seed(0))
    stepper = SolidSubstep(model, 1e-3, backend=backend)
    x.requires_grad_()
    assert stepper(x, v, activation)[1].grad_fn.name().startswith("_SubstepBackward")
    with twice_differentiable():
        assert not stepper(x, v, activation)[1].grad_fn.name().startswith("_SubstepBackward")
    with fwAD.dual_level():
        out = stepper(fwAD.make_dual(x.detach(), torch.ones_like(x)), v, activation)[1]
        assert fwAD.unpack_dual(out).tangent is not None
    torch.testing.assert_close(stepper(x, v, activation)[1], stepper.twin(x, v, activation)[1], rtol=1e-12, atol=1e-12)


def test_compiled_substep_equals_eager_forward_and_backward():
    model, rest = solid(3)
    x, v, activation = random_state(model, rest, 2, torch.Generator().manual_seed(3))
    eager, compiled = SolidSubstep(model, 1e-3, backend="torch"), SolidSubstep(model, 1e-3, compile=True, backend="torch")
    grads = torch.randn_like(x), torch.randn_like(v)
    for a, b in zip(eager.forward_fn(x, v, activation), compiled.forward_fn(x, v, activation)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(eager.backward_fn(x, v, activation, *grads), compiled.backward_fn(x, v, activation, *grads)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * a.abs().max().item())


def test_rejects_models_it_does_not_cover():
    b = ParticleBuilder(dim=3)
    b.add_particle([0.0, 0.0, 0.0], mass=1.0)
    b.add_particle([1.0, 0.0, 0.0], mass=1.0)
    b.add_spring(0, 1, stiffness=1.0)
    model, _ = b.build()
    with pytest.raises(ValueError, match="tetrahedra only"):
        SolidSubstep(model, 1e-3)
