"""Tetrahedral FEM: stable neo-Hookean elasticity (Smith et al. 2018) with contractile muscle fibers.

Per element, with F = Ds·Dm⁻¹ the deformation gradient (Ds, Dm the deformed and rest edge
matrices), I_C = |F|², J = det F and f the rest fiber direction:

    Ψ = μ/2·(I_C - 3) - μ/2·log(I_C + 1) + λ/2·(J - α)²,   α = 1 + 3μ/(4λ)   (rest stable: P(I) = 0;
        constants are subtracted so that Ψ(I) = 0)
    P = μ·(1 - 1/(I_C + 1))·F + λ·(J - α)·cof F + damping·dF/dt + a·σ·(F f ⊗ f)/|F f|

The last term is an active fiber tension σ (``max_stress``) scaled by the activation a ∈ [0, 1]
per element and env: it is the stress of the energy a·σ·|F f| and contracts the fiber. Nodal
forces are -V·P·Dm⁻ᵀ on corners 1..3 and minus their sum on corner 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tphys.math import safe_norm
from tphys.particles.model import Tetrahedra


def _matmul3(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for [..., 3, 3] matrices as broadcast multiply-adds: batched 3x3 ``bmm`` with a
    broadcast operand copies the batch and costs several times more on the CPU."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def deformation_gradient(tets: Tetrahedra, x: Tensor) -> Tensor:
    """F [..., T, 3, 3] from positions x [..., P, 3].

    Corners are gathered by index (unlike the springs' dense incidence matmuls): a solid has
    hundreds of elements, where a dense [4, T, P] gather would cost ~P/3 times more.
    """
    corners = x.index_select(-2, tets.corners.reshape(-1)).unflatten(-2, tets.corners.shape)  # [..., T, 4, 3]
    edges = (corners[..., 1:, :] - corners[..., :1, :]).transpose(-1, -2)  # [..., T, 3 (xyz), 3 (edge)]
    return _matmul3(edges, tets.rest_inverse)


def _cofactor(f: Tensor) -> Tensor:
    """dJ/dF = cof F [..., 3, 3]: columns are cross products of the other two columns."""
    c0, c1, c2 = f[..., 0], f[..., 1], f[..., 2]
    return torch.stack([torch.cross(c1, c2, dim=-1), torch.cross(c2, c0, dim=-1), torch.cross(c0, c1, dim=-1)], -1)


def _alpha(tets: Tetrahedra) -> Tensor:
    return 1.0 + 0.75 * tets.mu / tets.lam


def tet_energy(tets: Tetrahedra, x: Tensor, activation: Tensor | None = None) -> Tensor:
    """Elastic plus active-fiber energy [...] in J; ``activation`` [..., T] or None (passive)."""
    f = deformation_gradient(tets, x)
    ic = (f * f).sum((-1, -2))
    j = torch.linalg.det(f)
    alpha = _alpha(tets)
    density = 0.5 * tets.mu * (ic - 3) - 0.5 * tets.mu * torch.log((ic + 1) / 4) + 0.5 * tets.lam * ((j - alpha) ** 2 - (1 - alpha) ** 2)
    if activation is not None:
        density = density + activation * tets.max_stress * safe_norm((f * tets.fiber.unsqueeze(-2)).sum(-1))
    return (tets.rest_volume * density).sum(-1)


def tet_forces(tets: Tetrahedra, x: Tensor, v: Tensor, activation: Tensor | None = None) -> Tensor:
    """Nodal forces [..., P, 3] in N of elasticity, damping and fibers (see the module docstring)."""
    f = deformation_gradient(tets, x)
    ic = (f * f).sum((-1, -2))
    cof = _cofactor(f)
    j = (f[..., 0] * cof[..., 0]).sum(-1)  # det F by the first column's cofactor expansion
    stress = (tets.mu * (1 - 1 / (ic + 1)))[..., None, None] * f + (tets.lam * (j - _alpha(tets)))[..., None, None] * cof
    stress = stress + tets.damping[:, None, None] * deformation_gradient(tets, v)
    if activation is not None:
        fiber_world = (f * tets.fiber.unsqueeze(-2)).sum(-1)  # [..., T, 3] = F f
        tension = (activation * tets.max_stress / safe_norm(fiber_world))[..., None, None]
        stress = stress + tension * fiber_world.unsqueeze(-1) * tets.fiber.unsqueeze(-2)
    h = -tets.rest_volume[:, None, None] * _matmul3(stress, tets.rest_inverse.transpose(-1, -2))  # [..., T, 3 (xyz), 3 (corner 1..3)]
    per_corner = torch.cat([-h.sum(-1, keepdim=True), h], -1).transpose(-1, -2)  # [..., T, 4, 3]
    return torch.zeros_like(x).index_add(-2, tets.corners.reshape(-1), per_corner.flatten(-3, -2))
