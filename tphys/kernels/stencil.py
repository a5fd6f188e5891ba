"""MLS-MPM particle-grid transfers in plain torch: the twins of the Triton kernels (same signatures).

Quadratic B-spline stencil of 3x3x3 nodes (Hu et al. 2018, MLS-MPM). Nodes sit at i·dx, i = 0..G-1
per axis; a particle at x (m) has base node floor(x/dx - 0.5) and fractional offset f = x/dx - base in
[0.5, 1.5). Per axis, offset o = 0, 1, 2 weighs

    w0 = (1.5 - f)²/2,   w1 = 0.75 - (f - 1)²,   w2 = (f - 0.5)²/2,

and the node lies at dpos = (o - f)·dx from the particle. Nodes outside the grid get weight 0: a particle's stencil
lies on the grid for x/dx in [0.5, G - 1.5) (``tphys.mpm.stencil_range``; the MPM envs refuse a state outside it under
``validate``: ``tphys.mpm.outside_grid``).

    p2g: grid mass m_i = Σ_p w_ip m_p;  grid momentum (mv)_i = Σ_p w_ip (m_p v_p + A_p·dpos_ip)
    g2p: v_p = Σ_i w_ip v_i;  C_p = 4/dx² Σ_i w_ip v_i ⊗ dpos_ip

Everything is differentiable by autograd (positions through the weights and dpos).
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_shape_of(grid_size) -> tuple[int, int, int]:
    """(GX, GY, GZ) from an int G (a cube) or three ints; each at least 3."""
    shape = (grid_size,) * 3 if isinstance(grid_size, int) else tuple(grid_size)
    if len(shape) != 3 or not all(isinstance(g, int) and g >= 3 for g in shape):
        raise ValueError(f"grid_size must be an int >= 3 or three such ints, got {grid_size!r}")
    return shape


def check_transfer_inputs(x: Tensor, grid_size, dx: float, **per_particle: Tensor) -> tuple[int, int, int]:
    """Shape and dtype checks shared by all backends (messages name the argument); returns the grid shape."""
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"x must be [N, P, 3] positions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    shape = grid_shape_of(grid_size)
    if not dx > 0:
        raise ValueError(f"dx must be > 0, got {dx!r}")
    shapes = {"mass": x.shape[:2], "momentum": x.shape, "affine": (*x.shape, 3)}
    for name, t in per_particle.items():
        if tuple(t.shape) != tuple(shapes[name]):
            raise ValueError(f"{name} must have shape {tuple(shapes[name])} for x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name} is {t.dtype} on {t.device}; x is {x.dtype} on {x.device}: they must match")
    return shape


def check_grid_velocity(x: Tensor, grid_velocity: Tensor, dx: float) -> tuple[int, int, int]:
    """Checks of g2p's inputs shared by all backends; returns the grid shape."""
    check_transfer_inputs(x, 3, dx)
    if grid_velocity.dim() != 5 or grid_velocity.shape[0] != x.shape[0] or grid_velocity.shape[-1] != 3:
        raise ValueError(f"grid_velocity must be [N, GX, GY, GZ, 3] with N = {x.shape[0]}, got {tuple(grid_velocity.shape)}")
    shape = grid_shape_of(tuple(grid_velocity.shape[1:4]))
    if grid_velocity.dtype != x.dtype or grid_velocity.device != x.device:
        raise TypeError(f"grid_velocity is {grid_velocity.dtype} on {grid_velocity.device}; x is {x.dtype} on {x.device}: they must match")
    return shape


def stencil(x: Tensor, grid_size, dx: float) -> tuple[Tensor, Tensor, Tensor]:
    """(flat node index [N, P, 27] into [N·GX·GY·GZ], weight [N, P, 27], dpos [N, P, 27, 3] in m) of positions
    x [N, P, 3] on a grid of ``grid_size`` (G or (GX, GY, GZ)) nodes.

    Offsets run (ox, oy, oz) in row-major order; the 27 values are outer products of per-axis terms.
    """
    n, p, _ = x.shape
    gx, gy, gz = grid_shape_of(grid_size)
    f = x / dx
    base = torch.floor(f - 0.5).detach()
    frac = f - base
    per_axis = torch.stack([0.5 * (1.5 - frac) ** 2, 0.75 - (frac - 1) ** 2, 0.5 * (frac - 0.5) ** 2], -1)  # [N, P, 3 (axis), 3 (o)]
    weight = per_axis[..., 0, :, None, None] * per_axis[..., 1, None, :, None] * per_axis[..., 2, None, None, :]
    offset = torch.arange(3, device=x.device)
    node = base.long().unsqueeze(-1) + offset  # [N, P, 3 (axis), 3 (o)]
    valid = (node >= 0) & (node < torch.tensor([gx, gy, gz], device=x.device).view(3, 1))
    inside = valid[..., 0, :, None, None] & valid[..., 1, None, :, None] & valid[..., 2, None, None, :]
    env = torch.arange(n, device=x.device).view(n, 1, 1, 1, 1) * (gx * gy * gz)
    flat = env + node[..., 0, :, None, None] * (gy * gz) + node[..., 1, None, :, None] * gz + node[..., 2, None, None, :]
    flat = torch.where(inside, flat, 0).reshape(n, p, 27)
    d = (offset.to(x.dtype) - frac.unsqueeze(-1)) * dx  # [N, P, 3 (axis), 3 (o)]
    dpos = torch.stack([d[..., 0, :, None, None].expand(n, p, 3, 3, 3), d[..., 1, None, :, None].expand(n, p, 3, 3, 3),
                        d[..., 2, None, None, :].expand(n, p, 3, 3, 3)], -1).reshape(n, p, 27, 3)
    return flat, (weight * inside).reshape(n, p, 27), dpos


def p2g_torch(x: Tensor, mass: Tensor, momentum: Tensor, affine: Tensor, grid_size, dx: float) -> tuple[Tensor, Tensor]:
    """Particles to grid: (grid mass [N, GX, GY, GZ] kg, grid momentum [N, GX, GY, GZ, 3] kg·m/s); ``grid_size``
    is G (a cube) or (GX, GY, GZ).

    Args:
        x: [N, P, 3] positions, m.  mass: [N, P] kg.  momentum: [N, P, 3] m·v, kg·m/s.
        affine: [N, P, 3, 3] the MLS affine term A (kg/s): each node gets A·dpos on top of w·m·v.
    """
    shape = check_transfer_inputs(x, grid_size, dx, mass=mass, momentum=momentum, affine=affine)
    n, nodes = x.shape[0], shape[0] * shape[1] * shape[2]
    flat, weight, dpos = stencil(x, shape, dx)
    nodal = momentum.unsqueeze(-2) + dpos @ affine.transpose(-1, -2)  # [N, P, 27, 3]: m·v + A·dpos per node
    grid_mass = x.new_zeros(n * nodes).index_add(0, flat.reshape(-1), (weight * mass.unsqueeze(-1)).reshape(-1))
    grid_momentum = x.new_zeros(n * nodes, 3).index_add(0, flat.reshape(-1), (weight.unsqueeze(-1) * nodal).reshape(-1, 3))
    return grid_mass.view(n, *shape), grid_momentum.view(n, *shape, 3)


def g2p_torch(x: Tensor, grid_velocity: Tensor, dx: float) -> tuple[Tensor, Tensor]:
    """Grid to particles: (v [N, P, 3] m/s, C [N, P, 3, 3] 1/s) from grid velocity [N, GX, GY, GZ, 3]."""
    shape = check_grid_velocity(x, grid_velocity, dx)
    flat, weight, dpos = stencil(x, shape, dx)
    weighted = weight.unsqueeze(-1) * grid_velocity.reshape(-1, 3)[flat]  # [N, P, 27, 3]
    return weighted.sum(-2), (4 / dx**2) * (weighted.transpose(-1, -2) @ dpos)
