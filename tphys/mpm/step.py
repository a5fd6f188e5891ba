"""MLS-MPM time stepping (Hu et al. 2018): pure functions of (model, state).

One substep: Kirchhoff stress of F -> P2G of mass, momentum and the MLS affine term
A = -dt·V·(4/dx²)·τ + m·C -> grid update (gravity, walls) -> G2P of v and C -> x += dt·v,
F <- return mapping of (I + dt·C)·F.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from tphys.kernels import g2p, p2g
from tphys.mpm.grid import grid_velocity
from tphys.mpm.materials import kirchhoff_stress, project
from tphys.mpm.model import MPMModel, MPMState


def substep(model: MPMModel, state: MPMState, backend: str = "auto", colliders: tuple | None = None) -> MPMState:
    """One MLS-MPM substep of ``model.dt`` seconds; ``backend`` picks the transfer kernels (see ``tphys.kernels``);
    ``colliders``: None or (shapes, position, rotation, position_next, rotation_next), see ``grid.grid_velocity``."""
    x, v, c, f = state
    n = x.shape[0]
    mass = model.particle_mass.expand(n, -1)
    stress = kirchhoff_stress(model.material, f)
    affine = (-model.dt * 4 / model.dx**2) * model.particle_volume[:, None, None] * stress + mass[..., None, None] * c
    grid_mass, grid_momentum = p2g(x, mass, mass.unsqueeze(-1) * v, affine, model.grid_size, model.dx, backend=backend)
    v, c = g2p(x, grid_velocity(model, grid_mass, grid_momentum, colliders), model.dx, backend=backend)
    f_trial = (torch.eye(3, dtype=x.dtype, device=x.device) + model.dt * c) @ f
    return MPMState(x + model.dt * v, v, c, project(model.material, f_trial))


def step(model: MPMModel, state: MPMState, substeps: int, recompute: bool = True, backend: str = "auto") -> MPMState:
    """``substeps`` substeps; ``recompute=True`` keeps only the step's input for backward and reruns
    the substeps there (memory per step, not per substep)."""

    def run(*tensors):
        s = MPMState(*tensors)
        for _ in range(substeps):
            s = substep(model, s, backend)
        return tuple(s)

    if recompute and torch.is_grad_enabled():
        return MPMState(*checkpoint(run, *state, use_reentrant=False))
    return MPMState(*run(*state))
