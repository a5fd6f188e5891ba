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

from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from torch.distributions import Normal, kl_divergence
from torchrl.data import LazyTensorStorage, SamplerWithoutReplacement, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.modules import ValueOperator
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from rl.baselines.common import BaselineTrainer, NormalizedMLP, make_actor, make_optimizer, run_baseline
from rl.experiment import DTYPES
from rl.modules import ObservationNormalizer

LR_SCHEDULES = ("adaptive_kl", "constant")
# what a minibatch needs once the advantage is computed
TRAIN_KEYS = ("observation", "action", "action_log_prob", "loc", "scale", "advantage", "value_target", "state_value")


class PPOTrainer(BaselineTrainer):
    """PPO on ``env`` with the hyper-parameters of ``cfg.algo`` (recipes/config/algo/ppo.yaml)."""

    name = "ppo"

    def __init__(self, cfg: DictConfig, run_dir: str | Path, env: EnvBase, eval_env: EnvBase | None = None):
        algo = cfg.algo
        if algo.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"algo.lr_schedule: unknown schedule {algo.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if int(algo.epochs) < 1 or int(algo.minibatches) < 1:
            raise ValueError("algo.epochs and algo.minibatches must be >= 1")
        dtype = DTYPES[cfg.dtype]
        obs_dim = int(env.observation_spec["observation"].shape[-1])
        action_dim = int(env.action_spec.shape[-1])
        self.normalizer = ObservationNormalizer(obs_dim) if algo.obs_norm else None
        self.actor = make_actor(algo, obs_dim, action_dim, self.normalizer, dtype)
        self.critic = ValueOperator(
            NormalizedMLP(obs_dim, 1, tuple(algo.critic_hidden), algo.activation, bool(algo.layer_norm),
                          normalizer=self.normalizer).to(dtype),
            in_keys=["observation"],
        )
        entropy_coeff = float(algo.entropy_coeff)
        self.loss = ClipPPOLoss(
            self.actor, self.critic, clip_epsilon=float(algo.clip_epsilon), entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff if entropy_coeff > 0 else None, critic_coeff=float(algo.critic_coeff),
            loss_critic_type=algo.loss_critic_type, normalize_advantage=bool(algo.normalize_advantage),
            clip_value=None if algo.clip_value is None else float(algo.clip_value),
        )
        self.loss.make_value_estimator(ValueEstimators.GAE, gamma=float(algo.gamma), lmbda=float(algo.lmbda))
        self.actor_params = list(self.actor.parameters())
        self.critic_params = list(self.critic.parameters())
        self.actor_opt = make_optimizer(algo, self.actor_params, float(algo.actor_lr))
        self.critic_opt = make_optimizer(algo, self.critic_params, float(algo.critic_lr))
        self.lr = float(algo.actor_lr)
        self._start(cfg, run_dir, env, eval_env)
        self.epochs, self.minibatches = int(algo.epochs), int(algo.minibatches)
        minibatch_size = -(-self.frames_per_batch // self.minibatches)
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(self.frames_per_batch),
                                             sampler=SamplerWithoutReplacement(), batch_size=minibatch_size)
        self.dist_params = self.actor.module[0]  # observation -> loc, scale (for the KL of the lr schedule)

    # ------------------------------------------------------------------ learning rate
    def _set_lr(self, lr: float) -> None:
        algo = self.cfg.algo
        self.lr = lr
        for group in self.actor_opt.param_groups:
            group["lr"] = lr
        for group in self.critic_opt.param_groups:
            group["lr"] = lr * float(algo.critic_lr) / float(algo.actor_lr)

    def _adapt_lr(self, kl: float) -> None:
        algo = self.cfg.algo
        if algo.lr_schedule != "adaptive_kl":
            return
        target = float(algo.kl_target)
        lr = self.lr
        if kl > 2.0 * target:
            lr = max(lr / 1.5, float(algo.lr_min))
        elif kl < 0.5 * target:
            lr = min(lr * 1.5, float(algo.lr_max))
        self._set_lr(lr)

    @torch.no_grad()
    def _kl(self, minibatch: TensorDictBase) -> float:
        """Mean analytic KL(new || old) of the pre-tanh Gaussians (the KL of the tanh-squashed ones too)."""
        new = self.dist_params(minibatch.select("observation").clone(False))
        kl = kl_divergence(Normal(new["loc"], new["scale"]), Normal(minibatch["loc"], minibatch["scale"]))
        return kl.sum(-1).mean().item()

    # ------------------------------------------------------------------ one batch
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        grad_clip = self.cfg.algo.grad_clip
        with torch.no_grad():
            batch = self.loss.value_estimator(batch)
        if not torch.isfinite(batch["advantage"]).all():
            self.nonfinite("GAE advantage (non-finite reward or value); batch dropped")
            return {"train/skipped": float(self.skips)}
        self.buffer.empty()
        self.buffer.extend(batch.select(*TRAIN_KEYS).reshape(-1))
        named = [(f"actor.{n}", p) for n, p in self.actor.named_parameters()]
        named += [(f"critic.{n}", p) for n, p in self.critic.named_parameters()]
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(self.epochs):
            for _ in range(self.minibatches):
                mb = self.buffer.sample()
                out = self.loss(mb)
                losses = {k: v for k, v in out.items() if k.startswith("loss_")}
                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                bad = self.nonfinite_report(losses, [])
                if not bad:
                    sum(losses.values()).backward()
                    bad = self.nonfinite_report({}, named)
                if bad:
                    self.nonfinite(f"{bad}; rest of the batch dropped")
                    self.actor_opt.zero_grad(set_to_none=True)
                    self.critic_opt.zero_grad(set_to_none=True)
                    return {"train/skipped": float(self.skips)}
                kl = self._kl(mb)
                stats = {
                    "loss/actor": out["loss_objective"].item(), "loss/critic": out["loss_critic"].item(),
                    "grad_norm/actor": self.clip(self.actor_params, grad_clip),
                    "grad_norm/critic": self.clip(self.critic_params, grad_clip),
                    "ppo/kl": kl, "ppo/clip_fraction": out["clip_fraction"].item(),
                }
                if "entropy" in out.keys():
                    stats["ppo/entropy"] = out["entropy"].item()
                if "explained_variance" in out.keys():
                    stats["ppo/explained_variance"] = out["explained_variance"].item()
                self.actor_opt.step()
                self.critic_opt.step()
                self._adapt_lr(kl)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
        scalars = {k: v / steps for k, v in sums.items()}
        scalars["lr/actor"] = self.lr
        scalars["ppo/scale"] = batch["scale"].mean().item()
        return scalars

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        return {"actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(), "lr": self.lr}

    def load_extra_state(self, state: dict) -> None:
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self._set_lr(float(state["lr"]))


def run_ppo(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train PPO per ``cfg`` (recipes/config/ppo.yaml), evaluate, and write every output; returns the eval summary."""
    return run_baseline(cfg, run_dir, PPOTrainer)
