"""Grid update of MLS-MPM: momentum to velocity, gravity, and walls with Coulomb friction."""

from __future__ import annotations

import torch
from torch import Tensor

from tphys.mpm.colliders import collide
from tphys.mpm.model import MPMModel

_MIN_MASS = 1e-12  # kg; nodes lighter than this are empty


def node_positions(model: MPMModel, like: Tensor) -> Tensor:
    """[G, G, G, 3] world positions of the grid nodes, m."""
    axis = torch.arange(model.grid_size, dtype=like.dtype, device=like.device) * model.dx
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)


def grid_velocity(model: MPMModel, grid_mass: Tensor, grid_momentum: Tensor, colliders: tuple | None = None) -> Tensor:
    """Node velocities [N, G, G, G, 3] after gravity, colliders and walls, from mass [N, G, G, G] and momentum [N, G, G, G, 3].

    ``colliders``: None or (shapes, position, rotation, position_next, rotation_next) for
    ``colliders.collide``. A node within ``bound`` cells of a wall loses its velocity component into
    that wall (the walls of the cube [0, G·dx)³; the floor is y = 0) and, with ``wall_friction`` μ, its
    tangential speed shrinks by μ times the removed normal speed (Coulomb), to zero at most; with
    ``sticky_floor`` a node of the floor layer moving down stops.
    """
    filled = (grid_mass > _MIN_MASS).unsqueeze(-1)
    v = torch.where(filled, grid_momentum / grid_mass.clamp_min(_MIN_MASS).unsqueeze(-1) + model.dt * model.gravity, 0.0)
    if colliders is not None:
        v = torch.where(filled, collide(colliders[0], node_positions(model, v), v, *colliders[1:], model.dt), 0.0)
    g, bound = model.grid_size, model.bound
    index = torch.arange(g, device=v.device)
    if model.sticky_floor:
        floor = (index < bound).view(1, 1, g, 1) & (v[..., 1] < 0)
        v = torch.where(floor.unsqueeze(-1), 0.0, v)
    for axis in range(3):
        shape = [1, 1, 1, 1]
        shape[1 + axis] = g
        low, high = (index < bound).view(shape), (index >= g - bound).view(shape)
        normal = v[..., axis]
        into = (low & (normal < 0)) | (high & (normal > 0))
        if model.wall_friction > 0:
            tangential = v.clone()
            tangential[..., axis] = 0.0
            speed = torch.sqrt((tangential * tangential).sum(-1) + 1e-20)
            scale = torch.clamp_min(1 - model.wall_friction * normal.abs() / speed, 0.0)
            v = torch.where(into.unsqueeze(-1), tangential * scale.unsqueeze(-1), v)
        else:
            v = torch.where(into.unsqueeze(-1), v * _drop(axis, v), v)
    return v


def _drop(axis: int, like: Tensor) -> Tensor:
    keep = torch.ones(3, dtype=like.dtype, device=like.device)
    keep[axis] = 0.0
    return keep
