"""Forces and energies of the particle elements.

Every function takes positions ``x`` and velocities ``v`` of shape [..., P, d] (any leading
batch dims, so they also run under ``torch.func.vmap``) and returns forces [..., P, d] in N.
Element-to-particle gathers and scatters are dense matmuls with the model's incidence
matrices: at these sizes (P <= a few hundred) that beats index_add and is vmap/compile friendly.
It stops scaling when P * (springs + triangles) no longer fits in cache (~1e5 elements).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tphys.math import safe_norm
from tphys.particles.fem import tet_energy, tet_forces
from tphys.particles.model import Ground, ParticleModel, Springs, Triangles
from tphys.particles.spring_vjp import fused_spring_forces, use_fused_springs


def smooth_ramp(s: Tensor, width: Tensor) -> Tensor:
    """C¹ version of relu(s): 0 for s <= 0, s²/(2w) on (0, w), s - w/2 beyond.

    Cables and contacts use it so that forces have a continuous Jacobian: Newton's method
    (BDF2) converges through a cable going slack or a contact opening, and finite
    differences of a rollout are smooth. Its derivative is clamp(s / w, 0, 1).
    """
    r = torch.minimum(torch.clamp_min(s, 0.0), width)  # clamp(s, 0, w), branch-free below
    return r * (2 * s - r) * (0.5 / width)


def smooth_step(s: Tensor, width: Tensor) -> Tensor:
    """C¹ step from 0 (s <= 0) to 1 (s >= w): t²(3 - 2t) with t = clamp(s / w, 0, 1)."""
    t = torch.clamp(s * (1.0 / width), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_ramp_integral(s: Tensor, width: Tensor) -> Tensor:
    """Antiderivative of ``smooth_ramp`` vanishing for s <= 0."""
    inside = torch.clamp(s, min=0.0) ** 3 / (6 * width)
    return torch.where(s >= width, 0.5 * (s - 0.5 * width) ** 2 + width**2 / 24, inside)


def spring_forces(springs: Springs, x: Tensor, v: Tensor) -> Tensor:
    """Hookean springs with axial damping.

    Cables (tension_only) pull with k·smooth_ramp(stretch) and their damping fades in
    with smooth_step(stretch): they push nothing when slack, and every force is C¹.
    """
    delta = torch.einsum("sp,...pd->...sd", springs.incidence, x)  # x_j - x_i
    delta_v = torch.einsum("sp,...pd->...sd", springs.incidence, v)
    length = safe_norm(delta)
    direction = delta / length.unsqueeze(-1)
    stretch = length - springs.rest_length
    cable = springs.tension_only
    elastic = torch.lerp(stretch, smooth_ramp(stretch, springs.slack_width), cable)
    taut = torch.lerp(torch.ones_like(stretch), smooth_step(stretch, springs.slack_width), cable)
    tension = springs.stiffness * elastic + taut * springs.damping * (delta_v * direction).sum(-1)
    return -torch.einsum("sp,...sd->...pd", springs.incidence, tension.unsqueeze(-1) * direction)


def spring_energy(springs: Springs, x: Tensor) -> Tensor:
    """Elastic energy [...] in J (0.5·k·stretch²; cables: k·∫smooth_ramp)."""
    delta = torch.einsum("sp,...pd->...sd", springs.incidence, x)
    stretch = safe_norm(delta) - springs.rest_length
    energy = torch.lerp(0.5 * stretch**2, _smooth_ramp_integral(stretch, springs.slack_width), springs.tension_only)
    return (springs.stiffness * energy).sum(-1)


def _deformation(triangles: Triangles, x: Tensor) -> tuple[Tensor, Tensor]:
    """Columns F0, F1 [..., T, d] of the deformation gradient F = world edges @ rest_inverse."""
    corners = torch.einsum("ctp,...pd->...ctd", triangles.gather, x)  # [..., 3, T, d]
    e1 = corners[..., 1, :, :] - corners[..., 0, :, :]
    e2 = corners[..., 2, :, :] - corners[..., 0, :, :]
    m = triangles.rest_inverse.unsqueeze(-1)  # [T, 2, 2, 1]
    return e1 * m[:, 0, 0] + e2 * m[:, 1, 0], e1 * m[:, 0, 1] + e2 * m[:, 1, 1]


def _invariants(f0: Tensor, f1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Entries a, b, c of C = FᵀF = [[a, b], [b, c]], sqrt(det C) = s1·s2 and tr sqrt(C) = s1 + s2.

    Closed-form 2x2 algebra: ``torch.linalg.det`` on batches of 2x2 matrices goes through an
    LU factorisation and costs far more than these few elementwise ops.
    """
    a, b, c = (f0 * f0).sum(-1), (f0 * f1).sum(-1), (f1 * f1).sum(-1)
    area_ratio = torch.sqrt(torch.clamp_min(a * c - b * b, 1e-12))
    return a, b, c, area_ratio, torch.sqrt(a + c + 2 * area_ratio)


def membrane_forces(triangles: Triangles, x: Tensor) -> Tensor:
    """Co-rotational membrane: psi = area·(mu·|F - R|² + lam/2·(tr S - 2)²), F = R·S the polar split.

    With s1, s2 the singular values of F: |F - R|² = (s1 - 1)² + (s2 - 1)², tr S = s1 + s2.
    Unlike StVK it resists compression, which keeps Newton's Jacobian well conditioned when
    handles push the cloth together. dpsi/dF = area·(2mu·(F - R) + lam·(tr S - 2)·R), R = F·S⁻¹
    with the 2x2 closed form S = (C + sqrt(det C)·I) / tr S, det S = sqrt(det C).
    """
    f0, f1 = _deformation(triangles, x)
    a, b, c, q, t = _invariants(f0, f1)
    # S⁻¹ = adj(S) / det S with S = [[a + q, b], [b, c + q]] / t.
    scale = (1.0 / (t * q)).unsqueeze(-1)
    r0 = (f0 * (c + q).unsqueeze(-1) - f1 * b.unsqueeze(-1)) * scale
    r1 = (f1 * (a + q).unsqueeze(-1) - f0 * b.unsqueeze(-1)) * scale
    volumetric = (triangles.lam * (t - 2)).unsqueeze(-1)
    p0 = 2 * triangles.mu * (f0 - r0) + volumetric * r0  # first Piola-Kirchhoff columns
    p1 = 2 * triangles.mu * (f1 - r1) + volumetric * r1
    m = triangles.rest_inverse.unsqueeze(-1)
    area = triangles.rest_area.unsqueeze(-1)
    force1 = -area * (p0 * m[:, 0, 0] + p1 * m[:, 0, 1])  # -area·(P·rest_inverseᵀ), column 0
    force2 = -area * (p0 * m[:, 1, 0] + p1 * m[:, 1, 1])
    per_corner = torch.stack([-(force1 + force2), force1, force2], dim=-3)  # [..., 3, T, d]
    return torch.einsum("ctp,...ctd->...pd", triangles.gather, per_corner)


def membrane_energy(triangles: Triangles, x: Tensor) -> Tensor:
    a, _, c, _, t = _invariants(*_deformation(triangles, x))
    density = triangles.mu * (a + c - 2 * t + 2) + 0.5 * triangles.lam * (t - 2) ** 2
    return (triangles.rest_area * density).sum(-1)


def ground_forces(ground: Ground, up_axis: int, x: Tensor, v: Tensor) -> Tensor:
    """Penalty contact with depth-scaled damping and smooth Coulomb friction (see ``Ground``).

    Every kink of the textbook law is rounded to C¹ (see ``Ground``) so that Newton's method
    and finite differences behave at contact onset.
    """
    depth = ground.height - x[..., up_axis]
    normal_speed = v[..., up_axis]
    approach_speed = smooth_ramp(-normal_speed, ground.slip)  # ~ max(-v_n, 0), C¹
    normal_force = (ground.stiffness + ground.damping * approach_speed) * smooth_ramp(depth, ground.smoothing)
    up = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    up[up_axis] = 1.0
    tangential = v - normal_speed.unsqueeze(-1) * up
    slip_speed = torch.sqrt((tangential * tangential).sum(-1) + ground.slip**2)
    friction = -(ground.friction * normal_force / slip_speed).unsqueeze(-1) * tangential
    return normal_force.unsqueeze(-1) * up + friction


def total_forces(model: ParticleModel, x: Tensor, v: Tensor, fused: bool = False, activation: Tensor | None = None) -> Tensor:
    """Sum of all forces on the free particles [..., P, d]; rows of handles are zero.

    ``activation`` [..., T] drives the muscle fibers of ``model.tetrahedra`` (None: passive).

    ``fused=True`` computes the springs with ``spring_vjp.fused_spring_forces`` (same values,
    cheaper backward, first derivatives only); keep it False under ``torch.func`` transforms.
    """
    force = model.mass.unsqueeze(-1) * model.gravity - model.drag * v
    if model.springs is not None:
        if fused and use_fused_springs(model.springs, x, v):
            force = force + fused_spring_forces(model.springs, x, v)
        else:
            force = force + spring_forces(model.springs, x, v)
    if model.triangles is not None:
        force = force + membrane_forces(model.triangles, x)
    if model.tetrahedra is not None:
        force = force + tet_forces(model.tetrahedra, x, v, activation)
    if model.ground is not None:
        force = force + ground_forces(model.ground, model.up_axis, x, v)
    return force * model.free_mask.unsqueeze(-1)


def potential_energy(model: ParticleModel, x: Tensor, activation: Tensor | None = None) -> Tensor:
    """Conservative energy [...] in J of the free particles: gravity + elastic (+ active fibers) + contact."""
    free = model.free_mask
    energy = -(free * model.mass * (x * model.gravity).sum(-1)).sum(-1)
    if model.springs is not None:
        energy = energy + spring_energy(model.springs, x)
    if model.triangles is not None:
        energy = energy + membrane_energy(model.triangles, x)
    if model.tetrahedra is not None:
        energy = energy + tet_energy(model.tetrahedra, x, activation)
    if model.ground is not None:
        depth = model.ground.height - x[..., model.up_axis]
        energy = energy + (free * model.ground.stiffness * _smooth_ramp_integral(depth, model.ground.smoothing)).sum(-1)
    return energy


def kinetic_energy(model: ParticleModel, v: Tensor) -> Tensor:
    """0.5·m·|v|² summed over the free particles [...], J."""
    return (0.5 * model.free_mask * model.mass * (v * v).sum(-1)).sum(-1)
