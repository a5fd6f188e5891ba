"""Articulated rigid bodies in generalized coordinates (DFlex's formulation), batched in torch.

``load_mjcf`` builds a ``RigidModel`` from MJCF; ``step(model, state, RigidControl(actuation), dt)`` advances a
``RigidState`` by one frame of semi-implicit Euler substeps with penalty ground contact and joint limits; muscles
(``tphys.rigid.muscles``, ``RigidControl(actuation, activation)``) pull along paths of via points.
"""

from tphys.rigid.builder import Body, Joint, RigidBuilder
from tphys.rigid.dynamics import bias_forces, joint_accelerations, kinematics, mass_matrix
from tphys.rigid.integrator import RigidControl, step
from tphys.rigid.kinematics import forward_kinematics
from tphys.rigid.mjcf import load_mjcf
from tphys.rigid.model import Material, RigidModel, RigidState, material
from tphys.rigid.model_files import model_path
from tphys.rigid.muscles import Muscles, build_muscles, moment_arms, path_lengths

__all__ = ["Body", "Joint", "Material", "Muscles", "RigidBuilder", "RigidControl", "RigidModel", "RigidState", "bias_forces",
           "build_muscles", "forward_kinematics", "joint_accelerations", "kinematics", "load_mjcf", "mass_matrix", "material", "model_path",
           "moment_arms", "path_lengths", "step"]
