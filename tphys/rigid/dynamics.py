"""Joint-space dynamics H(q)·qdd = τ - C(q, qd) (DFlex's formulation: H = Jᵀ M J, dense Cholesky).

All quantities are world-frame spatial vectors at the origin (see ``tphys.math``); the tree
enters only through the ancestor mask ``model.dofs.ancestor`` [L, D], so a whole stage is one
einsum over links and dofs. Units: generalized forces in N·m (hinge) or N (slide).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.kernels.linalg import spd_solve
from tphys.math import cross_force, spatial_inertia
from tphys.rigid.kinematics import Poses, forward_kinematics, link_velocities, motion_subspaces, subspace_rates
from tphys.rigid.model import RigidModel


class Kinematics(NamedTuple):
    """What one state's dynamics need: link poses, motion subspaces S [N, D, 6], link velocities [N, L, 6],
    world spatial inertias [N, L, 6, 6]."""

    poses: Poses
    subspaces: Tensor
    velocities: Tensor
    inertias: Tensor


def kinematics(model: RigidModel, q: Tensor, qd: Tensor) -> Kinematics:
    poses = forward_kinematics(model, q)
    subspaces = motion_subspaces(model, poses)
    velocities = link_velocities(model, subspaces, qd)
    links = model.links
    com = poses.pos + (poses.rot @ links.com[..., None])[..., 0]
    inertia = poses.rot @ links.inertia @ poses.rot.transpose(-1, -2)
    return Kinematics(poses, subspaces, velocities, spatial_inertia(links.mass.expand(com.shape[:-1]), com, inertia))


def mass_matrix(model: RigidModel, kin: Kinematics) -> Tensor:
    """H [N, D, D] = Σ_links J_lᵀ I_l J_l + diag(armature)."""
    jac = kin.subspaces.transpose(-1, -2)[:, None] * model.dofs.ancestor[:, None, :]  # [N, L, 6, D]
    h = torch.einsum("nlsd,nlse->nde", jac, kin.inertias @ jac)
    return h + torch.diag_embed(model.dofs.armature.expand(h.shape[:-1]))


def bias_forces(model: RigidModel, kin: Kinematics, qd: Tensor, external: Tensor | None = None) -> Tensor:
    """C [N, D]: generalized forces that give qdd = 0 (Coriolis, centrifugal, gravity), minus those of
    ``external`` world spatial forces [N, L, 6] on the links (recursive Newton-Euler with qdd = 0)."""
    dofs = model.dofs
    rates = subspace_rates(model, kin.subspaces, kin.velocities)
    accel = torch.einsum("ld,nds->nls", dofs.ancestor, rates * qd[..., None])
    gravity = torch.cat((torch.zeros_like(model.gravity), model.gravity))
    momentum = (kin.inertias @ kin.velocities[..., None])[..., 0]
    force = (kin.inertias @ (accel - gravity)[..., None])[..., 0] + cross_force(kin.velocities, momentum)
    if external is not None:
        force = force - external
    subtree = torch.einsum("ld,nls->nds", dofs.ancestor, force)
    return (kin.subspaces * subtree).sum(-1)


def passive_forces(model: RigidModel, q: Tensor, qd: Tensor) -> Tensor:
    """[N, D]: joint damping -damping·qd and springs -stiffness·(q - springref) on hinge/slide dofs."""
    dofs = model.dofs
    spring = -dofs.stiffness * (q[:, dofs.scalar_q] - dofs.springref)
    return -dofs.damping * qd + torch.zeros_like(qd).index_add(1, dofs.scalar, spring)


def limit_forces(model: RigidModel, q: Tensor, qd: Tensor, ke: float, kd: float) -> Tensor:
    """[N, D]: penalty ke·(violation) - kd·qd on hinge/slide dofs outside their range (zero inside)."""
    dofs = model.dofs
    pos, vel = q[:, dofs.scalar_q], qd[:, dofs.scalar]
    below, above = (dofs.lower - pos).clamp_min(0), (pos - dofs.upper).clamp_min(0)
    outside = ((below > 0) | (above > 0)).to(q.dtype)
    force = dofs.limited * (ke * (below - above) - kd * vel * outside)
    return torch.zeros_like(qd).index_add(1, dofs.scalar, force)


def actuator_forces(model: RigidModel, control: Tensor) -> Tensor:
    """[N, D] from controls [N, A]: gear · clamp(control, range) on each motor's dof."""
    act = model.actuators
    torque = act.gear * torch.maximum(torch.minimum(control, act.upper), act.lower)
    return torch.zeros(control.shape[0], model.nv, dtype=control.dtype, device=control.device).index_add(1, act.dof, torque)


def joint_accelerations(model: RigidModel, kin: Kinematics, qd: Tensor, tau: Tensor, external: Tensor | None = None) -> Tensor:
    """qdd [N, D] = H⁻¹ (τ - C), H by Cholesky (``tphys.kernels.linalg.spd_solve``: one C loop over the batch on CPU,
    LAPACK's per-matrix calls otherwise).

    A diverged env (non-finite state, so H is not positive definite) gets NaN accelerations instead of
    stopping the batch; ``RigidEnv`` detects and terminates such envs.
    """
    h = mass_matrix(model, kin)
    rhs = tau - bias_forces(model, kin, qd, external)
    return spd_solve(h, rhs)
