"""Networks: MLP trunk, PointNet encoder, squashed-Gaussian and deterministic actors, value ensembles, observation normalizer."""

from rl.modules.actor import SquashedGaussianActor, squashed_gaussian_log_prob
from rl.modules.critic import ValueEnsemble
from rl.modules.deterministic import DeterministicActor
from rl.modules.mlp import MLP, activation
from rl.modules.normalizer import ObservationNormalizer
from rl.modules.pointnet import PointCloudEncoder, PointNet

__all__ = [
    "DeterministicActor", "MLP", "ObservationNormalizer", "PointCloudEncoder", "PointNet", "SquashedGaussianActor", "ValueEnsemble",
    "activation",
    "squashed_gaussian_log_prob",
]
