"""First-order losses in TorchRL's ``LossModule`` style: APG, SHAC, SAPO, TrajOpt, PODS, GPS."""

from rl.objectives.apg import APGLoss
from rl.objectives.common import FirstOrderLoss, Trainable, differentiable_rollout, frozen, trainable
from rl.objectives.gps import GPSLoss
from rl.objectives.pods import PODSLoss
from rl.objectives.returns import bootstrap_values, td_lambda_targets, window_return
from rl.objectives.sapo import SAPOLoss
from rl.objectives.shac import SHACLoss
from rl.objectives.trajopt import OpenLoopPolicy, TrajOptLoss

__all__ = [
    "APGLoss", "FirstOrderLoss", "GPSLoss", "OpenLoopPolicy", "PODSLoss", "SAPOLoss", "SHACLoss", "Trainable", "TrajOptLoss",
    "bootstrap_values", "differentiable_rollout", "frozen", "td_lambda_targets", "trainable", "window_return",
]
