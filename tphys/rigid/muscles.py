"""Muscle-tendon units on articulated bodies (DFlex's ``eval_muscles``): each muscle is a polyline through via
points fixed on links, pulling along its path with a tension (N) of activation × maximum isometric force.

A muscle m with via points p_0 ... p_K (world positions of points fixed in links) has the path length
    L_m(q) = Σ_k |p_{k+1} - p_k|                                   (m)
and its moment arms (MuJoCo's ``ten_J``: dL/dt = moment · qd) R_m = dL_m/dq [D]. A tension t_m >= 0 pulls each
segment's two ends towards each other: +t n on the link of p_k at p_k and -t n on the link of p_{k+1} at
p_{k+1} (n the segment's unit direction from p_k to p_{k+1}). As generalized forces this is
    τ = -Σ_m t_m R_m = Jᵀ f,
so a tension t = k (L - rest) is the spring of energy k/2 (L - rest)², τ = -dE/dq. Segments whose two ends lie
on the same link have constant length and their two forces cancel; like DFlex, only segments that cross links
are turned into forces (``Muscles.cross``). The forces enter the dynamics as external link forces (one [N, L, 6]
spatial force beside ground contact), which costs O(segments) per substep instead of the O(muscles × dofs) of
``moment_arms``; both give the same τ (tests/rigid/test_muscles.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.math import safe_norm
from tphys.rigid.kinematics import Poses, forward_kinematics, motion_subspaces
from tphys.rigid.model import RigidModel


class Muscles(NamedTuple):
    """The muscles of a model (P via points, S = P - M segments, M muscles).

    Attributes:
        point_link: [P] long, the link each via point is fixed on.
        point_pos: [P, 3] m, via points in their link's frame, muscle after muscle, in path order.
        seg_start: [S] long, the first via point of each segment (its second is seg_start + 1).
        seg_muscle: [S] long, the muscle of each segment.
        cross: [S_c] long, the segments whose ends lie on different links (the only ones that exert forces).
        max_force: [M] N, maximum isometric force: tension = max_force × activation.
        names: tuple of M muscle names.
    """

    point_link: Tensor
    point_pos: Tensor
    seg_start: Tensor
    seg_muscle: Tensor
    cross: Tensor
    max_force: Tensor
    names: tuple

    @property
    def count(self) -> int:
        return self.max_force.shape[0]


def build_muscles(paths: list, max_force: list, names: list | None = None) -> Muscles:
    """``Muscles`` (float64, CPU) from ``paths``: per muscle a list of at least two (link, (x, y, z) in that link's
    frame) via points; ``max_force``: per muscle, N."""
    if len(paths) != len(max_force):
        raise ValueError(f"{len(paths)} muscle paths but {len(max_force)} maximum forces")
    links, points, seg_start, seg_muscle, cross = [], [], [], [], []
    for m, path in enumerate(paths):
        if len(path) < 2:
            raise ValueError(f"muscle {m}: a path needs at least two via points, got {len(path)}")
        for k, (link, pos) in enumerate(path):
            if k > 0:
                seg_start.append(len(links) - 1)
                seg_muscle.append(m)
                if link != links[-1]:
                    cross.append(len(seg_start) - 1)
            links.append(int(link))
            points.append([float(x) for x in pos])
    if any(f < 0 for f in max_force):
        raise ValueError("a muscle's maximum force must be >= 0 (muscles pull)")
    long = dict(dtype=torch.long)
    return Muscles(point_link=torch.tensor(links, **long), point_pos=torch.tensor(points, dtype=torch.float64).reshape(-1, 3),
                   seg_start=torch.tensor(seg_start, **long), seg_muscle=torch.tensor(seg_muscle, **long),
                   cross=torch.tensor(cross, **long),
                   max_force=torch.tensor([float(f) for f in max_force], dtype=torch.float64),
                   names=tuple(names) if names is not None else tuple(f"muscle{m}" for m in range(len(paths))))


def via_points(muscles: Muscles, poses: Poses) -> Tensor:
    """[N, P, 3] m, world positions of the via points for link poses [N, L, ...]."""
    rot = poses.rot[:, muscles.point_link]
    return poses.pos[:, muscles.point_link] + (rot @ muscles.point_pos[..., None])[..., 0]


def _segments(muscles: Muscles, points: Tensor, which: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Start points [N, S', 3], end points and vectors end - start of the segments ``which`` (all when None)."""
    start = muscles.seg_start if which is None else muscles.seg_start[which]
    a, b = points[:, start], points[:, start + 1]
    return a, b, b - a


def path_lengths(muscles: Muscles, poses: Poses) -> Tensor:
    """[N, M] m, each muscle's path length Σ |p_{k+1} - p_k|."""
    _, _, d = _segments(muscles, via_points(muscles, poses))
    length = safe_norm(d)  # [N, S]
    return torch.zeros(length.shape[0], muscles.count, dtype=length.dtype, device=length.device).index_add(1, muscles.seg_muscle, length)


def link_forces(muscles: Muscles, poses: Poses, tension: Tensor) -> Tensor:
    """[N, L, 6] world spatial forces (torque about the origin, force) that muscle tensions [N, M] (N, >= 0 to pull)
    put on the links: each crossing segment pulls its two ends towards each other."""
    start = muscles.seg_start[muscles.cross]
    ends = torch.cat((start, start + 1))  # [2 S_c]: the crossing segments' start points, then their end points
    links = muscles.point_link[ends]
    points = poses.pos[:, links] + (poses.rot[:, links] @ muscles.point_pos[ends][..., None])[..., 0]  # [N, 2 S_c, 3]
    a, b = points.chunk(2, dim=1)
    d = b - a
    f = d * (tension[:, muscles.seg_muscle[muscles.cross]] / safe_norm(d))[..., None]  # [N, S_c, 3], on the start's link
    force = torch.cat((f, -f), 1)
    spatial = torch.cat((torch.cross(points, force, dim=-1), force), -1)
    n, num_links = poses.pos.shape[:2]
    return torch.zeros(n, num_links, 6, dtype=f.dtype, device=f.device).index_add(1, links, spatial)


def tensions(muscles: Muscles, activation: Tensor) -> Tensor:
    """[N, M] N: max_force × activation, activation [N, M] clamped to [0, 1] (a muscle pulls, up to its maximum)."""
    if activation.shape[-1] != muscles.count:
        raise ValueError(f"activation has {activation.shape[-1]} entries per env, the model has {muscles.count} muscles")
    return muscles.max_force * activation.clamp(0.0, 1.0)


def moment_arms(model: RigidModel, q: Tensor) -> Tensor:
    """[N, M, D] m (or m/m for slides): dL/dq, the rate of each path length per unit generalized velocity
    (MuJoCo's tendon Jacobian ``ten_J``), for q [N, nq]."""
    muscles = model.muscles
    poses = forward_kinematics(model, q)
    subspaces = motion_subspaces(model, poses)  # [N, D, 6]
    a, b, d = _segments(muscles, via_points(muscles, poses))
    n = d / safe_norm(d)[..., None]  # [N, S, 3]
    start = muscles.seg_start

    def point_jacobian(points, link):  # [N, S, D, 3]: velocity of a point fixed on ``link`` per unit qd
        at = points[:, :, None].expand(-1, -1, subspaces.shape[1], -1)
        lin = subspaces[:, None, :, 3:] + torch.cross(subspaces[:, None, :, :3], at, dim=-1)
        return lin * model.dofs.ancestor[link][None, :, :, None]

    rate = (n[:, :, None] * (point_jacobian(b, muscles.point_link[start + 1]) - point_jacobian(a, muscles.point_link[start]))).sum(-1)
    out = torch.zeros(rate.shape[0], muscles.count, rate.shape[-1], dtype=rate.dtype, device=rate.device)
    return out.index_add(1, muscles.seg_muscle, rate)


def generalized_forces(model: RigidModel, q: Tensor, tension: Tensor) -> Tensor:
    """[N, D] τ = -Σ_m tension_m · dL_m/dq for tensions [N, M] (N) at q [N, nq] (through ``moment_arms``; the
    simulator uses the equal and cheaper ``link_forces``)."""
    return -(tension[..., None] * moment_arms(model, q)).sum(1)
