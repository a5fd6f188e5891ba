"""Signed SVD and polar decomposition of 3x3 matrices with gradients that stay finite at repeated
singular values.

``svd3(F) = (U, S, V)`` with F = U·diag(S)·Vᵀ, U and V rotations (det +1) and S sorted by magnitude,
the last one negative for an inverted F (det F < 0). Backward is Townsend's formula for square
full-rank matrices,

    dL/dF = U [ (K ∘ (UᵀŪ - ŪᵀU)) S + diag(S̄) + S (K ∘ (VᵀV̄ - V̄ᵀV)) ] Vᵀ,   K_ij = 1/(s_j² - s_i²),

with |s_j² - s_i²| floored at ``eps`` (sign kept): where singular values repeat, the bracketed
antisymmetric parts vanish for the isotropic energies MPM uses, and the floor keeps 0·∞ from
producing NaN (near repeated values the gradient is then approximate; exact elsewhere).

``spectral(F, g) = U·diag(g(s))·Vᵀ`` (isotropic g: plastic return mappings) and ``polar(F) = U·Vᵀ``
(g = 1, the rotation of F = R·S) have exact backwards, finite wherever s_i + s_j ≠ 0, repeated singular
values included (the rest state F = I is one); see ``spectral``.

The decomposition (``signed_svd``) is the C kernel of ``tphys.kernels.c_kernels`` where ``backend`` lets
it run (``tphys.kernels.runs_c_kernels``; Jacobi on FᵀF in double), LAPACK's otherwise, and cyclic Jacobi
on FᵀF in torch ops (elementwise, so it fuses) under torch.compile. Every function here takes ``backend``
("auto" | "triton" | "cpu" | "torch", see ``tphys.kernels``): it picks the SVD and the 3x3 products.
``spectral`` and ``polar`` take a precomputed decomposition (``parts``) so that one SVD per particle serves a
return mapping and a stress.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.kernels import c_kernels, matmul3, runs_c_kernels

EPS = 1e-6


def det3(f: Tensor) -> Tensor:
    """det of [..., 3, 3] matrices by cofactors (elementwise: fuses under torch.compile, unlike LU)."""
    c0, c1, c2 = f[..., :, 0], f[..., :, 1], f[..., :, 2]
    return (c0 * torch.linalg.cross(c1, c2)).sum(-1)


SWEEPS = 6  # cyclic Jacobi sweeps: quadratic convergence; 6 reach float64 round-off on 3x3


def _rotate(a: dict, v: list, p: int, q: int) -> None:
    """One Jacobi rotation zeroing a[p, q] of the symmetric matrix held in ``a`` (entries keyed (i, j), i <= j),
    accumulated into the columns of ``v`` (v[k][c] = entry (k, c)); in place on the dicts/lists of tensors."""
    r = 3 - p - q
    apq, app, aqq = a[p, q], a[p, p], a[q, q]
    small = apq.abs() < 1e-30
    tau = (aqq - app) / (2 * torch.where(small, torch.ones_like(apq), apq))
    t = torch.where(small, torch.zeros_like(apq), torch.sign(tau) / (tau.abs() + torch.sqrt(1 + tau * tau)))
    t = torch.where(tau == 0, torch.where(small, t, torch.ones_like(t)), t)  # tau = 0: 45 degrees
    c = 1 / torch.sqrt(1 + t * t)
    sn = t * c
    rp, rq = (min(r, p), max(r, p)), (min(r, q), max(r, q))
    arp, arq = a[rp], a[rq]
    a[p, p], a[q, q], a[p, q] = app - t * apq, aqq + t * apq, torch.zeros_like(apq)
    a[rp], a[rq] = c * arp - sn * arq, sn * arp + c * arq
    for k in range(3):
        vkp, vkq = v[k][p], v[k][q]
        v[k][p], v[k][q] = c * vkp - sn * vkq, sn * vkp + c * vkq


def _swap(lam: list, vcols: list, i: int, j: int) -> None:
    """Order eigenpairs i < j by decreasing eigenvalue (a compare-swap, elementwise)."""
    swap = lam[j] > lam[i]
    lam[i], lam[j] = torch.where(swap, lam[j], lam[i]), torch.where(swap, lam[i], lam[j])
    vcols[i], vcols[j] = torch.where(swap[..., None], vcols[j], vcols[i]), torch.where(swap[..., None], vcols[i], vcols[j])


def signed_svd(f: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """(U, S, V) of [..., 3, 3] matrices, no autograd: U, V rotations, |S| decreasing, a reflection in the sign
    of the smallest singular value.

    Eager: the C kernel (``tphys.kernels.c_kernels.svd3_cpu``) where ``runs_c_kernels(f, backend)``, else LAPACK
    (``torch.linalg.svd``) made signed. Under torch.compile: ``jacobi_svd`` (elementwise, so it fuses).
    """
    f = f.detach()
    if runs_c_kernels(f, backend):
        return c_kernels.svd3_cpu(f)
    if not torch.compiler.is_compiling():
        u, s, vh = torch.linalg.svd(f)
        v = vh.transpose(-1, -2)
        flip_u = (det3(u) < 0)[..., None]
        flip_v = (det3(v) < 0)[..., None]
        last = torch.tensor([1.0, 1.0, -1.0], dtype=f.dtype, device=f.device)
        u = torch.where(flip_u[..., None], u * last, u)  # flips column 2
        v = torch.where(flip_v[..., None], v * last, v)
        return u, torch.where(flip_u ^ flip_v, s * last, s), v
    return jacobi_svd(f)


def jacobi_svd(f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Signed SVD by elementwise ops: cyclic Jacobi on FᵀF gives V and S², then U's first two columns
    are F·v_i/s_i (Gram-Schmidt) and its third their cross product; S sorted by magnitude."""
    ftf = f.transpose(-1, -2) @ f
    a = {(i, j): ftf[..., i, j] for i in range(3) for j in range(i, 3)}
    one, zero = torch.ones_like(ftf[..., 0, 0]), torch.zeros_like(ftf[..., 0, 0])
    v = [[one if k == c else zero for c in range(3)] for k in range(3)]
    for _ in range(SWEEPS):
        for p, q in ((0, 1), (0, 2), (1, 2)):
            _rotate(a, v, p, q)
    lam = [a[0, 0], a[1, 1], a[2, 2]]
    vcols = [torch.stack([v[k][c] for k in range(3)], -1) for c in range(3)]
    for i, j in ((0, 1), (1, 2), (0, 1)):
        _swap(lam, vcols, i, j)
    flip = (vcols[0] * torch.linalg.cross(vcols[1], vcols[2])).sum(-1, keepdim=True) < 0
    vcols[2] = torch.where(flip, -vcols[2], vcols[2])
    fv = [(f @ col.unsqueeze(-1)).squeeze(-1) for col in vcols]
    norm0 = torch.linalg.vector_norm(fv[0], dim=-1, keepdim=True)
    u0 = torch.where(norm0 > 1e-30, fv[0] / norm0.clamp_min(1e-30), torch.eye(3, dtype=f.dtype, device=f.device)[0])  # F = 0: any axis
    u1 = fv[1] - (u0 * fv[1]).sum(-1, keepdim=True) * u0  # Gram-Schmidt against round-off
    # rank < 2 (F v_1 = 0): any unit vector orthogonal to u0
    axes = torch.eye(3, dtype=f.dtype, device=f.device)
    across = [torch.linalg.cross(u0, axes[k].expand_as(u0)) for k in range(2)]
    fallback = torch.where((torch.linalg.vector_norm(across[0], dim=-1, keepdim=True) > 0.5), across[0], across[1])
    norm1 = torch.linalg.vector_norm(u1, dim=-1, keepdim=True)
    u1 = torch.where(norm1 > 1e-12 * torch.linalg.vector_norm(fv[0], dim=-1, keepdim=True), u1 / norm1.clamp_min(1e-30),
                     fallback / torch.linalg.vector_norm(fallback, dim=-1, keepdim=True).clamp_min(1e-30))
    u2 = torch.linalg.cross(u0, u1)
    s = torch.stack([(u0 * fv[0]).sum(-1), (u1 * fv[1]).sum(-1), (u2 * fv[2]).sum(-1)], -1)
    return torch.stack([u0, u1, u2], -1), s, torch.stack(vcols, -1)


class _SVD3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: Tensor, eps: float, backend: str):
        u, s, v = signed_svd(f, backend)
        ctx.save_for_backward(u, s, v)
        ctx.eps = eps
        return u, s, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u, grad_s, grad_v):
        u, s, v = ctx.saved_tensors
        s2 = s * s
        gap = s2.unsqueeze(-2) - s2.unsqueeze(-1)  # [..., i, j] = s_j² - s_i²
        gap = torch.where(gap >= 0, gap.clamp_min(ctx.eps), gap.clamp_max(-ctx.eps))
        k = 1.0 / gap
        k = k - torch.diag_embed(torch.diagonal(k, dim1=-2, dim2=-1))  # zero diagonal
        inner = torch.zeros_like(u)
        if grad_u is not None:
            ut_gu = u.transpose(-1, -2) @ grad_u
            inner = inner + (k * (ut_gu - ut_gu.transpose(-1, -2))) * s.unsqueeze(-2)
        if grad_s is not None:
            inner = inner + torch.diag_embed(grad_s)
        if grad_v is not None:
            vt_gv = v.transpose(-1, -2) @ grad_v
            inner = inner + s.unsqueeze(-1) * (k * (vt_gv - vt_gv.transpose(-1, -2)))
        return u @ inner @ v.transpose(-1, -2), None, None


def svd3(f: Tensor, eps: float = EPS, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Signed SVD of [..., 3, 3] matrices: (U [..., 3, 3], S [..., 3], V [..., 3, 3]); see the module docstring."""
    if f.shape[-2:] != (3, 3):
        raise ValueError(f"svd3 needs [..., 3, 3] matrices, got shape {tuple(f.shape)}")
    return _SVD3.apply(f, eps, backend)


class _Spectral(torch.autograd.Function):
    """F -> U·diag(g(s))·Vᵀ for an isotropic g (a function of the singular values that commutes with permuting them).
    The decomposition, g(s) and its Jacobian come in precomputed (``spectral``): forward-mode AD, which
    gives the Jacobian, is off inside an autograd.Function's forward."""

    @staticmethod
    def forward(ctx, f: Tensor, u: Tensor, s: Tensor, v: Tensor, out: Tensor, jac: Tensor, eps: float, backend: str):
        ctx.save_for_backward(u, s, v, out, jac)
        ctx.eps, ctx.backend = eps, backend
        return matmul3(u * out.unsqueeze(-2), v.transpose(-1, -2), backend)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        u, s, v, out, jac = ctx.saved_tensors
        return spectral_vjp(u, s, v, [(out, jac, grad)], ctx.eps, ctx.backend), None, None, None, None, None, None, None


def spectral_vjp(u: Tensor, s: Tensor, v: Tensor, terms: list, eps: float = EPS, backend: str = "auto") -> Tensor:
    """dL/dF [..., 3, 3] for F = U·diag(s)·Vᵀ given, per term (g(s) [..., 3], dg/ds [..., k, i], dL/d(U·diag(g)·Vᵀ)),
    summed over the terms (maps of one decomposition share the rotations). See ``spectral``."""
    gap = s.unsqueeze(-1) - s.unsqueeze(-2)
    close = gap.abs() < eps
    total = s.unsqueeze(-1) + s.unsqueeze(-2)
    total = torch.where(total >= 0, total.clamp_min(eps), total.clamp_max(-eps))
    ut = u.transpose(-1, -2)
    z = 0.0
    for out, jac, grad in terms:
        m = matmul3(matmul3(ut, grad, backend), v, backend)
        # off-diagonal: the symmetric part scales by (g_i - g_j)/(s_i - s_j), the antisymmetric one by (g_i + g_j)/(s_i + s_j)
        limit = torch.diagonal(jac, dim1=-2, dim2=-1).unsqueeze(-1) - jac  # d g_i/d s_i - d g_i/d s_j
        minus = torch.where(close, limit, (out.unsqueeze(-1) - out.unsqueeze(-2)) / torch.where(close, 1.0, gap))
        plus = (out.unsqueeze(-1) + out.unsqueeze(-2)) / total
        sym, skew = 0.5 * (m + m.transpose(-1, -2)), 0.5 * (m - m.transpose(-1, -2))
        part = sym * minus + skew * plus
        diag = (torch.diagonal(m, dim1=-2, dim2=-1).unsqueeze(-1) * jac).sum(-2)  # Σ_k M_kk d g_k / d s_i
        z = z + part - torch.diag_embed(torch.diagonal(part, dim1=-2, dim2=-1)) + torch.diag_embed(diag)
    return matmul3(matmul3(u, z, backend), v.transpose(-1, -2), backend)


def _spectral_parts(f: Tensor, g, parts: tuple | None, backend: str) -> tuple[Tensor, ...]:
    """(U, S, V, g(S), dg/dS [..., k, i]) of f, without autograd; the Jacobian by forward-mode AD (saves
    nothing, so checkpoint's saved-tensor hooks never fire). ``parts``: f's (U, S, V) if already known."""
    with torch.no_grad():
        u, s, v = signed_svd(f, backend) if parts is None else parts
        if g is None:  # the polar rotation: g = 1
            return u, s, v, torch.ones_like(s), torch.zeros_like(u)
        columns = []
        with fwAD.dual_level():
            for i in range(3):
                out, tangent = fwAD.unpack_dual(g(fwAD.make_dual(s, torch.eye(3, dtype=s.dtype, device=s.device)[i].expand_as(s))))
                columns.append(torch.zeros_like(s) if tangent is None else tangent)
        return u, s, v, out.clone(), torch.stack(columns, -1)


def spectral(f: Tensor, g, eps: float = EPS, parts: tuple | None = None, backend: str = "auto") -> Tensor:
    """U·diag(g(s))·Vᵀ [..., 3, 3] of the signed SVD of f [..., 3, 3], for an isotropic g: s [..., 3] -> [..., 3].

    Its backward is exact at repeated singular values: off the diagonal (in the singular bases) the
    symmetric part of the incoming gradient scales by the divided difference (g_i - g_j)/(s_i - s_j),
    which tends to d g_i/d s_i - d g_i/d s_j where s_i = s_j, and the antisymmetric part by
    (g_i + g_j)/(s_i + s_j). (Plastic return mappings and the polar rotation are such maps; at rest,
    F = I, all singular values repeat.) ``parts``: ``signed_svd(f)`` when the caller has it already.
    """
    if f.shape[-2:] != (3, 3):
        raise ValueError(f"spectral needs [..., 3, 3] matrices, got shape {tuple(f.shape)}")
    return _Spectral.apply(f, *_spectral_parts(f, g, parts, backend), eps, backend)


def polar(f: Tensor, eps: float = EPS, parts: tuple | None = None, backend: str = "auto") -> Tensor:
    """Rotation R [..., 3, 3] of the polar decomposition F = R·S (R = U·Vᵀ of the signed SVD); ``spectral`` with g = 1."""
    if f.shape[-2:] != (3, 3):
        raise ValueError(f"polar needs [..., 3, 3] matrices, got shape {tuple(f.shape)}")
    return _Spectral.apply(f, *_spectral_parts(f, None, parts, backend), eps, backend)
