"""TorchRL environments of tphys: ``make(name, num_envs=..., device=..., dtype=..., **overrides)``.

``list_envs()`` maps every registered name to a one-line description;
``python -m tphys.envs`` prints that table. ``tphys.envs.registry.parameters(name)`` gives an env's physical
parameters with their defaults and the valid range of every numeric parameter and option; ``make`` refuses a
value outside it (``rope3d: stiffness must be > 0, got -1.0``) before building anything.
"""

from tphys.envs import fluid_move, hand_flip, locomotion, payload_tasks, rolling_flat, snu_humanoid, soft_jumper  # noqa: F401  (register the DFlex rigid tasks, the PODS suite, the MPM tasks, SoftJumper)
from tphys.envs.base import TphysEnv
from tphys.envs.payload import GOALS, INTEGRATORS, PayloadEnv, PayloadTask, RewardWeights
from tphys.envs.registry import list_envs, make, register
from tphys.envs.rigid_env import RigidEnv, RigidTask

__all__ = ["GOALS", "INTEGRATORS", "PayloadEnv", "PayloadTask", "RewardWeights", "RigidEnv", "RigidTask", "TphysEnv",
           "list_envs", "make", "register"]
