"""Kinematic mode: a body tree moved by joint targets instead of forces, for coupling hands and tools
to other engines (MPM, FEM), which need every shape's world pose and velocity at every substep.

Within a frame of ``dt`` seconds the joints move at constant rate from ``q`` to ``target``: scalar
joints linearly, free and ball joints along the geodesic (constant body-frame angular velocity).
Everything is differentiable in ``q`` and ``target``.

    frames = kinematic_frame(model, q, target, dt, substeps)   # list of ShapeFrames, one per substep end
    frames[-1].pos                                               # [N, G, 3] shape centres at the target
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.math import quat_mul, safe_norm
from tphys.rigid.integrator import integrate_positions
from tphys.rigid.kinematics import forward_kinematics, link_velocities, motion_subspaces, point_velocities
from tphys.rigid.model import RigidModel


class ShapeFrames(NamedTuple):
    """World frames of the model's shapes (``model.shapes``) for a batch of N configurations.

    Attributes:
        pos: [N, G, 3] m, shape centres.
        rot: [N, G, 3, 3] shape axes -> world.
        lin_vel: [N, G, 3] m/s, velocity of the shape centres.
        ang_vel: [N, G, 3] rad/s, angular velocity (world frame).
    """

    pos: Tensor
    rot: Tensor
    lin_vel: Tensor
    ang_vel: Tensor


def shape_frames(model: RigidModel, q: Tensor, qd: Tensor | None = None) -> ShapeFrames:
    """Poses and velocities of every shape at q [N, nq] moving with qd [N, nv] (zero velocities if None)."""
    poses = forward_kinematics(model, q)
    s = model.shapes
    rot = poses.rot[:, s.link] @ s.rot
    pos = poses.pos[:, s.link] + (poses.rot[:, s.link] @ s.pos[..., None])[..., 0]
    if qd is None:
        zero = torch.zeros_like(pos)
        return ShapeFrames(pos, rot, zero, zero.clone())
    velocities = link_velocities(model, motion_subspaces(model, poses), qd)[:, s.link]  # [N, G, 6] (ω, v_O)
    return ShapeFrames(pos, rot, point_velocities(velocities, pos), velocities[..., :3])


def joint_rates(model: RigidModel, q: Tensor, target: Tensor, dt: float) -> Tensor:
    """[N, nv] constant generalized velocity that moves q to target [N, nq] in dt seconds.

    Free and ball joints turn at the constant body-frame angular velocity of the shortest rotation.
    """
    links, dofs = model.links, model.dofs
    qd = torch.zeros(q.shape[0], model.nv, dtype=q.dtype, device=q.device)
    qd = qd.index_copy(1, dofs.scalar, (target[:, dofs.scalar_q] - q[:, dofs.scalar_q]) / dt)
    arange3, arange4 = torch.arange(3, device=q.device), torch.arange(4, device=q.device)
    if links.free.numel():
        pos = links.free_q[:, None] + arange3
        qd = qd.index_copy(1, (links.free_dof[:, None] + arange3).reshape(-1), ((target[:, pos] - q[:, pos]) / dt).flatten(1))
        quat = links.free_q[:, None] + 3 + arange4
        omega = _body_rate(q[:, quat], target[:, quat], dt)
        qd = qd.index_copy(1, (links.free_dof[:, None] + 3 + arange3).reshape(-1), omega.flatten(1))
    if links.ball.numel():
        quat = links.ball_q[:, None] + arange4
        omega = _body_rate(q[:, quat], target[:, quat], dt)
        qd = qd.index_copy(1, (links.ball_dof[:, None] + arange3).reshape(-1), omega.flatten(1))
    return qd


def kinematic_frame(model: RigidModel, q: Tensor, target: Tensor, dt: float, substeps: int) -> list[ShapeFrames]:
    """Shape frames at the end of each of ``substeps`` equal substeps while q [N, nq] moves to target in dt s.

    The last entry is at ``target`` (up to quaternion round-off); velocities are the constant joint rates'.
    """
    if q.shape != target.shape or q.shape[-1] != model.nq:
        raise ValueError(f"q and target must both be [N, {model.nq}], got {tuple(q.shape)} and {tuple(target.shape)}")
    if not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
    qd = joint_rates(model, q, target, dt)
    h = dt / substeps
    # integrate_positions is exact on the geodesic here: the rates are constant over the frame
    return [shape_frames(model, integrate_positions(model, q, qd, k * h), qd) for k in range(1, substeps + 1)]


def _body_rate(start: Tensor, end: Tensor, dt: float) -> Tensor:
    """[..., 3] body-frame angular velocity turning unit quaternions ``start`` into ``end`` in dt (shortest way)."""
    start = start / safe_norm(start)[..., None]
    end = end / safe_norm(end)[..., None]
    conj = start * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=start.dtype, device=start.device)
    delta = quat_mul(conj, end)
    delta = torch.where(delta[..., :1] < 0, -delta, delta)  # the double cover: take the short rotation
    w, v = delta[..., 0], delta[..., 1:]
    sin_half = safe_norm(v)
    # rotation vector = 2·atan2(|v|, w)·v/|v|; near zero the ratio tends to 2/w
    scale = torch.where(sin_half > 1e-7, 2.0 * torch.atan2(sin_half, w) / sin_half, 2.0 / w)
    return scale[..., None] * v / dt


__all__ = ["ShapeFrames", "joint_rates", "kinematic_frame", "shape_frames"]
