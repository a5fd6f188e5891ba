"""Grid update of MLS-MPM: momentum to velocity, gravity, kinematic colliders, and walls with Coulomb friction.

Grids are windows: [N, WX, WY, WZ] nodes of the G³ domain starting at node ``origin`` [N, 3] of each
env (``window``), large enough to hold every particle's stencil, so the cost follows the material, not
the domain. Only nodes with mass are updated (a compact list of M nodes); the rest stay at zero velocity.

``grid_velocity`` runs the update as one C call per substep over every env where it can (``tphys.kernels.grid_kernels``,
``cpu/grid.c``, with a hand-written adjoint), else the torch ops of ``grid_velocity_torch`` (its twin). Measured on the
recipes' float32 envs at N = 16 (cProfile, process CPU time, load 5): the torch ops took 50 % of a fluid_move forward
frame (39 % hand_flip, 41 % rolling_flat) and the C call takes 7-10 %.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tphys.kernels import grid_kernels
from tphys.mpm.colliders import collide
from tphys.mpm.model import MPMModel

_MIN_MASS = grid_kernels.MIN_MASS  # 1e-12 kg; nodes lighter than this are empty
_ROUND = 4  # window extents round up to a multiple of this many nodes


def stencil_range(model: MPMModel) -> tuple[float, float]:
    """[low, high) in m, the same on every axis: the positions whose quadratic stencil (nodes base..base+2 an axis, base =
    floor(x/dx - 0.5)) lies on the grid's nodes 0..G-1, i.e. x/dx in [0.5, G - 1.5). Under the walls' boundary layer
    (``bound`` >= 2 cells) and a substep moving no particle more than a cell, particles never leave it."""
    return 0.5 * model.dx, (model.grid_size - 1.5) * model.dx


def outside_grid(model: MPMModel, x: Tensor) -> Tensor:
    """[N] bool: the envs with a particle of x [N, P, 3] outside ``stencil_range`` on some axis. Such a particle's
    nodes off the grid weigh 0: P2G loses that part of its mass and momentum and G2P moves it with the rest, so its
    physics is wrong without any error (the envs refuse it under ``validate``; ``outside_detail`` says where). A NaN is
    not outside (the finite checks name it)."""
    low, high = stencil_range(model)
    smallest, largest = torch.aminmax(x.detach().flatten(1), dim=-1)
    return (smallest < low) | (largest >= high)


def outside_detail(model: MPMModel, x: Tensor, bad: Tensor, offset: int = 0) -> str:
    """Where the first env of ``bad`` [N] bool (``outside_grid``) has particles of x [N, P, 3] outside the grid: their
    count, the farthest one and its position, and ``stencil_range`` with G and dx. The env is named by its index plus
    ``offset`` (a shard's first global env, for global indices)."""
    low, high = stencil_range(model)
    env = int(bad.nonzero()[0])
    points = x[env].detach()
    outside = ((points < low) | (points >= high)).any(-1)
    farthest = int(torch.where(outside, torch.maximum(low - points, points - high).amax(-1), -math.inf).argmax())
    position = ", ".join(f"{float(c):.4g}" for c in points[farthest])
    return (f"env {env + offset}: {int(outside.sum())} of its {points.shape[0]} particles outside, the farthest (particle {farthest}) at "
            f"({position}) m; the grid's stencils reach [{low:.4g}, {high:.4g}) m on each axis (x/dx in [0.5, G - 1.5), G = "
            f"{model.grid_size}, dx = {model.dx:.4g} m)")


def window(model: MPMModel, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """(origin [N, 3] int64 node index, shape (WX, WY, WZ)) of the grid window holding the stencils of particles
    x [N, P, 3]: the same shape for every env, inside the domain; the whole domain if ``model.window`` is False."""
    g, n = model.grid_size, x.shape[0]
    if not model.window:
        return torch.zeros(n, 3, dtype=torch.int64, device=x.device), (g, g, g)
    with torch.no_grad():
        bounds = torch.stack(torch.aminmax(x, dim=1)).div_(model.dx).sub_(0.5).floor_().tolist()  # [2][N][3]: the extreme stencils' bases
    if not all(math.isfinite(b) for side in bounds for env in side for b in env):  # NaN particles: the whole domain, as without windows
        return torch.zeros(n, 3, dtype=torch.int64, device=x.device), (g, g, g)
    low = [[int(b) for b in env] for env in bounds[0]]
    high = [[int(b) + 2 for b in env] for env in bounds[1]]
    extent = [min((max(h[k] - lo[k] for lo, h in zip(low, high)) + _ROUND) // _ROUND * _ROUND, g) for k in range(3)]
    origin = [[min(max(lo[k], 0), g - extent[k]) for k in range(3)] for lo in low]
    return torch.tensor(origin, dtype=torch.int64, device=x.device), tuple(extent)


def grid_velocity(model: MPMModel, grid_mass: Tensor, grid_momentum: Tensor, colliders: tuple | None = None,
                  origin: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Node velocities [N, WX, WY, WZ, 3] after gravity, colliders and walls (``grid_velocity_torch``'s docstring has
    the inputs and the math): one C call over every env (``tphys.kernels.grid_kernels``, with its adjoint) where
    ``grid_kernels.serves`` says so under ``backend`` ("auto" | "triton" | "cpu" | "torch", ``tphys.kernels``' vocabulary;
    no Triton kernel: "triton" runs the torch ops), the torch ops of ``grid_velocity_torch`` otherwise."""
    n = grid_mass.shape[0]
    if origin is None:
        origin = torch.zeros(n, 3, dtype=torch.int64, device=grid_mass.device)
    if grid_kernels.serves(model, grid_mass, grid_momentum, colliders, backend):
        return grid_kernels.grid_velocity_cpu(model, grid_mass, grid_momentum, colliders, origin)
    return grid_velocity_torch(model, grid_mass, grid_momentum, colliders, origin)


def grid_velocity_torch(model: MPMModel, grid_mass: Tensor, grid_momentum: Tensor, colliders: tuple | None = None,
                        origin: Tensor | None = None) -> Tensor:
    """Node velocities [N, WX, WY, WZ, 3] after gravity, colliders and walls, from mass [N, WX, WY, WZ] and momentum
    [N, WX, WY, WZ, 3] on the window at ``origin`` [N, 3] (default: the whole domain, origin 0).

    ``colliders``: None or (shapes, position, rotation, position_next, rotation_next) with per-env poses
    [N, S, 3] / [N, S, 3, 3], see ``colliders.collide``. A node within ``bound`` cells of a wall loses
    its velocity component into that wall (the walls of the cube [0, G·dx)³; the floor is y = 0) and,
    with ``wall_friction`` μ, its tangential speed shrinks by μ times the removed normal speed (Coulomb),
    to zero at most; with ``sticky_floor`` a node of the floor layer moving down stops.
    """
    n, shape = grid_mass.shape[0], tuple(grid_mass.shape[1:])
    if origin is None:
        origin = torch.zeros(n, 3, dtype=torch.int64, device=grid_mass.device)
    per_env = shape[0] * shape[1] * shape[2]
    flat_mass = grid_mass.reshape(-1)
    index = (flat_mass > _MIN_MASS).nonzero().squeeze(-1)  # [M] filled nodes
    env, rest = index // per_env, index % per_env
    local = torch.stack([rest // (shape[1] * shape[2]), rest // shape[2] % shape[1], rest % shape[2]], -1)
    node = local + origin[env]  # [M, 3] global node indices
    v = grid_momentum.reshape(-1, 3)[index] / flat_mass[index].unsqueeze(-1) + model.dt * model.gravity
    if colliders is not None:
        shapes, *poses = colliders
        s = len(shapes.kinds)
        table = torch.cat([pose.reshape(n, -1) for pose in poses], -1).index_select(0, env)  # one gather of every pose
        position, rotation, position_next, rotation_next = table.split([3 * s, 9 * s, 3 * s, 9 * s], -1)
        v = collide(shapes, node.to(v.dtype) * model.dx, v, position.view(-1, s, 3), rotation.view(-1, s, 3, 3),
                    position_next.view(-1, s, 3), rotation_next.view(-1, s, 3, 3), model.dt)
    g, bound = model.grid_size, model.bound
    if model.sticky_floor:
        v = torch.where(((node[:, 1] < bound) & (v[:, 1] < 0)).unsqueeze(-1), 0.0, v)
    for axis in range(3):
        normal = v[:, axis]
        into = ((node[:, axis] < bound) & (normal < 0)) | ((node[:, axis] >= g - bound) & (normal > 0))
        keep = torch.ones(3, dtype=v.dtype, device=v.device)
        keep[axis] = 0.0
        if model.wall_friction > 0:
            tangential = v * keep
            speed = torch.sqrt((tangential * tangential).sum(-1) + 1e-20)
            scale = torch.clamp_min(1 - model.wall_friction * normal.abs() / speed, 0.0)
            v = torch.where(into.unsqueeze(-1), tangential * scale.unsqueeze(-1), v)
        else:
            v = torch.where(into.unsqueeze(-1), v * keep, v)
    return v.new_zeros(n * per_env, 3).index_put((index,), v).view(n, *shape, 3)
