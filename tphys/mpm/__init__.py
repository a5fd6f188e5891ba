"""MLS-MPM (issue 6, in progress): dense per-env grids, materials, safe SVD / polar decomposition,
substeps with recompute. Kinematic colliders and the MPM tasks are not here yet."""

from tphys.mpm.grid import grid_velocity
from tphys.mpm.materials import KINDS, Material, kirchhoff_stress, project
from tphys.mpm.model import MPMModel, MPMState
from tphys.mpm.step import step, substep
from tphys.mpm.svd import polar, spectral, svd3

__all__ = ["KINDS", "MPMModel", "MPMState", "Material", "grid_velocity", "kirchhoff_stress", "polar", "project", "spectral", "step",
           "substep", "svd3"]
