"""Collider SDFs (distance, normal = its gradient) and the grid coupling (no penetration, friction, FD gradients)."""

import math

import pytest
import torch
from helpers import check_directional_derivative

from tphys.mpm import Material, MPMModel, MPMState, substep
from tphys.mpm.colliders import SHAPES, Shapes, collide, signed_distance

SIZES = {"sphere": [0.1, 0.0, 0.0], "box": [0.1, 0.05, 0.08], "capsule": [0.03, 0.2, 0.0], "cylinder": [0.05, 0.1, 0.0]}


@pytest.mark.parametrize("kind", SHAPES)
def test_normal_is_the_gradient_of_the_distance(kind):
    gen = torch.Generator().manual_seed(0)
    p = (0.3 * torch.randn(400, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    size = torch.tensor(SIZES[kind], dtype=torch.float64)
    distance, normal = signed_distance(kind, size, p)
    (grad,) = torch.autograd.grad(distance.sum(), p)
    torch.testing.assert_close(normal, grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(normal.norm(dim=-1), torch.ones(400, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_known_distances():
    f64 = dict(dtype=torch.float64)
    point = torch.tensor([[0.0, 0.3, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]], **f64)
    expect = {"sphere": [0.2, 0.1, -0.1], "box": [0.25, 0.1, -0.05], "capsule": [0.07, 0.17, -0.03], "cylinder": [0.2, 0.15, -0.05]}
    for kind, values in expect.items():
        torch.testing.assert_close(signed_distance(kind, torch.tensor(SIZES[kind], **f64), point)[0], torch.tensor(values, **f64))


def test_approaching_nodes_take_the_shapes_normal_velocity_and_lose_tangential_speed_to_friction():
    """A box moving down at 1 m/s meets nodes moving up at 1 m/s with sideways 0.5 m/s (inside the box: full influence)."""
    f64 = dict(dtype=torch.float64)
    nodes = torch.tensor([[0.0, 0.0, 0.0]], **f64)
    v = torch.tensor([[0.5, 1.0, 0.0]], **f64)
    eye = torch.eye(3, **f64).expand(1, 1, 3, 3)
    position, position_next = torch.tensor([[[0.0, 0.01, 0.0]]], **f64), torch.tensor([[[0.0, 0.009, 0.0]]], **f64)
    for friction, tangential in ((0.0, 0.5), (0.2, 0.1), (1.0, 0.0)):
        shapes = Shapes(("box",), torch.tensor([[0.1, 0.1, 0.1]], **f64), friction=friction)
        out = collide(shapes, nodes, v, position, eye, position_next, eye, dt=1e-3)[0]
        torch.testing.assert_close(out, torch.tensor([tangential, -1.0, 0.0], **f64))  # normal = -y (bottom face)


def test_gradient_through_a_moving_collider_matches_finite_differences():
    """A sphere pushed into a plasticine block: d(final positions)/d(sphere displacement), float64, twin kernels."""
    grid = 10
    dx = 1.0 / grid
    axis = torch.arange(0.36, 0.64, dx / 2, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    volume = torch.full((x.shape[0],), (dx / 2) ** 3, dtype=torch.float64)
    model = MPMModel(grid, dx, 2e-4, torch.zeros(3, dtype=torch.float64), 1000 * volume, volume,
                     Material.from_young("plasticine", 5e3, 0.2, yield_stress=50.0))
    shapes = Shapes(("sphere",), torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64), friction=0.5)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(1, 1, 3, 3)

    def loss(motion):
        state = MPMState.at_rest(x[None])
        start = torch.tensor([[[0.5, 0.75, 0.5]]], dtype=torch.float64)
        for k in range(5):
            now, nxt = start + k * motion, start + (k + 1) * motion
            state = substep(model, state, backend="torch", colliders=(shapes, now, eye, nxt, eye))
        return (state.x[0] * weights).sum()

    motion = torch.tensor([[[0.0, -0.004, 0.001]]], dtype=torch.float64)
    direction = torch.tensor([[[0.3, -1.0, 0.2]]], dtype=torch.float64) * 1e-3
    check_directional_derivative(loss, [motion], [direction], eps=(1e-7, 1e-6), rtol=1e-4)
    assert math.isfinite(loss(motion).item())
