"""PPO from TorchRL's components: ``Collector``, ``ClipPPOLoss`` + ``GAE``, a replay buffer of minibatches.

Per collector batch (``num_envs x horizon`` frames): GAE advantages and value targets are
computed once with the current critic (``loss.value_estimator``); then ``epochs`` passes over the
batch in ``minibatches`` shuffled minibatches (a permutation of the batch's rows per epoch, drawn from the
trainer's generator), each one a step of the clipped surrogate (advantages normalized per minibatch) for
the actor and of the value regression for the critic, with separate optimizers and gradient-norm clipping.

Data parallel (``rl.distributed``): the permutation is drawn over the global rows and each rank takes the
rows it holds; the minibatch's advantage mean and standard deviation, its losses (each rank's weighted by
its share of the minibatch) and its KL are reduced over ranks, so every rank takes the step and the
learning-rate decision a single process takes.

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
from torch import Tensor
from torch.distributions import Normal, kl_divergence
from torchrl.envs import EnvBase
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from rl import distributed
from rl.distributed import local_rows
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

    advantage_moments: tuple[Tensor, Tensor] | None = None  # the global minibatch's (mean, std), set by a data-parallel trainer

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters()), "critic": list(self.critic_network.parameters())}

    def _maybe_normalize_advantage(self, advantage: Tensor, tensordict: TensorDictBase, *, update_norm: bool) -> Tensor:
        """TorchRL's per-minibatch standardization, with the global minibatch's moments under data parallelism."""
        if self.advantage_moments is None or not self.normalize_advantage:
            return super()._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)
        mean, std = self.advantage_moments
        return (advantage - mean) / std.clamp_min(torch.finfo(torch.float).resolution)


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
    def kl(self, minibatch: TensorDictBase) -> Tensor:
        """Mean analytic KL(new || old) of the pre-tanh Gaussians (the KL of the tanh-squashed ones too), a 0-dim tensor."""
        new = self.dist_params(minibatch.select("observation").clone(False))
        kl = kl_divergence(Normal(new["loc"], new["scale"]), Normal(minibatch["loc"], minibatch["scale"]))
        return kl.sum(-1).mean()

    def advantage_moments(self, advantage: Tensor) -> tuple[Tensor, Tensor] | None:
        """Mean and unbiased std of the global minibatch's ``advantage`` (every rank's rows), for the loss to standardize
        with; None in one process (the loss computes them itself)."""
        if not distributed.is_distributed():
            return None
        a = advantage.detach().double().reshape(-1)
        first = distributed.all_reduce_sum(torch.stack([a.sum(), a.new_tensor(float(a.numel()))]))
        count = first[1].clamp_min(1.0)
        mean = first[0] / count
        m2 = distributed.all_reduce_sum((a - mean).square().sum().reshape(1))[0]
        std = (m2 / (count - 1).clamp_min(1.0)).sqrt()
        return mean.to(advantage.dtype), std.to(advantage.dtype)

    # ------------------------------------------------------------------ one batch
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        with torch.no_grad():
            batch = self.loss.value_estimator(batch)
        failure = None if torch.isfinite(batch["advantage"]).all() else "GAE advantage (non-finite reward or value)"
        failure = self.fail_together(failure)
        if failure is not None:
            self.nonfinite(failure, "batch dropped")
            return {"train/skipped": float(self.skips)}
        rows = batch.select(*TRAIN_KEYS).reshape(-1)  # this rank's envs, env-major: horizon rows per env
        per_env = rows.shape[0] // self.local_envs
        size = self.num_envs * per_env
        first, end = self.env_shard.rows(per_env)
        per = -(-size // self.cfg.minibatches)
        named = self.named_parameters("actor", "critic")
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(self.cfg.epochs):
            order = torch.randperm(size, generator=self.generator)
            for start in range(0, size, per):
                picked = order[start:start + per]
                mine = local_rows(picked, first, end)
                share = mine.numel() / picked.numel()
                mb = rows[mine]
                if self.loss.normalize_advantage:
                    self.loss.advantage_moments = self.advantage_moments(mb["advantage"])
                out = self.loss(mb) if mine.numel() else None
                stats = self.minibatch_stats(out, mb, share)
                self.zero_grad("actor", "critic")
                bad = self.nonfinite_report({k: torch.tensor(v) for k, v in stats.items() if k.startswith("loss/")}, [])
                if not bad:
                    if out is not None:
                        (sum(v for k, v in out.items() if k.startswith("loss_")) * share).backward()
                    self.reduce_gradients("actor", "critic")
                    bad = self.nonfinite_report({}, named)
                if bad:
                    self.nonfinite(bad, "rest of the batch dropped")
                    self.zero_grad("actor", "critic")
                    return {"train/skipped": float(self.skips)}
                kl = stats["ppo/kl"]
                stats["grad_norm/actor"] = self.clip(self.parameter_groups["actor"])
                stats["grad_norm/critic"] = self.clip(self.parameter_groups["critic"])
                self.optimizer_step("actor", "critic")
                self.adapt_lr(kl)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
        scalars = {k: v / steps for k, v in sums.items()}
        scalars["lr/actor"] = self.lr
        scalars["ppo/scale"] = batch["scale"].mean().item()
        return distributed.mean_scalars(scalars, ("ppo/scale",))

    def minibatch_stats(self, out: TensorDictBase | None, mb: TensorDictBase, share: float) -> dict[str, float]:
        """The minibatch's losses, KL, clip fraction (and entropy, explained variance): this rank's means (None: no rows
        here) weighted by its ``share`` of the minibatch and summed over ranks: the global minibatch's means."""
        keys = {"loss/actor": "loss_objective", "loss/critic": "loss_critic", "ppo/clip_fraction": "clip_fraction",
                "ppo/entropy": "entropy", "ppo/explained_variance": "explained_variance"}
        present = [k for k, key in keys.items() if out is None or key in out.keys()]
        if out is None:
            values = torch.zeros(len(present) + 1, dtype=torch.float64)
        else:
            values = torch.stack([*(out[keys[k]].detach().double().mean() for k in present), self.kl(mb).double()])
        if distributed.is_distributed():
            values = distributed.all_reduce_sum(values * share)
        *named, kl = values.tolist()
        return {**dict(zip(present, named)), "ppo/kl": kl}

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        return {**super().extra_state(), "lr": self.lr}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.set_lr(float(state["lr"]))
