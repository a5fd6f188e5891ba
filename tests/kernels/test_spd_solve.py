"""The batched SPD solve (``tphys.kernels.linalg``): the C loop against LAPACK, its gradients against central
differences, NaN for matrices that are not positive definite, and the backend choice."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tphys.kernels import linalg
from tphys.kernels.linalg import spd_solve, spd_solve_torch

pytestmark = pytest.mark.skipif(not linalg.c_available(torch.float64), reason="no C compiler")


def spd_batch(batch: tuple[int, ...], d: int, dtype=torch.float64, seed: int = 0,
              condition: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(h [*batch, d, d] symmetric positive definite, rhs [*batch, d]) with random entries."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, d, d, generator=gen, dtype=torch.float64)
    h = a @ a.transpose(-1, -2) + condition * d * torch.eye(d, dtype=torch.float64)
    return h.to(dtype), torch.randn(*batch, d, generator=gen, dtype=torch.float64).to(dtype)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 9), d=st.integers(1, 40), seed=st.integers(0, 2**16), condition=st.sampled_from([1e-3, 1.0, 10.0]))
def test_the_c_loop_equals_lapack_in_float64(n, d, seed, condition):
    h, rhs = spd_batch((n,), d, seed=seed, condition=condition)
    x = spd_solve(h, rhs, "cpu")
    assert torch.allclose(x, spd_solve_torch(h, rhs), rtol=1e-9, atol=1e-12)
    if n:
        assert torch.allclose(h @ x[..., None], rhs[..., None], rtol=1e-9, atol=1e-9)  # the equation itself


def test_float32_and_leading_batch_dims():
    h, rhs = spd_batch((3, 5), 14, dtype=torch.float32, seed=1)
    x = spd_solve(h, rhs, "cpu")
    assert x.shape == (3, 5, 14) and x.dtype == torch.float32
    assert torch.allclose(x, spd_solve_torch(h, rhs), rtol=1e-4, atol=1e-6)


def test_only_the_lower_triangle_is_read():
    h, rhs = spd_batch((4,), 6, seed=2)
    garbage = h + torch.triu(torch.full_like(h, 7.0), diagonal=1)  # the strict upper triangle changed
    assert torch.equal(spd_solve(garbage, rhs, "cpu"), spd_solve(h, rhs, "cpu"))


def test_gradients_match_central_differences():
    h, rhs = spd_batch((3,), 5, seed=3)
    sym = lambda m: 0.5 * (m + m.transpose(-1, -2))  # noqa: E731  (H is symmetric by construction in the rigid engine)
    assert torch.autograd.gradcheck(lambda m, r: spd_solve(sym(m), r, "cpu"), (h.requires_grad_(), rhs.requires_grad_()))
    assert torch.autograd.gradgradcheck(lambda m, r: spd_solve(sym(m), r, "cpu"), (h, rhs))


def test_gradients_equal_lapacks():
    h, rhs = spd_batch((7,), 14, seed=4)
    g = torch.randn(7, 14, dtype=torch.float64)
    ours = torch.autograd.grad(spd_solve(h.requires_grad_(), rhs.requires_grad_(), "cpu"), (h, rhs), g)
    theirs = torch.autograd.grad(spd_solve_torch(h, rhs), (h, rhs), g)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_matrix_that_is_not_positive_definite_gives_nan_in_its_row_only():
    h, rhs = spd_batch((4,), 5, seed=5)
    h[1] = -h[1]
    h[2, 0, 0] = float("nan")
    x = spd_solve(h, rhs, "cpu")
    assert torch.isnan(x[1]).all() and torch.isnan(x[2]).all()
    assert torch.isfinite(x[[0, 3]]).all() and torch.allclose(x[[0, 3]], spd_solve_torch(h[[0, 3]], rhs[[0, 3]]))


def test_backend_choice_and_bad_input(monkeypatch):
    h, rhs = spd_batch((2,), 3, seed=6)
    calls = []
    monkeypatch.setattr(linalg, "spd_solve_c", lambda m, r: calls.append(m.dtype) or spd_solve_torch(m, r))
    spd_solve(h, rhs)  # auto: the C loop on float64 CPU tensors
    spd_solve(h.float(), rhs.float())
    spd_solve(h, rhs, "torch")
    assert calls == [torch.float64, torch.float32]
    with pytest.raises(RuntimeError, match="backend='cpu' needs"):
        spd_solve(h.to(torch.bfloat16), rhs.to(torch.bfloat16), "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        spd_solve(h, rhs, "gpu")
    with pytest.raises(ValueError, match=r"h must be \[..., D, D\] and rhs \[..., D\]"):
        spd_solve(h, rhs[:, :2])


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_runs_inside_a_compiled_function(backend):
    """Traced without a graph break: "auto" takes LAPACK there (called from Inductor's C++), "cpu" the custom op."""
    h, rhs = spd_batch((4,), 6, seed=7)
    compiled = torch.compile(lambda m, r: spd_solve(m, r, backend) * 2.0, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(h, rhs), 2.0 * spd_solve_torch(h, rhs), rtol=1e-10)
