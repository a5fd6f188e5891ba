"""SAPO (Xing et al., appendix B): maximum-entropy first-order actor-critic.

Per window of H steps from the states ``s_0`` (Algorithm 1):

    h_t   = -log pi(a_t | s_t)                  one-sample MC entropy of the tanh-squashed Gaussian
    hh_t  = (h_t + |Hbar|) / (2 |Hbar|)         entropy normalized by the target entropy Hbar = -dim(A)/2
    actor:  loss_actor = -(1 / (N H)) sum_envs [sum_t gamma^t (r_t + alpha hh_t) + gamma^H mean_i V_i(s_H)]
            (Eq. 8-9; the mean of the C critics; alpha held constant)
    alpha:  loss_alpha = alpha * mean_t (h_t - Hbar)  (Eq. 21, unnormalized h, alpha = exp(log_alpha))
    critic: TD(lambda) targets (Eq. 19) of the soft returns of Eq. 10 with hh_t and min_i V_i,
            no target network; ``critic_loss`` is the MSE averaged over the ensemble.

At an episode end inside the window, the segment bootstraps from V(terminal observation)
on truncation and 0 on termination, and the discount restarts.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase

from rl.modules.critic import ValueEnsemble
from rl.objectives.common import frozen
from rl.objectives.returns import bootstrap_values, td_lambda_targets, window_return
from rl.objectives.shac import SHACLoss


class SAPOLoss(SHACLoss):
    """See the module docstring. ``critic`` is a ``ValueEnsemble`` with C >= 1 (SAPO: C = 2).

    Args:
        target_entropy: Hbar; default ``-dim(A) / 2``.
        init_alpha: initial temperature (table 2: 1.0).
        normalize_entropy: use hh_t (SAPO) instead of h_t in returns and targets.
    """

    def __init__(self, env: EnvBase, actor: TensorDictModuleBase, critic: ValueEnsemble, horizon: int = 32,
                 gamma: float = 0.99, lmbda: float = 0.95, target_entropy: float | None = None, init_alpha: float = 1.0,
                 normalize_entropy: bool = True):
        super().__init__(env, actor, critic, horizon, gamma, lmbda, target_tau=None)
        action_dim = int(env.action_spec.shape[-1])
        self.target_entropy = -0.5 * action_dim if target_entropy is None else float(target_entropy)
        if self.target_entropy == 0.0 and normalize_entropy:
            raise ValueError("entropy normalization divides by |target_entropy|; it must be non-zero")
        if init_alpha <= 0:
            raise ValueError(f"init_alpha must be > 0, got {init_alpha}")
        self.normalize_entropy = normalize_entropy
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha), dtype=env.action_spec.dtype))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Actor and critics as SHAC's, and the temperature ``log_alpha`` (stepped with the actor, never clipped)."""
        return {**super().parameter_groups(), "alpha": [self.log_alpha]}

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def scaled_entropy(self, entropy: torch.Tensor) -> torch.Tensor:
        """hh = (h + |Hbar|) / (2 |Hbar|), about [0, 1] (identity without normalization)."""
        if not self.normalize_entropy:
            return entropy
        scale = abs(self.target_entropy)
        return (entropy + scale) / (2.0 * scale)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        traj, following = self.rollout(tensordict)
        w = self.window_tensors(traj)
        num_envs, horizon = w["reward"].shape
        entropy = -traj.get(self.tensor_keys.log_prob)
        alpha = self.alpha.detach().to(w["reward"].dtype)
        soft_reward = w["reward"] + alpha * self.scaled_entropy(entropy)
        net = self.value_net()  # the critic (SAPO has no target critic)
        with frozen(net):
            values = net(w["next_observation"])
        mean_values = bootstrap_values(values.mean(-1), w["terminated"])
        ret = window_return(soft_reward, mean_values, w["done"], self.gamma)
        loss_alpha = self.alpha * (entropy.detach() - self.target_entropy).mean()
        with torch.no_grad():
            min_values = bootstrap_values(values.min(-1).values, w["terminated"])
            targets = td_lambda_targets(soft_reward, min_values, w["done"], self.gamma, self.lmbda)
        return TensorDict(
            loss_actor=-ret.sum() / (num_envs * horizon),
            loss_alpha=loss_alpha,
            alpha=alpha,
            entropy=entropy.detach().mean(),
            next_state=self.detach_state(following),
            critic_batch=self.critic_batch(traj, targets),
            window=TensorDict(reward=w["reward"].detach(), done=w["done"], batch_size=w["reward"].shape),
            batch_size=[],
        )
