"""TrajOpt: one open-loop action sequence optimised through the simulator (SAPO paper, appendix E).

A single T-step sequence ``a_t = tanh(u_t)`` (``u`` initialised at zero) is played in every
env; it is optimised window by window (H steps, graph cut between windows) to maximise the
summed reward. Evaluation plays the same sequence from each env's random initial state.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase

from rl.objectives.apg import APGLoss


class OpenLoopPolicy(TensorDictModuleBase):
    """``step_count [..., 1] -> action [..., A]``: ``tanh(u[step_count])``, the same for every env."""

    def __init__(self, episode_length: int, action_dim: int, step_key: str = "step_count"):
        super().__init__()
        self.in_keys, self.out_keys = [step_key], ["action"]
        self.step_key = step_key
        self.preactions = nn.Parameter(torch.zeros(episode_length, action_dim))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        step = tensordict.get(self.step_key).squeeze(-1).clamp(0, self.preactions.shape[0] - 1)
        tensordict.set("action", torch.tanh(self.preactions[step]))
        return tensordict


class TrajOptLoss(APGLoss):
    """APG's loss (``-(1 / (N H)) sum_envs sum_t gamma^t r_t``, gamma 1) for the open-loop sequence."""

    def __init__(self, env: EnvBase, horizon: int = 32, gamma: float = 1.0, episode_length: int | None = None):
        length = int(episode_length or getattr(env, "horizon", 0))
        if length < 1:
            raise ValueError("TrajOptLoss needs the episode length (env.horizon or episode_length)")
        action_dim = int(env.action_spec.shape[-1])
        policy = OpenLoopPolicy(length, action_dim).to(dtype=env.action_spec.dtype, device=env.device)
        super().__init__(env, policy, horizon, gamma)
