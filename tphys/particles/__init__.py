"""Batched particle systems: point masses, handles, springs, cables, cloth, FEM solids, ground contact."""

from tphys.particles.builder import ParticleBuilder
from tphys.particles.forces import kinetic_energy, potential_energy, total_forces
from tphys.particles.integrators import bdf2, semi_implicit_euler
from tphys.particles.model import Ground, ParticleModel, ParticleState, Springs, Tetrahedra, Triangles

__all__ = [
    "Ground",
    "ParticleBuilder",
    "ParticleModel",
    "ParticleState",
    "Springs",
    "Tetrahedra",
    "Triangles",
    "bdf2",
    "kinetic_energy",
    "potential_energy",
    "semi_implicit_euler",
    "total_forces",
]
