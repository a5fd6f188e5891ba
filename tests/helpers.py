"""Test utilities: differentiable rollouts of tphys envs from explicit actions."""

from __future__ import annotations

import torch
from torchrl.envs.utils import step_mdp

PARTICLE_ENVS = ("cable_payload2d", "cloth", "double_pendulum3d", "pendulum2d", "pendulum3d", "rope3d")  # the PODS suite


def summed_reward(env, td0, actions):
    """Sum of rewards of a rollout of ``actions`` [T, N, A] from the state in ``td0``."""
    td = td0
    total = 0.0
    for action in actions:
        td = td.clone(False).set("action", action)
        td = env.step(td)
        total = total + td["next", "reward"].sum()
        td = step_mdp(td)
    return total


def no_damping(name: str) -> dict:
    """Overrides that switch off every dissipative force of env ``name`` except drag."""
    if name == "cloth":
        return dict(spring_damping=0.0, contact_damping=0.0, friction=0.0)
    return dict(damping=0.0)


def _central_difference(loss, leaves, directions, eps):
    with torch.no_grad():
        plus = loss(*[t + eps * d for t, d in zip(leaves, directions)]).item()
        minus = loss(*[t - eps * d for t, d in zip(leaves, directions)]).item()
    return (plus - minus) / (2 * eps)


def _richardson(loss, leaves, directions, eps):
    """Central differences at EPS and EPS/2 combined to cancel the O(eps²) term."""
    coarse = _central_difference(loss, leaves, directions, eps)
    fine = _central_difference(loss, leaves, directions, eps / 2)
    return (4 * fine - coarse) / 3


def check_directional_derivative(loss, leaves, directions, eps: float | tuple[float, ...] = 1e-6, rtol: float = 1e-5):
    """Autograd's derivative of ``loss(*leaves)`` along ``directions`` against Richardson-extrapolated central differences.

    ``eps`` may list several step sizes: finite differences err one way at small steps (rounding in the
    rollouts, large where stiff internal forces dwarf the rewards) and the other at large steps (the
    smoothed kinks of cables and contacts, and a step whose solve has several roots switching root), so
    the steps are tried in order and the estimate closest to autograd is compared. A wrong gradient
    disagrees with every estimate.
    """
    leaves = [t.clone().requires_grad_() for t in leaves]
    grads = torch.autograd.grad(loss(*leaves), leaves)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions)).item()
    steps = eps if isinstance(eps, tuple) else (eps,)
    # A directional derivative near zero is measured against the Cauchy-Schwarz bound
    # |g|·|d| (times 1e-3), not against itself: there FD noise would dominate any ratio.
    bound = sum(g.norm() * d.norm() for g, d in zip(grads, directions)).item()

    def error(numeric: float) -> float:
        return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-3 * bound, 1e-12)

    numeric = None
    for step in steps:  # in order, until one agrees (later steps cost time only where an earlier one fails)
        estimate = _richardson(loss, leaves, directions, step)
        numeric = estimate if numeric is None or error(estimate) < error(numeric) else numeric
        if error(numeric) < rtol:
            break
    assert error(numeric) < rtol, f"autograd {analytic:.12e} vs finite differences {numeric:.12e} (steps {steps})"
    assert all(torch.isfinite(g).all() for g in grads)


def pressed_block(kind: str = "plasticine", cutoff: float | None = None):
    """An MPM test scene in float64: ``(model, x [1, P, 3], shapes, eye [1, 1, 3, 3])`` of a block of ``kind`` on an 8³
    grid (two particles per cell and axis) and one sphere collider of radius 0.1 (friction 0.5)."""
    from tphys.mpm import Material, MPMModel
    from tphys.mpm.colliders import Shapes

    f64 = dict(dtype=torch.float64)
    grid = 8
    dx = 1.0 / grid
    axis = torch.arange(0.3, 0.6, dx / 2, **f64)
    x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    volume = torch.full((x.shape[1],), (dx / 2) ** 3, **f64)
    model = MPMModel(grid, dx, 1e-3, torch.tensor([0.0, -9.8, 0.0], **f64), 1000 * volume, volume,
                     Material.from_young(kind, 5e3, 0.2, yield_stress=50.0))
    extra = {} if cutoff is None else {"cutoff": cutoff}
    shapes = Shapes(("sphere",), torch.tensor([[0.1, 0.0, 0.0]], **f64), friction=0.5, **extra)
    return model, x, shapes, torch.eye(3, **f64).expand(1, 1, 3, 3)
