"""Forward kinematics, motion subspaces and link velocities (batched over envs, vectorized over links).

Only the composition of link frames loops, over the tree's depth; everything else is one batched
op over all links or dofs. Link frames follow MuJoCo's ``mj_kinematics``: a link sits at its
offset in the parent frame, then its joint moves it (hinge: rotation about the anchor line,
slide: translation along the axis, ball: rotation about the anchor, free: absolute pose).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.math import axis_angle_to_matrix, cross_motion, quat_to_matrix
from tphys.rigid.model import RigidModel


class Poses(NamedTuple):
    """World frames of all links: ``pos`` [N, L, 3] m, ``rot`` [N, L, 3, 3] (link -> world)."""

    pos: Tensor
    rot: Tensor


def joint_frames(model: RigidModel, q: Tensor) -> Poses:
    """Each link's frame in its parent's frame, offset then joint motion. q: [N, nq]."""
    links = model.links
    n, dtype = q.shape[0], q.dtype
    eye = torch.eye(3, dtype=dtype, device=q.device)
    rots, poss = [], []
    # hinge: rotate by (q - ref) about axis through anchor: p = a - R a
    if links.hinge.numel():
        angle = q[:, links.hinge_q] - links.hinge_ref
        r = axis_angle_to_matrix(links.hinge_axis.expand(n, -1, -1), angle)
        rots.append(r)
        poss.append(links.hinge_anchor - (r @ links.hinge_anchor[..., None])[..., 0])
    if links.slide.numel():
        rots.append(eye.expand(n, links.slide.numel(), 3, 3))
        poss.append(links.slide_axis * (q[:, links.slide_q] - links.slide_ref)[..., None])
    if links.ball.numel():
        quat = q[:, links.ball_q[:, None] + torch.arange(4, device=q.device)]
        r = quat_to_matrix(quat)
        rots.append(r)
        poss.append(links.ball_anchor - (r @ links.ball_anchor[..., None])[..., 0])
    if links.free.numel():
        rots.append(quat_to_matrix(q[:, links.free_q[:, None] + 3 + torch.arange(4, device=q.device)]))
        poss.append(q[:, links.free_q[:, None] + torch.arange(3, device=q.device)])
    if links.fixed.numel():
        rots.append(eye.expand(n, links.fixed.numel(), 3, 3))
        poss.append(torch.zeros(n, links.fixed.numel(), 3, dtype=dtype, device=q.device))
    joint_rot = torch.cat(rots, dim=1)[:, links.order]
    joint_pos = torch.cat(poss, dim=1)[:, links.order]
    rot = links.offset_rot @ joint_rot
    pos = links.offset_pos + (links.offset_rot @ joint_pos[..., None])[..., 0]
    return Poses(pos, rot)


def forward_kinematics(model: RigidModel, q: Tensor) -> Poses:
    """World frames of all links [N, L, ...] from generalized positions q [N, nq]."""
    local = joint_frames(model, q)
    parent = model.links.parent
    pos_levels, rot_levels = [], []
    previous = 0  # a link at depth k has its parent at depth k-1: gather from the previous level only
    for start, stop in model.links.levels:
        if start == 0:  # roots: children of the world
            pos_levels.append(local.pos[:, start:stop])
            rot_levels.append(local.rot[:, start:stop])
            continue
        index = parent[start:stop] - previous
        p_pos, p_rot = pos_levels[-1][:, index], rot_levels[-1][:, index]
        previous = start
        rot_levels.append(p_rot @ local.rot[:, start:stop])
        pos_levels.append(p_pos + (p_rot @ local.pos[:, start:stop, :, None])[..., 0])
    return Poses(torch.cat(pos_levels, dim=1), torch.cat(rot_levels, dim=1))


def motion_subspaces(model: RigidModel, poses: Poses) -> Tensor:
    """S [N, D, 6]: the world spatial velocity (ω, v_O) each dof produces per unit generalized velocity."""
    dofs = model.dofs
    rot = poses.rot[:, dofs.link]  # [N, D, 3, 3]
    axis = (rot @ dofs.axis[..., None])[..., 0]
    axis = torch.where(dofs.world_fixed[:, None] > 0, dofs.axis, axis)
    anchor = poses.pos[:, dofs.link] + (rot @ dofs.anchor[..., None])[..., 0]
    rotational = dofs.rotational[:, None]
    return torch.cat((rotational * axis, rotational * torch.cross(anchor, axis, dim=-1) + (1 - rotational) * axis), dim=-1)


def link_velocities(model: RigidModel, subspaces: Tensor, qd: Tensor) -> Tensor:
    """[N, L, 6] world spatial velocities of all links from S [N, D, 6] and qd [N, D]."""
    return torch.einsum("ld,nds->nls", model.dofs.ancestor, subspaces * qd[..., None])


def subspace_rates(model: RigidModel, subspaces: Tensor, velocities: Tensor) -> Tensor:
    """dS/dt [N, D, 6]: axes fixed in a link move with it (v_link ×ₘ S); the free joint's world axes do not."""
    rates = cross_motion(velocities[:, model.dofs.link], subspaces)
    return rates * (1 - model.dofs.world_fixed)[:, None]


def point_velocities(velocities: Tensor, points: Tensor) -> Tensor:
    """Velocity [..., 3] of world points [..., 3] moving with spatial velocities [..., 6]: v_O + ω × p."""
    return velocities[..., 3:] + torch.cross(velocities[..., :3], points, dim=-1)
