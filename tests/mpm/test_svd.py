"""Signed SVD and polar decomposition: reconstruction, rotations, gradients against finite differences,
and finite gradients at repeated singular values."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.mpm import polar, svd3


def rotation(gen):
    q = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0]
    return q * torch.linalg.det(q)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_signed_svd_reconstructs_with_rotations(seed):
    f = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u, s, v = svd3(f)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ v.transpose(-1, -2), f, rtol=1e-12, atol=1e-12)
    for r in (u, v):
        torch.testing.assert_close(torch.linalg.det(r), torch.ones(6, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.sign(s[..., 2]), torch.sign(torch.linalg.det(f)))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_svd_and_polar_gradients_match_finite_differences(seed):
    gen = torch.Generator().manual_seed(seed)
    # well-separated singular values: the SVD's own gradient is exact there
    f = torch.stack([rotation(gen) @ torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)) @ rotation(gen) for _ in range(3)])
    f = f.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: tuple(svd3(a))[1:] + (polar(a),), (f,))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), repeated=st.sampled_from([(1.0, 1.0, 1.0), (1.3, 1.3, 0.7), (0.8, 1.1, 1.1)]))
def test_polar_gradient_is_exact_and_svd_gradient_finite_at_repeated_singular_values(seed, repeated):
    gen = torch.Generator().manual_seed(seed)
    f = (rotation(gen) @ torch.diag(torch.tensor(repeated, dtype=torch.float64)) @ rotation(gen)).requires_grad_()
    weights = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((polar(f) * weights).sum(), f)
    eps, numeric = 1e-6, torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            d = torch.zeros(3, 3, dtype=torch.float64)
            d[i, j] = eps
            numeric[i, j] = ((polar(f.detach() + d) - polar(f.detach() - d)) * weights).sum() / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-7)
    u, s, v = svd3(f)
    loss = (u * weights).sum() + (v * weights.T).sum() + (torch.log(s.abs()) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, f)
    assert torch.isfinite(grad).all()


def _plastic(s):
    eps = torch.log(s.abs())
    dev = eps - eps.mean(-1, keepdim=True)
    norm = torch.sqrt((dev * dev).sum(-1, keepdim=True) + 1e-20)
    return torch.exp(eps - torch.clamp_min(norm - 0.05, 0.0) * dev / norm)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), which=st.sampled_from(["plastic", "identity", "square"]),
       stretch=st.sampled_from([(1.0, 1.0, 1.0), (1.3, 1.3, 0.7), (1.2, 1.0, 0.85), (1.0 + 1e-9, 1.0, 1.0)]))
def test_spectral_gradient_is_exact_at_and_near_repeated_singular_values(seed, stretch, which):
    from tphys.mpm import spectral

    g = {"plastic": _plastic, "identity": lambda s: s, "square": lambda s: s * s}[which]
    gen = torch.Generator().manual_seed(seed)
    f = rotation(gen) @ torch.diag(torch.tensor(stretch, dtype=torch.float64)) @ rotation(gen)
    weights = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    leaf = f.clone().requires_grad_()
    (grad,) = torch.autograd.grad((spectral(leaf, g) * weights).sum(), leaf)
    eps, numeric = 1e-6, torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            d = torch.zeros(3, 3, dtype=torch.float64)
            d[i, j] = eps
            numeric[i, j] = ((spectral(f.detach() + d, g) - spectral(f.detach() - d, g)) * weights).sum() / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_jacobi_svd_used_under_compile_agrees_with_lapack(seed):
    from tphys.mpm.svd import det3, jacobi_svd

    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(64, 3, 3, generator=gen, dtype=torch.float64)
    f[:16] = torch.eye(3, dtype=torch.float64)  # all singular values repeated
    f[16:32] = torch.eye(3, dtype=torch.float64) + 1e-3 * torch.randn(16, 3, 3, generator=gen, dtype=torch.float64)
    u, s, v = jacobi_svd(f)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ v.transpose(-1, -2), f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(det3(u), torch.ones(64, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(det3(v), torch.ones(64, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.abs(), torch.linalg.svdvals(f), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, svd3(f)[1], rtol=1e-12, atol=1e-12)


def test_the_c_svd_agrees_with_lapack_including_inverted_and_repeated():
    from tphys.kernels import c_kernels

    gen = torch.Generator().manual_seed(3)
    f = torch.randn(300, 3, 3, generator=gen, dtype=torch.float64)
    f[:20] = torch.eye(3, dtype=torch.float64)  # all singular values repeat
    f[20:40] = torch.diag(torch.tensor([2.0, 2.0, 0.5], dtype=torch.float64))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        u, s, v = c_kernels.svd3_cpu(f.to(dtype))
        torch.testing.assert_close(u @ torch.diag_embed(s) @ v.transpose(-1, -2), f.to(dtype), rtol=tol, atol=tol)
        torch.testing.assert_close(torch.linalg.det(u), torch.ones(300, dtype=dtype), rtol=tol, atol=tol)
        torch.testing.assert_close(torch.linalg.det(v), torch.ones(300, dtype=dtype), rtol=tol, atol=tol)
        lapack = torch.linalg.svdvals(f)
        torch.testing.assert_close(s.abs().double(), lapack, rtol=10 * tol, atol=10 * tol)
        torch.testing.assert_close(torch.sign(s[:, 2]).double(), torch.sign(torch.linalg.det(f)), rtol=0, atol=0)
