"""Deterministic tanh policy as a TensorDict module (PODS, appendix A.3 of its paper).

``a = tanh(MLP(s))``: 2 hidden layers of 256 ReLU units, a tanh output so that actions stay
within the velocity limits. Exploration type is ignored: PODS improves the actions of the
deterministic policy through the simulator instead of exploring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from rl.modules.mlp import MLP, check_observations
from rl.modules.normalizer import ObservationNormalizer


class DeterministicActor(TensorDictModuleBase):
    """Policy ``observation [..., D] -> action [..., A]`` in (-1, 1).

    Args:
        obs_dim, action_dim: sizes.
        hidden, act, layer_norm: the MLP trunk (see ``rl.modules.MLP``); the paper's (256, 256), relu, no norm.
        out_gain: orthogonal-init gain of the output layer (small: the initial policy is near zero).
        normalizer: optional ``ObservationNormalizer`` applied first (updated by the trainer).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256), act: str = "relu",
                 layer_norm: bool = False, out_gain: float = 0.01, normalizer: ObservationNormalizer | None = None,
                 observation_key: str = "observation", action_key: str = "action"):
        super().__init__()
        self.in_keys, self.out_keys = [observation_key], [action_key]
        self.observation_key, self.action_key = observation_key, action_key
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.net = MLP(obs_dim, action_dim, hidden, act, layer_norm, out_gain=out_gain)
        self.normalizer = normalizer

    def action(self, obs: Tensor) -> Tensor:
        """``obs [..., D] -> action [..., A]``."""
        check_observations("actor", obs, self.obs_dim, self)
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        return torch.tanh(self.net(obs))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set(self.action_key, self.action(tensordict.get(self.observation_key)))
        return tensordict
