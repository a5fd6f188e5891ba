"""SHAC (Xu et al. 2021): short-horizon actor-critic with a terminal value (Eq. 17-20)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase

from rl.modules.critic import ValueEnsemble
from rl.objectives.common import FirstOrderLoss, frozen, trainable
from rl.objectives.returns import bootstrap_values, td_lambda_targets, window_return


class SHACLoss(FirstOrderLoss):
    """Actor: ``-(1 / (N H)) sum (R_{0:H} + gamma^H V'(s_H))`` (Eq. 20, with episode ends);
    critic: MSE to TD(lambda) targets (Eq. 18-19) computed with the target critic ``V'``.

    Args:
        env, actor: the env and a ``SquashedGaussianActor`` (state-independent std, as SHAC).
        critic: a ``ValueEnsemble`` (SHAC uses one critic; several are averaged).
        horizon, gamma, lmbda: window length H, discount, TD(lambda) trace decay.
        target_tau: target critic update ``V' <- tau V' + (1 - tau) V`` after each critic
            training phase (table 2: 0.995); ``None`` bootstraps from the critic itself.
    """

    has_critic = True

    def __init__(self, env: EnvBase, actor: TensorDictModuleBase, critic: ValueEnsemble, horizon: int = 32,
                 gamma: float = 0.99, lmbda: float = 0.95, target_tau: float | None = 0.995):
        super().__init__(env, actor, horizon, gamma)
        self.make_value_estimator(gamma=gamma, lmbda=lmbda)
        self.critic = critic
        if target_tau is not None and not 0.0 <= target_tau < 1.0:
            raise ValueError(f"target_tau must be in [0, 1) or None, got {target_tau}")
        self.target_tau = target_tau
        self.critic_target = None
        # set by a trainer that steps the critic on another thread (rl.trainers.critic_worker): given the bootstrap
        # network, waits for the critic's pending mini-epochs and returns a frozen copy to take the window's values from
        self.values_from: Callable[[nn.Module], nn.Module] | None = None
        if target_tau is not None:
            self.critic_target = copy.deepcopy(critic)
            self.critic_target.normalizer = critic.normalizer  # share the live statistics
            self.critic_target.requires_grad_(False)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {**super().parameter_groups(), "critic": trainable(self.critic)}

    def after_update(self) -> None:
        """The target critic follows the critic once per window, after the critic's mini-epochs."""
        self.update_target()

    def bootstrap_net(self) -> ValueEnsemble:
        return self.critic if self.critic_target is None else self.critic_target

    def value_net(self) -> nn.Module:
        """The network the window's values V(s_t) come from, after its rollout: ``bootstrap_net()``, or what
        ``values_from`` makes of it."""
        net = self.bootstrap_net()
        return net if self.values_from is None else self.values_from(net)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        traj, following = self.rollout(tensordict)
        w = self.window_tensors(traj)
        num_envs, horizon = w["reward"].shape
        net = self.value_net()
        with frozen(net):
            values = bootstrap_values(net(w["next_observation"]).mean(-1), w["terminated"])
        ret = window_return(w["reward"], values, w["done"], self.gamma)
        with torch.no_grad():
            targets = td_lambda_targets(w["reward"], values, w["done"], self.gamma, self.lmbda)
        return TensorDict(
            loss_actor=-ret.sum() / (num_envs * horizon),
            next_state=self.detach_state(following),
            critic_batch=self.critic_batch(traj, targets),
            window=TensorDict(reward=w["reward"].detach(), done=w["done"], batch_size=w["reward"].shape),
            batch_size=[],
        )

    def critic_batch(self, traj: TensorDictBase, targets: torch.Tensor) -> TensorDict:
        """Flat ``[N H]`` batch of detached observations s_t and their value targets."""
        keys = self.tensor_keys
        obs = traj.get(keys.observation).detach()
        batch = TensorDict({keys.observation: obs, keys.value_target: targets.detach()}, batch_size=targets.shape)
        return batch.reshape(-1)

    def critic_data(self, batch: TensorDictBase, normalizer=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs [B, D], targets [B])`` of a critic batch: the observations as the critics take them (normalized,
        by ``normalizer`` if given), computed once for the window's mini-epochs (the normalizer does not move during
        them)."""
        keys = self.tensor_keys
        return self.critic.inputs(batch.get(keys.observation), normalizer), batch.get(keys.value_target)

    def critic_fit_error(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``loss_critic``: MSE of every critic of the ensemble to ``targets [B]`` on ``inputs [B, D]`` (rows of
        ``critic_data``), averaged (Eq. 18): a scalar."""
        return (self.critic.values(inputs) - targets.unsqueeze(-1)).square().mean()

    @torch.no_grad()
    def update_target(self) -> None:
        if self.critic_target is None:
            return
        for p_target, p in zip(self.critic_target.parameters(), self.critic.parameters()):
            p_target.lerp_(p, 1.0 - self.target_tau)
