"""Kinematic colliders for MPM: signed distance fields of moving shapes acting on grid velocities.

One-way coupling as in Rewarped's ``dexdeform`` grid operator: each shape moves from pose X to
pose X' during a substep; at a node x with signed distance d (outward normal n, world frame) the
shape's velocity is u = (X'·X⁻¹·x - x)/dt. Within the influence band w = min(exp(-softness·d), 1)
> cutoff (Rewarped: 0.1; or inside, d <= 0) the node velocity v becomes

    r = v - u,  r_n = r·n,  t = r - min(r_n, 0)·n
    t <- t/|t|·max(0, |t| + friction·r_n)           if r_n < 0 (approaching: Coulomb friction)
    v <- u + (1 - w)·r + w·t

Shapes (local frame; capsules and cylinders along local y, as in Warp):

    sphere (radius)   box (half extents x, y, z)   capsule (radius, half height)   cylinder (radius, half height)

Poses are [N, S, 3] positions and [N, S, 3, 3] rotation matrices (local -> world) per env and shape.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

SHAPES = ("sphere", "box", "capsule", "cylinder")
_TINY = 1e-12


class Shapes(NamedTuple):
    """S collider shapes.

    Attributes:
        kinds: S names from ``SHAPES``.
        sizes: [S, 3] parameters (sphere: radius; box: half extents; capsule, cylinder: radius, half height), m.
        friction: Coulomb coefficient between the shapes and the material.
        softness: 1/m, decay of the influence band (Rewarped: 666).
        cutoff: nodes outside the shape whose influence is at most this are left alone (Rewarped: 0.1, which makes
            the coupling jump by 0.1 of the correction where a node enters the band); 0 acts on every node, which
            removes that jump (finite-difference checks) at the cost of every node. (Inside a box the SDF's normal
            still flips where two faces are equally near.)
    """

    kinds: tuple[str, ...]
    sizes: Tensor
    friction: float = 0.9
    softness: float = 666.0
    cutoff: float = 0.1


def _length(v: Tensor) -> Tensor:
    """|v| along the last dim (zero gradient, not NaN, at 0)."""
    return torch.linalg.vector_norm(v, dim=-1)


def _unit(v: Tensor) -> Tensor:
    return v / _length(v).clamp_min(_TINY).unsqueeze(-1)


def signed_distance(kind: str, size: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(distance [...] m, unit outward normal [..., 3]) of local points p [..., 3] for one shape kind; size [3] or
    [..., 3] broadcasting with p (several shapes of one kind at once)."""
    if kind == "sphere":
        return _length(p) - size[..., 0], _unit(p)
    if kind == "capsule":
        axis = torch.zeros_like(p)
        axis[..., 1] = p[..., 1].clamp(-size[..., 1], size[..., 1])
        offset = p - axis
        return _length(offset) - size[..., 0], _unit(offset)
    if kind == "cylinder":
        radial = p.clone()
        radial[..., 1] = 0.0
        side = _length(radial) - size[..., 0]
        cap = p[..., 1].abs() - size[..., 1]
        outside = torch.stack([side.clamp_min(0.0), cap.clamp_min(0.0)], -1)
        is_out = (side > 0) | (cap > 0)
        distance = torch.where(is_out, _length(outside), torch.maximum(side, cap))
        radial_normal = _unit(radial)
        cap_normal = torch.zeros_like(p)
        cap_normal[..., 1] = torch.sign(p[..., 1])
        outward = _unit(outside[..., :1] * radial_normal + outside[..., 1:] * cap_normal)
        normal = torch.where(is_out.unsqueeze(-1), outward, torch.where((side > cap).unsqueeze(-1), radial_normal, cap_normal))
        return distance, normal
    if kind == "box":
        q = p.abs() - size
        outside = q.clamp_min(0.0)
        inside = q.max(-1).values.clamp_max(0.0)
        distance = _length(outside) + inside
        face = torch.nn.functional.one_hot(q.argmax(-1), 3).to(p.dtype) * torch.sign(p)
        is_out = (q > 0).any(-1, keepdim=True)
        return distance, torch.where(is_out, _unit(outside * torch.sign(p)), face)
    raise ValueError(f"unknown collider shape {kind!r}; valid: {', '.join(SHAPES)}")


def collide(shapes: Shapes, nodes: Tensor, v: Tensor, position: Tensor, rotation: Tensor, position_next: Tensor,
            rotation_next: Tensor, dt: float) -> Tensor:
    """Node velocities [M, 3] after the shapes act (see the module docstring), for M nodes of any envs.

    Args:
        nodes: [M, 3] node positions, m.  v: [M, 3] node velocities, m/s.
        position, position_next: [M, S, 3] origins of the S shapes (of each node's env) at the start and
            end of the substep.
        rotation, rotation_next: [M, S, 3, 3] shape orientations (local -> world).
    """
    band = math.log(1.0 / shapes.cutoff) / shapes.softness if shapes.cutoff > 0 else math.inf  # influence > cutoff below it
    count = len(shapes.kinds)
    local = ((nodes.unsqueeze(1) - position).unsqueeze(-1) * rotation).sum(-2)  # [M, S, 3]: Rᵀ(x - p) of every shape
    distance, normal_local = local.new_empty(local.shape[:2]), torch.empty_like(local)
    for kind in set(shapes.kinds):  # the SDFs of all shapes of a kind at once
        ids = torch.tensor([s for s in range(count) if shapes.kinds[s] == kind], device=local.device)
        d, n = signed_distance(kind, shapes.sizes[ids], local[:, ids])
        distance, normal_local = distance.index_copy(1, ids, d), normal_local.index_copy(1, ids, n)
    touched = (distance < band) | (distance <= 0)  # [M, S]
    for s in range(count):  # in order: a node in two shapes' bands meets both, as in Rewarped's grid operator
        index = touched[:, s].nonzero().squeeze(-1)  # the nodes this shape acts on
        if index.numel() == 0:
            continue
        r, d, n_local, x_local = rotation[index, s], distance[index, s], normal_local[index, s], local[index, s]
        normal = (r * n_local.unsqueeze(-2)).sum(-1)
        moved = (rotation_next[index, s] * x_local.unsqueeze(-2)).sum(-1) + position_next[index, s]
        body_v = (moved - nodes[index]) / dt
        weight = torch.exp(-shapes.softness * d).clamp_max(1.0).unsqueeze(-1)
        relative = v[index] - body_v
        normal_speed = (relative * normal).sum(-1, keepdim=True)
        tangential = relative - normal_speed.clamp_max(0.0) * normal
        t_norm = _length(tangential).unsqueeze(-1)
        slowed = tangential / t_norm.clamp_min(_TINY) * (t_norm + shapes.friction * normal_speed).clamp_min(0.0)
        tangential = torch.where(normal_speed < 0, slowed, tangential)
        v = v.index_put((index,), body_v + (1 - weight) * relative + weight * tangential)
    return v
