"""Tetrahedral meshes of simple solids, written by us (no mesher dependency).

``voxel_mesh`` turns a set of grid cubes into tetrahedra, each cube split into the 6 tetrahedra
around its main diagonal (Kuhn's subdivision): neighbouring cubes share their face diagonals,
so the mesh is conforming; ``box_mesh`` is a full box of cubes. ``lumped_masses`` gives each vertex a quarter of the mass of every
tetrahedron it belongs to.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

# The 6 tetrahedra of the unit cube around the diagonal from corner 0 to corner 7 (corner bits: x, y, z).
_KUHN = [(0, 1, 3, 7), (0, 1, 5, 7), (0, 2, 3, 7), (0, 2, 6, 7), (0, 4, 5, 7), (0, 4, 6, 7)]


def box_mesh(lower, upper, cells) -> tuple[Tensor, Tensor]:
    """Vertices [V, 3] (m, float64) and tetrahedra [T, 4] (long, positive volume) of a box.

    Args:
        lower, upper: opposite corners (m).
        cells: cubes along x, y, z (ints >= 1).
    """
    nx, ny, nz = (int(c) for c in cells)
    if min(nx, ny, nz) < 1:
        raise ValueError(f"cells must be >= 1 along every axis, got {cells}")
    lower, upper = torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)
    if (upper <= lower).any():
        raise ValueError(f"upper {upper.tolist()} must exceed lower {lower.tolist()} on every axis")
    spacing = (upper - lower) / torch.tensor([nx, ny, nz], dtype=torch.float64)
    vertices, tets = voxel_mesh(list(itertools.product(range(nx), range(ny), range(nz))), 1.0)
    return lower + vertices * spacing, tets


def voxel_mesh(cells, size: float) -> tuple[Tensor, Tensor]:
    """Vertices [V, 3] (m) and tetrahedra [T, 4] of the union of cubes of edge ``size`` (m) at the
    integer grid positions ``cells`` [(i, j, k), ...]; vertices are shared between touching cubes,
    numbered in sorted grid order."""
    cells = sorted({tuple(int(c) for c in cell) for cell in cells})
    if not cells:
        raise ValueError("voxel_mesh needs at least one cell")
    corners = [[(i + (c & 1), j + (c >> 1 & 1), k + (c >> 2 & 1)) for c in range(8)] for i, j, k in cells]
    points = sorted({p for cube in corners for p in cube})
    index = {p: n for n, p in enumerate(points)}
    tets = torch.tensor([[index[cube[c]] for c in tet] for cube in corners for tet in _KUHN], dtype=torch.long)
    vertices = size * torch.tensor(points, dtype=torch.float64)
    return vertices, orient(vertices, tets)


def signed_volumes(vertices: Tensor, tets: Tensor) -> Tensor:
    """[T] signed volumes (m³) of the tetrahedra."""
    x = vertices[tets]
    return torch.linalg.det((x[:, 1:] - x[:, :1]).transpose(-1, -2)) / 6


def orient(vertices: Tensor, tets: Tensor) -> Tensor:
    """Tetrahedra with corners 1 and 2 swapped where the volume is negative."""
    flip = signed_volumes(vertices, tets) < 0
    out = tets.clone()
    out[flip, 1], out[flip, 2] = tets[flip, 2], tets[flip, 1]
    return out


def lumped_masses(vertices: Tensor, tets: Tensor, density: float) -> Tensor:
    """[V] kg: a quarter of each tetrahedron's mass (density kg/m³) to each of its corners."""
    quarter = (density * signed_volumes(vertices, tets).abs() / 4).repeat_interleave(4)
    return torch.zeros(vertices.shape[0], dtype=torch.float64).index_add(0, tets.reshape(-1), quarter)
