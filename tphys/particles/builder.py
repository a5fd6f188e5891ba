"""Incremental construction of a ``ParticleModel`` from particles, springs, triangles and tetrahedra."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tphys.particles.model import Ground, ParticleModel, Springs, Tetrahedra, Triangles


@dataclass
class ParticleBuilder:
    """Collects particles and elements, then emits a float64 CPU ``ParticleModel``.

    Rest lengths and rest shapes default to the distances in the positions given when
    the particles were added. Example::

        b = ParticleBuilder(dim=2)
        h = b.add_handle([0.0, 0.5])
        m = b.add_particle([0.0, 0.0], mass=0.05)
        b.add_cable(h, m, stiffness=500.0)
        model, rest_positions = b.build()
    """

    dim: int
    gravity: float = 9.81
    drag: float = 0.0
    up_axis: int = 1
    slack_width: float = 1e-3
    positions: list = field(default_factory=list)
    masses: list = field(default_factory=list)
    is_handle: list = field(default_factory=list)
    springs: list = field(default_factory=list)
    triangles: list = field(default_factory=list)
    membrane: tuple | None = None
    ground: dict | None = None
    tetrahedra: list = field(default_factory=list)

    def add_particle(self, position, mass: float) -> int:
        """A free point mass (kg) at ``position`` (m); returns its index."""
        if mass <= 0:
            raise ValueError(f"particle mass must be positive, got {mass}")
        return self._add(position, mass, handle=False)

    def add_handle(self, position) -> int:
        """A kinematic handle at ``position``: its velocity is set by the control."""
        return self._add(position, 1.0, handle=True)

    def add_spring(self, i: int, j: int, stiffness: float, damping: float = 0.0, rest_length=None) -> int:
        """A bilateral spring (pushes and pulls) between particles i and j."""
        return self._add_spring(i, j, stiffness, damping, rest_length, tension_only=False)

    def add_cable(self, i: int, j: int, stiffness: float, damping: float = 0.0, rest_length=None) -> int:
        """A unilateral spring: pulls when stretched beyond ``rest_length``, slack otherwise."""
        return self._add_spring(i, j, stiffness, damping, rest_length, tension_only=True)

    def add_triangle(self, i: int, j: int, k: int) -> int:
        """A membrane triangle (needs ``set_membrane``); rest shape from current positions."""
        if self.dim != 3:
            raise ValueError("membrane triangles need dim = 3")
        self.triangles.append((i, j, k))
        return len(self.triangles) - 1

    def add_tetrahedron(self, i: int, j: int, k: int, m: int, mu: float, lam: float, damping: float = 0.0,
                        fiber=(1.0, 0.0, 0.0), max_stress: float = 0.0) -> int:
        """A stable neo-Hookean element (see ``fem``): Lamé mu, lam in Pa, damping in Pa·s, a rest fiber
        direction and the fiber tension (Pa) at activation 1. Corners are reordered to a positive volume."""
        if self.dim != 3:
            raise ValueError("tetrahedra need dim = 3")
        if len({i, j, k, m}) != 4:
            raise ValueError(f"tetrahedron ({i}, {j}, {k}, {m}) repeats a particle")
        if mu <= 0 or lam <= 0:
            raise ValueError(f"tetrahedron needs mu > 0 and lam > 0, got mu={mu}, lam={lam}")
        p = [torch.tensor(self.positions[n], dtype=torch.float64) for n in (i, j, k, m)]
        volume = torch.linalg.det(torch.stack([p[1] - p[0], p[2] - p[0], p[3] - p[0]], -1)).item() / 6
        if abs(volume) < 1e-15:
            raise ValueError(f"tetrahedron ({i}, {j}, {k}, {m}) has zero rest volume")
        if volume < 0:
            j, k = k, j
        norm = math.sqrt(sum(c * c for c in fiber))
        self.tetrahedra.append(((i, j, k, m), float(mu), float(lam), float(damping), [c / norm for c in fiber], float(max_stress)))
        return len(self.tetrahedra) - 1

    def add_solid(self, vertices, tets, density: float, mu: float, lam: float, damping: float = 0.0, fiber=(1.0, 0.0, 0.0),
                  max_stress: float = 0.0) -> list[int]:
        """A tetrahedral solid (e.g. ``meshing.box_mesh``): vertices [V, 3] m, tets [T, 4], density kg/m³,
        lumped vertex masses; material as in ``add_tetrahedron``, with ``fiber`` one direction [3] or one
        per tetrahedron [T, 3]. Returns the particle index of every vertex."""
        from tphys.particles.meshing import lumped_masses

        vertices, tets = torch.as_tensor(vertices, dtype=torch.float64), torch.as_tensor(tets, dtype=torch.long)
        masses = lumped_masses(vertices, tets, density)
        if (masses <= 0).any():
            raise ValueError("every vertex of a solid must belong to a tetrahedron")
        fibers = torch.as_tensor(fiber, dtype=torch.float64).expand(tets.shape[0], 3)
        index = [self.add_particle(p, float(m)) for p, m in zip(vertices.tolist(), masses.tolist())]
        for tet, direction in zip(tets.tolist(), fibers.tolist()):
            self.add_tetrahedron(*[index[c] for c in tet], mu=mu, lam=lam, damping=damping, fiber=direction, max_stress=max_stress)
        return index

    def set_membrane(self, mu: float, lam: float) -> None:
        """Lamé parameters of the sheet in N/m (co-rotational membrane)."""
        self.membrane = (mu, lam)

    def set_ground(self, height=0.0, stiffness=1e3, damping=1.0, friction=0.5, slip=1e-2, smoothing=1e-3) -> None:
        """Contact plane at ``height`` (m) on the up axis; see ``model.Ground``."""
        self.ground = dict(height=height, stiffness=stiffness, damping=damping, friction=friction, slip=slip, smoothing=smoothing)

    def build(self) -> tuple[ParticleModel, torch.Tensor]:
        """Returns the model and the [P, d] positions the particles were added at."""
        f64 = dict(dtype=torch.float64)
        pos = torch.tensor(self.positions, **f64).reshape(-1, self.dim)
        num = pos.shape[0]
        handle = torch.tensor(self.is_handle, dtype=torch.bool)
        handle_index = torch.nonzero(handle).flatten()
        gravity = torch.zeros(self.dim, **f64)
        gravity[self.up_axis] = -self.gravity
        return (
            ParticleModel(
                mass=torch.tensor(self.masses, **f64),
                free_mask=(~handle).to(torch.float64),
                free_scatter=torch.nn.functional.one_hot(torch.nonzero(~handle).flatten(), num).to(torch.float64),
                handle_index=handle_index,
                handle_scatter=torch.nn.functional.one_hot(handle_index, num).to(torch.float64),
                gravity=gravity,
                drag=torch.tensor(self.drag, **f64),
                springs=self._build_springs(pos),
                triangles=self._build_triangles(pos),
                ground=None if self.ground is None else Ground(**{k: torch.tensor(v, **f64) for k, v in self.ground.items()}),
                up_axis=self.up_axis,
                tetrahedra=self._build_tetrahedra(pos),
            ),
            pos,
        )

    def _add(self, position, mass, handle):
        position = [float(c) for c in position]
        if len(position) != self.dim:
            raise ValueError(f"position {position} has {len(position)} coordinates, expected {self.dim}")
        self.positions.append(position)
        self.masses.append(float(mass))
        self.is_handle.append(handle)
        return len(self.positions) - 1

    def _add_spring(self, i, j, stiffness, damping, rest_length, tension_only):
        if i == j:
            raise ValueError(f"spring connects particle {i} to itself")
        if rest_length is None:
            rest_length = math.dist(self.positions[i], self.positions[j])
        self.springs.append((i, j, float(rest_length), float(stiffness), float(damping), float(tension_only)))
        return len(self.springs) - 1

    def _build_springs(self, pos):
        if not self.springs:
            return None
        cols = list(zip(*self.springs))
        i = torch.tensor(cols[0])
        j = torch.tensor(cols[1])
        incidence = torch.zeros(len(self.springs), pos.shape[0], dtype=torch.float64)
        rows = torch.arange(len(self.springs))
        incidence[rows, j] += 1.0
        incidence[rows, i] -= 1.0
        f64 = dict(dtype=torch.float64)
        return Springs(
            incidence=incidence,
            rest_length=torch.tensor(cols[2], **f64),
            stiffness=torch.tensor(cols[3], **f64),
            damping=torch.tensor(cols[4], **f64),
            tension_only=torch.tensor(cols[5], **f64),
            slack_width=torch.tensor(self.slack_width, **f64),
        )

    def _build_triangles(self, pos):
        if not self.triangles:
            return None
        if self.membrane is None:
            raise ValueError("triangles were added but set_membrane(mu, lam) was not called")
        corners = torch.tensor(self.triangles)
        x = pos[corners]  # [T, 3, 3]
        e1, e2 = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]
        # Orthonormal 2-D frame in the triangle's plane: u along e1, w in-plane orthogonal.
        u = e1 / e1.norm(dim=-1, keepdim=True)
        w = e2 - (e2 * u).sum(-1, keepdim=True) * u
        w = w / w.norm(dim=-1, keepdim=True)
        rest = torch.stack(
            [torch.stack([(e1 * u).sum(-1), (e1 * w).sum(-1)], -1), torch.stack([(e2 * u).sum(-1), (e2 * w).sum(-1)], -1)],
            -1,
        )  # [T, 2, 2] columns = edges in the 2-D frame
        area = 0.5 * torch.linalg.det(rest).abs()
        if (area <= 0).any():
            raise ValueError("degenerate (zero-area) triangle in the rest shape")
        gather = torch.nn.functional.one_hot(corners.T, pos.shape[0]).to(torch.float64)  # [3, T, P]
        f64 = dict(dtype=torch.float64)
        return Triangles(
            corners=corners,
            gather=gather,
            rest_inverse=torch.linalg.inv(rest),
            rest_area=area,
            mu=torch.tensor(self.membrane[0], **f64),
            lam=torch.tensor(self.membrane[1], **f64),
        )

    def _build_tetrahedra(self, pos):
        if not self.tetrahedra:
            return None
        corners = torch.tensor([t[0] for t in self.tetrahedra])
        x = pos[corners]  # [T, 4, 3]
        rest = (x[:, 1:] - x[:, :1]).transpose(-1, -2)  # [T, 3 (xyz), 3 (edge)]
        f64 = dict(dtype=torch.float64)
        return Tetrahedra(
            corners=corners,
            rest_inverse=torch.linalg.inv(rest),
            rest_volume=torch.linalg.det(rest) / 6,
            mu=torch.tensor([t[1] for t in self.tetrahedra], **f64),
            lam=torch.tensor([t[2] for t in self.tetrahedra], **f64),
            damping=torch.tensor([t[3] for t in self.tetrahedra], **f64),
            fiber=torch.tensor([t[4] for t in self.tetrahedra], **f64),
            max_stress=torch.tensor([t[5] for t in self.tetrahedra], **f64),
        )
