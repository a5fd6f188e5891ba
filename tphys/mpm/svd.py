"""Signed SVD and polar decomposition of 3x3 matrices with gradients that stay finite at repeated
singular values.

``svd3(F) = (U, S, V)`` with F = U·diag(S)·Vᵀ, U and V rotations (det +1) and S sorted by magnitude,
the last one negative for an inverted F (det F < 0). Backward is Townsend's formula for square
full-rank matrices,

    dL/dF = U [ (K ∘ (UᵀŪ - ŪᵀU)) S + diag(S̄) + S (K ∘ (VᵀV̄ - V̄ᵀV)) ] Vᵀ,   K_ij = 1/(s_j² - s_i²),

with |s_j² - s_i²| floored at ``eps`` (sign kept): where singular values repeat, the bracketed
antisymmetric parts vanish for the isotropic energies MPM uses, and the floor keeps 0·∞ from
producing NaN (near repeated values the gradient is then approximate; exact elsewhere).

``polar(F) = R = U·Vᵀ``, the rotation of F = R·S, has its own exact backward, finite wherever
s_i + s_j ≠ 0 (repeated singular values included; the rest state F = I is one):

    dL/dF = U [ (M̄ - M̄ᵀ) ⊘ (s_i + s_j) ] Vᵀ,   M̄ = Uᵀ (dL/dR) V.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

EPS = 1e-6


def det3(f: Tensor) -> Tensor:
    """det of [..., 3, 3] matrices by cofactors (elementwise: fuses under torch.compile, unlike LU)."""
    c0, c1, c2 = f[..., :, 0], f[..., :, 1], f[..., :, 2]
    return (c0 * torch.linalg.cross(c1, c2)).sum(-1)


def _signed_svd(f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(U, S, V) with U, V rotations; a reflection moves into the sign of the smallest singular value."""
    u, s, vh = torch.linalg.svd(f)
    v = vh.transpose(-1, -2)
    flip_u = (det3(u) < 0)[..., None]
    flip_v = (det3(v) < 0)[..., None]
    last = torch.tensor([1.0, 1.0, -1.0], dtype=f.dtype, device=f.device)
    u = torch.where(flip_u[..., None], u * last, u)  # flips column 2
    v = torch.where(flip_v[..., None], v * last, v)
    return u, torch.where(flip_u ^ flip_v, s * last, s), v


class _SVD3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: Tensor, eps: float):
        u, s, v = _signed_svd(f)
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
        return u @ inner @ v.transpose(-1, -2), None


def svd3(f: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Signed SVD of [..., 3, 3] matrices: (U [..., 3, 3], S [..., 3], V [..., 3, 3]); see the module docstring."""
    if f.shape[-2:] != (3, 3):
        raise ValueError(f"svd3 needs [..., 3, 3] matrices, got shape {tuple(f.shape)}")
    return _SVD3.apply(f, eps)


class _Polar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: Tensor, eps: float):
        u, s, v = _signed_svd(f)
        ctx.save_for_backward(u, s, v)
        ctx.eps = eps
        return u @ v.transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_r):
        u, s, v = ctx.saved_tensors
        m = u.transpose(-1, -2) @ grad_r @ v
        total = s.unsqueeze(-1) + s.unsqueeze(-2)
        total = torch.where(total >= 0, total.clamp_min(ctx.eps), total.clamp_max(-ctx.eps))
        return u @ ((m - m.transpose(-1, -2)) / total) @ v.transpose(-1, -2), None


def polar(f: Tensor, eps: float = EPS) -> Tensor:
    """Rotation R [..., 3, 3] of the polar decomposition F = R·S (R = U·Vᵀ of the signed SVD)."""
    if f.shape[-2:] != (3, 3):
        raise ValueError(f"polar needs [..., 3, 3] matrices, got shape {tuple(f.shape)}")
    return _Polar.apply(f, eps)
