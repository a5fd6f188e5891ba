"""APG / BPTT (Freeman et al. 2021): maximise the discounted H-step return through the simulator (Eq. 16)."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from rl.objectives.common import FirstOrderLoss
from rl.objectives.returns import window_return


class APGLoss(FirstOrderLoss):
    """``loss_actor = -(1 / (N H)) sum_envs sum_t gamma^t r_t`` over one window, no critic.

    The discount restarts at episode ends inside the window (the gradient never crosses a reset).
    """

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        traj, following = self.rollout(tensordict)
        w = self.window_tensors(traj)
        num_envs, horizon = w["reward"].shape
        ret = window_return(w["reward"], torch.zeros_like(w["reward"]), w["done"], self.gamma)
        return TensorDict(
            loss_actor=-ret.sum() / (num_envs * horizon),
            next_state=self.detach_state(following),
            window=TensorDict(reward=w["reward"].detach(), done=w["done"], batch_size=w["reward"].shape),
            batch_size=[],
        )
