"""Batched particle systems: point masses, handles, springs, cables, cloth, FEM solids, ground contact.

Engine steps, each ``step(model, state, control, dt, ...) -> ParticleState``: ``semi_implicit_euler`` and ``bdf2``
(``ParticleControl``: handle velocities, muscle activations) and the FEM solid's fused frame ``solid.step``
(``SolidControl``: muscle activations). Without autograd, ``semi_implicit_euler`` on CPU runs a model of springs and
cables as one fused C kernel (``fused_step``; ``backend="torch"`` keeps the torch ops).
"""

from tphys.particles.builder import ParticleBuilder
from tphys.particles.forces import kinetic_energy, potential_energy, total_forces
from tphys.particles.integrators import bdf2, semi_implicit_euler
from tphys.particles.model import Ground, ParticleControl, ParticleModel, ParticleState, Springs, Tetrahedra, Triangles
from tphys.particles.solid import SolidControl

__all__ = [
    "Ground",
    "ParticleBuilder",
    "ParticleControl",
    "ParticleModel",
    "ParticleState",
    "SolidControl",
    "Springs",
    "Tetrahedra",
    "Triangles",
    "bdf2",
    "kinetic_energy",
    "potential_energy",
    "semi_implicit_euler",
    "total_forces",
]
