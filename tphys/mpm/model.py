"""Constants and state of batched MLS-MPM: one dense grid per env over the cube [0, G·dx)³.

Conventions: N envs, P particles per env, G grid nodes per axis (nodes at i·dx), SI units.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.mpm.materials import Material


class MPMModel(NamedTuple):
    """Everything constant in a rollout.

    Attributes:
        grid_size: G nodes per axis.
        dx: node spacing, m.
        dt: substep, s.
        gravity: [3] m/s².
        particle_mass: [P] kg.
        particle_volume: [P] m³ (rest volume).
        material: the particles' material.
        bound: boundary layer in cells: velocities into a wall are removed on nodes within it.
        wall_friction: Coulomb coefficient of walls and floor (0: free slip).
        sticky_floor: nodes in the floor layer moving down stop entirely (Rewarped's dexdeform ground).
        window: grids cover only the nodes the particles reach (``grid.window``; the same result as the
            whole domain, at a fraction of the cost); False: the whole G³ domain.
    """

    grid_size: int
    dx: float
    dt: float
    gravity: Tensor
    particle_mass: Tensor
    particle_volume: Tensor
    material: Material
    bound: int = 3
    wall_friction: float = 0.0
    sticky_floor: bool = False
    window: bool = True

    def to(self, device=None, dtype=None) -> MPMModel:
        cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return self._replace(gravity=cast(self.gravity), particle_mass=cast(self.particle_mass), particle_volume=cast(self.particle_volume))


class MPMState(NamedTuple):
    """Particles of N envs: x, v [N, P, 3] (m, m/s); c [N, P, 3, 3] APIC affine velocity (1/s);
    f [N, P, 3, 3] trial deformation gradient: the elastic part of the last substep advected by this one,
    before the return mapping (Rewarped's ``F_trial``; the elastic part is ``materials.project(material, f)``,
    the same matrix for purely elastic materials)."""

    x: Tensor
    v: Tensor
    c: Tensor
    f: Tensor

    @staticmethod
    def at_rest(x: Tensor, v: Tensor | None = None) -> MPMState:
        """Undeformed particles at x [N, P, 3] with velocity v (default 0) and no affine motion."""
        n, p, _ = x.shape
        v = torch.zeros_like(x) if v is None else v
        eye = torch.eye(3, dtype=x.dtype, device=x.device).expand(n, p, 3, 3)
        return MPMState(x, v, torch.zeros_like(eye), eye.clone())
