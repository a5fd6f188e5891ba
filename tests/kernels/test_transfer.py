"""P2G / G2P: Triton kernels (interpreter on CPU) and the C loops (CPU) against their torch twins, forward and
backward, on cubic and box grids; the APIC affine-field identity; mass and momentum conservation; gradients
against finite differences."""

import os

import torch

if not torch.cuda.is_available():  # the interpreter must be on before the kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tphys.kernels import c_kernels, g2p, p2g  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("torch", "triton") if DEVICE == "cuda" else ("torch", "triton", "cpu")


def particles(seed, n, p, grid_size, dtype, margin=1.5):
    """Random particles in [margin·dx, (G_k - margin)·dx) per axis, dx = 1/max G (margin < 1.5: some stencil nodes
    fall off the grid); ``grid_size``: G or (GX, GY, GZ)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (grid_size,) * 3 if isinstance(grid_size, int) else tuple(grid_size)
    dx = 1.0 / max(shape)
    extent = torch.tensor(shape, dtype=dtype) * dx
    x = margin * dx + (extent - 2 * margin * dx) * torch.rand(n, p, 3, generator=gen, dtype=dtype)
    mass = 0.5 + torch.rand(n, p, generator=gen, dtype=dtype)
    momentum = torch.randn(n, p, 3, generator=gen, dtype=dtype)
    affine = torch.randn(n, p, 3, 3, generator=gen, dtype=dtype)
    grid_velocity = torch.randn(n, *shape, 3, generator=gen, dtype=dtype)
    return [t.to(DEVICE) for t in (x, mass, momentum, affine, grid_velocity)], dx


def vjp(fn, inputs, seed):
    """(outputs, gradients of Σ w·output w.r.t. inputs) for fixed random weights w."""
    inputs = [t.clone().requires_grad_() for t in inputs]
    outputs = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outputs]
    return outputs, torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights)), inputs)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), p=st.integers(1, 40),
       grid_size=st.one_of(st.integers(4, 9), st.tuples(st.integers(4, 9), st.integers(4, 9), st.integers(4, 9))),
       double=st.booleans(), margin=st.sampled_from([0.2, 1.5]))
def test_kernels_equal_their_torch_twins_forward_and_backward(seed, n, p, grid_size, double, margin):
    dtype = torch.float64 if double else torch.float32
    (x, mass, momentum, affine, grid_velocity), dx = particles(seed, n, p, grid_size, dtype, margin)
    tol = dict(rtol=1e-10, atol=1e-10) if double else dict(rtol=2e-5, atol=2e-5)
    for fn, inputs in ((lambda *a, b: p2g(*a, grid_size, dx, backend=b), [x, mass, momentum, affine]),
                       (lambda *a, b: g2p(*a, dx, backend=b), [x, grid_velocity])):
        twin = vjp(lambda *a: fn(*a, b="torch"), inputs, seed)
        for backend in BACKENDS[1:]:
            other = vjp(lambda *a, backend=backend: fn(*a, b=backend), inputs, seed)
            for a, b in zip(twin[0] + twin[1], other[0] + other[1]):
                atol = tol["atol"] * max(1.0, a.abs().max().item())
                torch.testing.assert_close(b, a, rtol=tol["rtol"], atol=atol, msg=lambda m, backend=backend: f"{backend}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_p2g_then_g2p_reproduces_an_affine_velocity_field_exactly(backend):
    """APIC: particles with v = b + M·x and C = M give grid velocities on that field and read back v and C."""
    (x, mass, _, _, _), dx = particles(0, 2, 200, 8, torch.float64)
    gen = torch.Generator().manual_seed(1)
    b, m = torch.randn(3, generator=gen, dtype=torch.float64).to(DEVICE), torch.randn(3, 3, generator=gen, dtype=torch.float64).to(DEVICE)
    v = b + x @ m.T
    affine = mass[..., None, None] * m.expand(*x.shape[:2], 3, 3)
    grid_mass, grid_momentum = p2g(x, mass, mass.unsqueeze(-1) * v, affine, 8, dx, backend=backend)
    touched = grid_mass > 1e-9
    grid_velocity = torch.where(touched.unsqueeze(-1), grid_momentum / grid_mass.clamp_min(1e-9).unsqueeze(-1), 0.0)
    nodes = torch.stack(torch.meshgrid(*[torch.arange(8, dtype=torch.float64, device=DEVICE) * dx] * 3, indexing="ij"), -1)
    torch.testing.assert_close(grid_velocity[touched], (b + nodes @ m.T).expand(2, 8, 8, 8, 3)[touched], rtol=1e-10, atol=1e-10)
    v_back, c_back = g2p(x, grid_velocity, dx, backend=backend)
    torch.testing.assert_close(v_back, v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c_back, m.expand_as(c_back), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_p2g_conserves_mass_and_momentum(backend):
    """Σ_i w_ip = 1 and Σ_i w_ip·dpos_ip = 0 for the quadratic B-spline: the affine term adds no net momentum."""
    (x, mass, momentum, affine, _), dx = particles(2, 2, 100, 9, torch.float64)
    grid_mass, grid_momentum = p2g(x, mass, momentum, affine, 9, dx, backend=backend)
    torch.testing.assert_close(grid_mass.sum((1, 2, 3)), mass.sum(-1), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(grid_momentum.sum((1, 2, 3)), momentum.sum(1), rtol=1e-10, atol=1e-10)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_twin_gradients_match_central_finite_differences(seed):
    (x, mass, momentum, affine, grid_velocity), dx = particles(seed, 1, 3, 5, torch.float64)
    x, mass, momentum, affine, grid_velocity = (t.cpu().requires_grad_() for t in (x, mass, momentum, affine, grid_velocity))
    assert torch.autograd.gradcheck(lambda *a: p2g(*a, 5, dx, backend="torch"), (x, mass, momentum, affine))
    assert torch.autograd.gradcheck(lambda *a: g2p(*a, dx, backend="torch"), (x, grid_velocity))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_kernel_gradients_match_central_finite_differences(backend):
    (x, mass, momentum, affine, grid_velocity), dx = particles(5, 1, 3, (5, 4, 6), torch.float64)
    x, mass, momentum, affine, grid_velocity = (t.requires_grad_() for t in (x, mass, momentum, affine, grid_velocity))
    assert torch.autograd.gradcheck(lambda *a: p2g(*a, (5, 4, 6), dx, backend=backend), (x, mass, momentum, affine), fast_mode=True)
    assert torch.autograd.gradcheck(lambda *a: g2p(*a, dx, backend=backend), (x, grid_velocity), fast_mode=True)


def test_the_c_loops_build_and_auto_dispatch_picks_them_on_cpu():
    """The C kernels must build wherever the tests run (CPU tensors, on any machine with a C compiler): a silent fall
    back to the twins would hide a broken build."""
    from tphys.kernels import resolve_backend

    assert c_kernels.available(torch.float32) and c_kernels.available(torch.float64)
    assert resolve_backend(torch.zeros(1, 1, 3), "auto") == "cpu"  # CPU tensors, also on a CUDA machine
    assert resolve_backend(torch.zeros(1, 1, 3), "torch") == "torch"
    with pytest.raises(RuntimeError, match="backend='cpu' needs"):
        resolve_backend(torch.zeros(1, 1, 3, dtype=torch.float16), "cpu")


def test_dispatch_and_input_errors():
    (x, mass, momentum, affine, grid_velocity), dx = particles(0, 1, 4, 5, torch.float32)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        p2g(x, mass, momentum, affine, 5, dx, backend="cuda")
    with pytest.raises(ValueError, match=r"affine must have shape \(1, 4, 3, 3\)"):
        p2g(x, mass, momentum, affine[..., 0], 5, dx)
    with pytest.raises(TypeError, match="mass is torch.float64"):
        p2g(x, mass.double(), momentum, affine, 5, dx)
    with pytest.raises(ValueError, match=r"x must be \[N, P, 3\]"):
        g2p(x[0], grid_velocity, dx)
    with pytest.raises(ValueError, match="grid_size must be an int >= 3"):
        p2g(x, mass, momentum, affine, 2, dx)


def test_c_matmul3_equals_matmul_with_gradients_and_broadcasting():
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(c_kernels.matmul3(a, b), a @ b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(c_kernels.matmul3(a, b.transpose(-1, -2)), a @ b.transpose(-1, -2), rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(c_kernels.matmul3, (a, b))
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(c_kernels.matmul3(eye, b), b)  # a broadcast operand without gradient
    assert torch.autograd.gradcheck(c_kernels.matmul3, (a[:1, :1].detach().clone().requires_grad_(), b))  # one with
