"""Tetrahedral meshes of simple solids, written by us (no mesher dependency).

``box_mesh`` fills an axis-aligned box with a grid of cubes, each split into the 6 tetrahedra
around its main diagonal (Kuhn's subdivision): neighbouring cubes share their face diagonals,
so the mesh is conforming. ``lumped_masses`` gives each vertex a quarter of the mass of every
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
    axes = [torch.linspace(lower[a], upper[a], n + 1, dtype=torch.float64) for a, n in enumerate((nx, ny, nz))]
    vertices = torch.cartesian_prod(*axes)  # index (i·(ny+1) + j)·(nz+1) + k

    def vid(i, j, k):
        return (i * (ny + 1) + j) * (nz + 1) + k

    tets = []
    for i, j, k in itertools.product(range(nx), range(ny), range(nz)):
        corner = [vid(i + (c & 1), j + (c >> 1 & 1), k + (c >> 2 & 1)) for c in range(8)]
        tets += [[corner[c] for c in tet] for tet in _KUHN]
    tets = torch.tensor(tets, dtype=torch.long)
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
