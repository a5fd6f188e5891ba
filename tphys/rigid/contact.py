"""Penalty contact of the model's contact points with the ground plane z = 0 (DFlex's ``eval_rigid_contacts_art``).

For a point of radius r at world position p with depth d = p_z - r (< 0: penetrating) and
contact-point velocity v = (v_t, v_n):
    normal   f_n = -min(d, 0) · (ke + kd · max(-v_n, 0))      (damping grows with depth)
    friction f_t = -v_t / |v_t| · min(kf · |v_t|, mu · ke · max(-d, 0))   (viscous ramp capped by Coulomb)
applied at the point p - r·ẑ. Forces are returned as world spatial forces per link.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tphys.math import safe_norm
from tphys.rigid.kinematics import point_velocities
from tphys.rigid.model import RigidModel


def contact_points(model: RigidModel, poses) -> tuple[Tensor, Tensor]:
    """World positions [N, C, 3] of the contact points' lowest points, and their depths [N, C] (m)."""
    c = model.contacts
    centre = poses.pos[:, c.link] + (poses.rot[:, c.link] @ c.pos[..., None])[..., 0]
    down = torch.zeros_like(centre)
    down = down.index_fill(-1, torch.tensor([2], device=centre.device), 1.0) * c.radius[:, None]
    return centre - down, centre[..., 2] - c.radius


def ground_forces(model: RigidModel, poses, velocities: Tensor) -> Tensor:
    """[N, L, 6] world spatial forces (torque about the origin, force) of ground contact on each link."""
    mat, c = model.material, model.contacts
    point, depth = contact_points(model, poses)
    penetration = (-depth).clamp_min(0)
    vel = point_velocities(velocities[:, c.link], point)
    vn = vel[..., 2]
    vt = torch.cat((vel[..., :2], torch.zeros_like(vn)[..., None]), dim=-1)
    normal = penetration * (mat.contact_ke + mat.contact_kd * (-vn).clamp_min(0))
    speed = safe_norm(vt)
    friction = -vt * (torch.minimum(mat.contact_kf * speed, mat.contact_mu * mat.contact_ke * penetration) / speed)[..., None]
    force = friction + torch.stack((torch.zeros_like(normal), torch.zeros_like(normal), normal), dim=-1)
    spatial = torch.cat((torch.cross(point, force, dim=-1), force), dim=-1)
    return torch.zeros(*velocities.shape, dtype=force.dtype, device=force.device).index_add(1, c.link, spatial)
