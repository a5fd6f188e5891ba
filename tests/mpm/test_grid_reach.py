"""cpu/grid.c skips a shape for nodes beyond its reach (its world bounding box + the band + a margin, ``shape_reach``):
with fluid_move's thin band (softness 666, cutoff 0.1: 3.5 mm, a sixth of a cell) around turned shapes of every kind, the
nodes in the band, at the bounding boxes' corners, still meet the shape, so C matches the torch twin."""

from __future__ import annotations

import math

import pytest
import torch

from tphys.kernels import grid_kernels
from tphys.mpm import Material, MPMModel
from tphys.mpm.colliders import SHAPES, Shapes, signed_distance
from tphys.mpm.grid import grid_velocity_torch

F64 = dict(dtype=torch.float64)
GRID, WINDOW, ORIGIN = 96, (28, 28, 28), (34, 34, 34)
SIZES = {"sphere": [0.06, 0.0, 0.0], "box": [0.08, 0.01, 0.05], "capsule": [0.02, 0.06, 0.0], "cylinder": [0.04, 0.03, 0.0]}

pytestmark = pytest.mark.skipif(not grid_kernels.available(torch.float64), reason="no C compiler")


def turned(count: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=torch.Generator().manual_seed(seed), **F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q * torch.det(q)[:, None, None]


@pytest.mark.parametrize("kind", SHAPES)
def test_nodes_in_a_thin_band_around_turned_shapes_still_meet_them(kind):
    dx = 1.0 / GRID
    model = MPMModel(GRID, dx, 1e-4, torch.tensor([0.0, -9.8, 0.0], **F64), torch.ones(1, **F64), torch.ones(1, **F64),
                     Material("water", 1.0, 1.0), bound=3)
    shapes = Shapes((kind,) * 3, torch.tensor([SIZES[kind]] * 3, **F64), friction=0.5, softness=666.0, cutoff=0.1)
    band = math.log(1 / shapes.cutoff) / shapes.softness
    gen = torch.Generator().manual_seed(1)
    centre = (torch.tensor(ORIGIN, **F64) + torch.tensor(WINDOW, **F64) / 2) * dx
    position = (centre + 0.03 * torch.randn(3, 3, generator=gen, **F64)).unsqueeze(0)
    rotation = turned(3, 2).unsqueeze(0)
    poses = [position, rotation, position + 1e-4, rotation]
    mass = 0.5 + torch.rand(1, *WINDOW, generator=gen, **F64)
    momentum = torch.randn(1, *WINDOW, 3, generator=gen, **F64)
    origin = torch.tensor([ORIGIN])
    node = (torch.stack(torch.meshgrid(*(torch.arange(w) for w in WINDOW), indexing="ij"), -1).reshape(-1, 3) + origin) * dx
    distance = torch.stack([signed_distance(kind, shapes.sizes[s], (node - position[0, s]) @ rotation[0, s])[0] for s in range(3)])
    assert ((distance > 0) & (distance < band)).sum() >= 100  # the thin band holds nodes of every shape
    weights = torch.randn(momentum.shape, generator=gen, **F64)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        out = []
        for run in (grid_velocity_torch, grid_kernels.grid_velocity_cpu):
            leaves = [t.to(dtype).clone().requires_grad_() for t in (mass, momentum, *poses)]
            hit = (shapes._replace(sizes=shapes.sizes.to(dtype)), *leaves[2:])
            velocity = run(model.to(dtype=dtype), leaves[0], leaves[1], hit, origin)
            out.append((velocity.detach(), torch.autograd.grad((velocity * weights.to(dtype)).sum(), leaves)))
        (v_twin, g_twin), (v_c, g_c) = out
        for a, b in ((v_c, v_twin), *zip(g_c, g_twin)):
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(b.abs().max().item(), 1e-300))
        assert g_twin[2].abs().max() > 0  # the shapes acted
