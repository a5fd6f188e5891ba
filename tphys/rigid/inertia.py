"""Mass and inertia of primitive shapes, MuJoCo's formulas (``mjCGeom::SetInertia``), float64.

Each function returns (mass kg, [3, 3] inertia about the centre, shape axes: the shape's long
axis is z). ``combine`` sums shapes placed in a body frame (parallel-axis theorem).
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def volume(kind: str, size) -> float:
    """Volume (m³) of a shape with MuJoCo's ``size`` (radii and half-lengths)."""
    if kind == "sphere":
        return 4 / 3 * math.pi * size[0] ** 3
    if kind == "capsule":
        return math.pi * size[0] ** 2 * (2 * size[1]) + 4 / 3 * math.pi * size[0] ** 3
    if kind == "cylinder":
        return math.pi * size[0] ** 2 * 2 * size[1]
    if kind == "box":
        return 8 * size[0] * size[1] * size[2]
    if kind == "ellipsoid":
        return 4 / 3 * math.pi * size[0] * size[1] * size[2]
    raise NotImplementedError(f"no volume for geom type {kind!r}")


def shape_inertia(kind: str, size, mass: float) -> torch.Tensor:
    """[3, 3] inertia (kg·m²) about the centre of a shape of ``mass`` kg, shape axes."""
    if kind == "sphere":
        d = [2 / 5 * mass * size[0] ** 2] * 3
    elif kind == "capsule":
        r, h = size[0], 2 * size[1]
        sphere = mass * (4 * r / 3) / (4 * r / 3 + h)  # the two end caps' share of the volume
        cylinder = mass - sphere
        side = cylinder * (3 * r * r + h * h) / 12 + sphere * (2 * r * r / 5 + h * h / 4 + 3 * h * r / 8)
        d = [side, side, cylinder * r * r / 2 + sphere * 2 * r * r / 5]
    elif kind == "cylinder":
        r, h = size[0], 2 * size[1]
        side = mass * (3 * r * r + h * h) / 12
        d = [side, side, mass * r * r / 2]
    elif kind == "box":
        a, b, c = (2 * s for s in size[:3])
        d = [mass * (b * b + c * c) / 12, mass * (a * a + c * c) / 12, mass * (a * a + b * b) / 12]
    elif kind == "ellipsoid":
        a, b, c = size[:3]
        d = [mass * (b * b + c * c) / 5, mass * (a * a + c * c) / 5, mass * (a * a + b * b) / 5]
    else:
        raise NotImplementedError(f"no inertia for geom type {kind!r}")
    return torch.diag(torch.tensor(d, dtype=F64))


def combine(parts) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Total (mass, centre of mass [3], inertia about it [3, 3]) of ``parts``: iterables of
    (mass, position [3], rotation [3, 3], inertia about own centre [3, 3]) in a common frame."""
    parts = list(parts)
    mass = sum(p[0] for p in parts)
    if mass <= 0:
        return 0.0, torch.zeros(3, dtype=F64), torch.zeros(3, 3, dtype=F64)
    com = sum(p[0] * torch.as_tensor(p[1], dtype=F64) for p in parts) / mass
    inertia = torch.zeros(3, 3, dtype=F64)
    eye = torch.eye(3, dtype=F64)
    for m, pos, rot, local in parts:
        rot = torch.as_tensor(rot, dtype=F64)
        r = torch.as_tensor(pos, dtype=F64) - com
        inertia = inertia + rot @ torch.as_tensor(local, dtype=F64) @ rot.T + m * (r.dot(r) * eye - torch.outer(r, r))
    return mass, com, inertia
