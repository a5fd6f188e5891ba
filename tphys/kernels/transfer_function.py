"""The autograd wrappers shared by the kernel backends (Triton, C): allocation, saved tensors, backward calls.

A backend supplies four launchers with the kernels' argument order (all tensors contiguous, one dtype):

    p2g_forward(x, mass, momentum, affine, grid_mass, grid_momentum, n, p, grid_shape, dx)        adds into the grids
    p2g_backward(x, mass, momentum, affine, d_grid_mass, d_grid_momentum, dx_out, dmass, dmomentum, daffine, n, p, grid_shape, dx)
    g2p_forward(x, grid_velocity, v, c, n, p, grid_shape, dx)
    g2p_backward(x, grid_velocity, dv, dc, d_grid_velocity, dx_out, n, p, grid_shape, dx)           adds into d_grid_velocity
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable


class Launchers(NamedTuple):
    p2g_forward: Callable
    p2g_backward: Callable
    g2p_forward: Callable
    g2p_backward: Callable


class P2G(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launch: Launchers, x, mass, momentum, affine, grid_shape: tuple, dx: float):
        x, mass, momentum, affine = (t.detach().contiguous() for t in (x, mass, momentum, affine))
        n, p = mass.shape
        grid_mass, grid_momentum = x.new_zeros(n, *grid_shape), x.new_zeros(n, *grid_shape, 3)
        launch.p2g_forward(x, mass, momentum, affine, grid_mass, grid_momentum, n, p, grid_shape, dx)
        ctx.save_for_backward(x, mass, momentum, affine)
        ctx.launch, ctx.grid_shape, ctx.dx = launch, grid_shape, dx
        return grid_mass, grid_momentum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mass, grad_momentum):
        x, mass, momentum, affine = ctx.saved_tensors
        n, p = mass.shape
        grad_mass = x.new_zeros(n, *ctx.grid_shape) if grad_mass is None else grad_mass.contiguous()
        grad_momentum = x.new_zeros(n, *ctx.grid_shape, 3) if grad_momentum is None else grad_momentum.contiguous()
        grads = [torch.empty_like(t) for t in (x, mass, momentum, affine)]
        ctx.launch.p2g_backward(x, mass, momentum, affine, grad_mass, grad_momentum, *grads, n, p, ctx.grid_shape, ctx.dx)
        return (None, *grads, None, None)


class G2P(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launch: Launchers, x, grid_velocity, dx: float):
        x, grid_velocity = x.detach().contiguous(), grid_velocity.detach().contiguous()
        n, p = x.shape[:2]
        v, c = torch.empty_like(x), x.new_empty(n, p, 3, 3)
        launch.g2p_forward(x, grid_velocity, v, c, n, p, tuple(grid_velocity.shape[1:4]), dx)
        ctx.save_for_backward(x, grid_velocity)
        ctx.launch, ctx.dx = launch, dx
        return v, c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v, grad_c):
        x, grid_velocity = ctx.saved_tensors
        n, p = x.shape[:2]
        grad_v = torch.zeros_like(x) if grad_v is None else grad_v.contiguous()
        grad_c = x.new_zeros(n, p, 3, 3) if grad_c is None else grad_c.contiguous()
        grad_grid, grad_x = torch.zeros_like(grid_velocity), torch.empty_like(x)
        ctx.launch.g2p_backward(x, grid_velocity, grad_v, grad_c, grad_grid, grad_x, n, p, tuple(grid_velocity.shape[1:4]), ctx.dx)
        return None, grad_x, grad_grid, None
