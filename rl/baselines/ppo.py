"""PPO from TorchRL's components: ``Collector``, ``ClipPPOLoss`` + ``GAE``, a replay buffer of minibatches.

Per collector batch (``num_envs x horizon`` frames): GAE advantages and value targets are
computed once with the current critic (``loss.value_estimator``); then ``epochs`` passes over the
batch in ``minibatches`` shuffled minibatches (``SamplerWithoutReplacement``), each one a step of
the clipped surrogate (advantages normalized per minibatch) for the actor and of the value
regression for the critic, with separate optimizers and gradient-norm clipping.

Learning rate: ``lr_schedule: adaptive_kl`` is rl_games' adaptive rule (its "legacy" form, applied
after every minibatch): with ``kl`` the mean analytic KL(new || old) of the pre-tanh Gaussians on
that minibatch (old = the collecting policy, new = the policy the minibatch's loss was computed
with), ``lr /= 1.5`` if ``kl > 2 kl_target``, ``lr *= 1.5`` if ``kl < kl_target / 2``, clamped to
``[lr_min, lr_max]``. The critic's learning rate follows it in proportion (rl_games uses one
optimizer for both). ``lr_schedule: constant`` keeps both fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch.distributions import Normal, kl_divergence
from torchrl.data import LazyTensorStorage, SamplerWithoutReplacement, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from rl.objectives.common import Trainable
from rl.trainers.collector import CollectorConfig, CollectorTrainer

# what a minibatch needs once the advantage is computed
TRAIN_KEYS = ("observation", "action", "action_log_prob", "loc", "scale", "advantage", "value_target", "state_value")


class PPOBaselineLoss(Trainable, ClipPPOLoss):
    """TorchRL's ``ClipPPOLoss`` with ``GAE(gamma, lmbda)`` advantages; parameter groups: actor, critic.

    ``entropy_coeff`` 0 turns the entropy bonus off; the other keyword arguments are ``ClipPPOLoss``'s.
    """

    def __init__(self, actor: TensorDictModuleBase, critic: TensorDictModuleBase, gamma: float, lmbda: float,
                 entropy_coeff: float = 0.0, **kwargs):
        entropy_coeff = float(entropy_coeff)
        super().__init__(actor, critic, entropy_bonus=entropy_coeff > 0, entropy_coeff=entropy_coeff if entropy_coeff > 0 else None,
                         **kwargs)
        self.make_value_estimator(ValueEstimators.GAE, gamma=float(gamma), lmbda=float(lmbda))

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters()), "critic": list(self.critic_network.parameters())}


@dataclass
class PPOConfig(CollectorConfig):
    """``CollectorConfig`` and PPO's passes over each batch and learning-rate rule (recipes/config/algo/ppo.yaml)."""

    epochs: int = 5
    minibatches: int = 4
    lr_schedule: str = "adaptive_kl"
    kl_target: float = 0.008
    lr_min: float = 1e-6
    lr_max: float = 1e-2

    LR_SCHEDULES: ClassVar[tuple[str, ...]] = ("adaptive_kl", "constant")
    MINIMUM: ClassVar[dict[str, int]] = {**CollectorConfig.MINIMUM, "epochs": 1, "minibatches": 1}


class PPOTrainer(CollectorTrainer):
    """PPO on ``env``: ``epochs`` passes over each collector batch in ``minibatches`` shuffled minibatches.

    Args:
        loss: a ``PPOBaselineLoss``; env: the training env; config: ``PPOConfig``.
        run_dir, eval_env, normalizer, logger: as ``rl.trainers.Trainer``.
    """

    name = "ppo"

    def __init__(self, loss: PPOBaselineLoss, env: EnvBase, config: PPOConfig, **outputs):
        super().__init__(loss, env, config, **outputs)
        self.lr = config.actor_lr
        minibatch_size = -(-self.steps_per_iter // config.minibatches)
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(self.steps_per_iter),
                                             sampler=SamplerWithoutReplacement(), batch_size=minibatch_size)
        self.dist_params = self.actor.module[0]  # observation -> loc, scale (for the KL of the lr schedule)

    # ------------------------------------------------------------------ learning rate
    def set_lr(self, lr: float) -> None:
        """The actor's rate; the critic's follows in proportion (``critic_lr / actor_lr``)."""
        self.lr = lr
        for group in self.actor_opt.param_groups:
            group["lr"] = lr
        for group in self.critic_opt.param_groups:
            group["lr"] = lr * self.cfg.critic_lr / self.cfg.actor_lr

    def adapt_lr(self, kl: float) -> None:
        cfg = self.cfg
        if cfg.lr_schedule != "adaptive_kl":
            return
        lr = self.lr
        if kl > 2.0 * cfg.kl_target:
            lr = max(lr / 1.5, cfg.lr_min)
        elif kl < 0.5 * cfg.kl_target:
            lr = min(lr * 1.5, cfg.lr_max)
        self.set_lr(lr)

    @torch.no_grad()
    def kl(self, minibatch: TensorDictBase) -> float:
        """Mean analytic KL(new || old) of the pre-tanh Gaussians (the KL of the tanh-squashed ones too)."""
        new = self.dist_params(minibatch.select("observation").clone(False))
        kl = kl_divergence(Normal(new["loc"], new["scale"]), Normal(minibatch["loc"], minibatch["scale"]))
        return kl.sum(-1).mean().item()

    # ------------------------------------------------------------------ one batch
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        with torch.no_grad():
            batch = self.loss.value_estimator(batch)
        if not torch.isfinite(batch["advantage"]).all():
            self.nonfinite("GAE advantage (non-finite reward or value)", "batch dropped")
            return {"train/skipped": float(self.skips)}
        self.buffer.empty()
        self.buffer.extend(batch.select(*TRAIN_KEYS).reshape(-1))
        named = self.named_parameters("actor", "critic")
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(self.cfg.epochs):
            for _ in range(self.cfg.minibatches):
                mb = self.buffer.sample()
                out = self.loss(mb)
                losses = {k: v for k, v in out.items() if k.startswith("loss_")}
                self.zero_grad("actor", "critic")
                bad = self.nonfinite_report(losses, [])
                if not bad:
                    sum(losses.values()).backward()
                    bad = self.nonfinite_report({}, named)
                if bad:
                    self.nonfinite(bad, "rest of the batch dropped")
                    self.zero_grad("actor", "critic")
                    return {"train/skipped": float(self.skips)}
                kl = self.kl(mb)
                stats = {
                    "loss/actor": out["loss_objective"].item(), "loss/critic": out["loss_critic"].item(),
                    "grad_norm/actor": self.clip(self.parameter_groups["actor"]),
                    "grad_norm/critic": self.clip(self.parameter_groups["critic"]),
                    "ppo/kl": kl, "ppo/clip_fraction": out["clip_fraction"].item(),
                }
                if "entropy" in out.keys():
                    stats["ppo/entropy"] = out["entropy"].item()
                if "explained_variance" in out.keys():
                    stats["ppo/explained_variance"] = out["explained_variance"].item()
                self.optimizer_step("actor", "critic")
                self.adapt_lr(kl)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
        scalars = {k: v / steps for k, v in sums.items()}
        scalars["lr/actor"] = self.lr
        scalars["ppo/scale"] = batch["scale"].mean().item()
        return scalars

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        return {**super().extra_state(), "lr": self.lr}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.set_lr(float(state["lr"]))
