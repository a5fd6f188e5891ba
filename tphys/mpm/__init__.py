"""MLS-MPM: grid windows per env, materials with one-SVD return mappings, safe SVD / polar decomposition,
kinematic SDF colliders, substeps with recompute; ``step(model, state, MPMControl(...), dt)`` advances a frame."""

from tphys.mpm.grid import grid_velocity, outside_detail, outside_grid, stencil_range, window
from tphys.mpm.materials import KINDS, Material, elastic_stress, kirchhoff_stress, project
from tphys.mpm.model import MPMModel, MPMState
from tphys.mpm.step import MPMControl, step, substep
from tphys.mpm.svd import polar, signed_svd, spectral, svd3

__all__ = ["KINDS", "MPMControl", "MPMModel", "MPMState", "Material", "elastic_stress", "grid_velocity", "kirchhoff_stress",
           "outside_detail", "outside_grid", "polar", "project", "signed_svd", "spectral", "stencil_range", "step", "substep",
           "svd3", "window"]
