"""SAC from TorchRL's components: ``Collector``, ``SACLoss`` (two Q-nets) + ``SoftUpdate``, a replay buffer.

Per collector batch (``num_envs x horizon`` frames): the batch goes into the replay buffer, then
``updates_per_batch`` gradient updates, each on ``batch_size`` transitions sampled uniformly from
the buffer: actor, Q-nets and temperature (separate optimizers, gradient-norm clipping on actor
and Q-nets), then a Polyak update of the target Q-nets. The first ``warmup_steps`` frames use
uniform random actions (the Collector's ``init_random_frames``) and no updates happen before
the buffer holds that many transitions.

``target_tau`` follows the SAPO paper's convention: ``Q' <- target_tau Q' + (1 - target_tau) Q``
(TorchRL's ``SoftUpdate(eps=target_tau)``, i.e. its ``tau = 1 - target_tau``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.modules import ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate, ValueEstimators

from rl.baselines.common import BaselineTrainer, NormalizedMLP, make_actor, make_optimizer, run_baseline
from rl.experiment import DTYPES
from rl.modules import ObservationNormalizer

# a transition: all SACLoss reads (the simulator state x, v, ... stays out of the buffer)
REPLAY_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "done"), ("next", "terminated"))


class SACTrainer(BaselineTrainer):
    """SAC on ``env`` with the hyper-parameters of ``cfg.algo`` (recipes/config/algo/sac.yaml)."""

    name = "sac"

    def __init__(self, cfg: DictConfig, run_dir: str | Path, env: EnvBase, eval_env: EnvBase | None = None):
        algo = cfg.algo
        if int(algo.updates_per_batch) < 0 or int(algo.batch_size) < 1:
            raise ValueError("algo.updates_per_batch must be >= 0 and algo.batch_size >= 1")
        dtype = DTYPES[cfg.dtype]
        obs_dim = int(env.observation_spec["observation"].shape[-1])
        action_dim = int(env.action_spec.shape[-1])
        self.normalizer = ObservationNormalizer(obs_dim) if algo.obs_norm else None
        self.actor = make_actor(algo, obs_dim, action_dim, self.normalizer, dtype)
        # independent Q-nets (a list: a single module would be copied and re-initialised uniformly by TorchRL)
        qnets = [
            ValueOperator(NormalizedMLP(obs_dim, 1, tuple(algo.critic_hidden), algo.activation, bool(algo.layer_norm),
                                        extra_dim=action_dim, normalizer=self.normalizer).to(dtype),
                          in_keys=["observation", "action"])
            for _ in range(int(algo.num_critics))
        ]
        target_entropy = -action_dim / 2 if algo.target_entropy is None else float(algo.target_entropy)
        self.loss = SACLoss(self.actor, qnets, num_qvalue_nets=int(algo.num_critics), loss_function=algo.loss_function,
                            alpha_init=float(algo.init_alpha), target_entropy=target_entropy, delay_qvalue=True)
        self.loss.make_value_estimator(ValueEstimators.TD0, gamma=float(algo.gamma))
        self.target_updater = SoftUpdate(self.loss, eps=float(algo.target_tau))
        self.actor_params = list(self.loss.actor_network_params.values(True, True))
        self.critic_params = list(self.loss.qvalue_network_params.values(True, True))
        self.actor_opt = make_optimizer(algo, self.actor_params, float(algo.actor_lr))
        self.critic_opt = make_optimizer(algo, self.critic_params, float(algo.critic_lr))
        self.alpha_opt = make_optimizer(algo, [self.loss.log_alpha], float(algo.alpha_lr))
        self.warmup = int(algo.warmup_steps)
        self._start(cfg, run_dir, env, eval_env, init_random_frames=self.warmup)
        # never more than the run collects: the same as a replay_size buffer, without allocating rows never written
        capacity = max(1, min(int(float(algo.replay_size)), self.iterations * self.frames_per_batch))
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity), batch_size=int(algo.batch_size))
        self.updates = int(algo.updates_per_batch)

    # ------------------------------------------------------------------ one batch
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        self.buffer.extend(batch.select(*REPLAY_KEYS).reshape(-1))
        if len(self.buffer) < max(self.warmup, 1):
            return {}
        grad_clip = self.cfg.algo.grad_clip
        named = [(f"actor.{k}", p) for k, p in self.loss.actor_network_params.flatten_keys(".").items()]
        named += [(f"qvalue.{k}", p) for k, p in self.loss.qvalue_network_params.flatten_keys(".").items()]
        named.append(("log_alpha", self.loss.log_alpha))
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(self.updates):
            mb = self.buffer.sample()
            out = self.loss(mb)
            losses = {k: out[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")}
            for opt in (self.actor_opt, self.critic_opt, self.alpha_opt):
                opt.zero_grad(set_to_none=True)
            bad = self.nonfinite_report(losses, [])
            if not bad:
                sum(losses.values()).backward()  # SACLoss detaches across the three losses
                bad = self.nonfinite_report({}, named)
            if bad:
                self.nonfinite(f"{bad}; update skipped")
                for opt in (self.actor_opt, self.critic_opt, self.alpha_opt):
                    opt.zero_grad(set_to_none=True)
                continue
            stats = {
                "loss/actor": out["loss_actor"].item(), "loss/critic": out["loss_qvalue"].item(),
                "loss/alpha": out["loss_alpha"].item(), "sac/alpha": out["alpha"].item(), "sac/entropy": out["entropy"].item(),
                "grad_norm/actor": self.clip(self.actor_params, grad_clip),
                "grad_norm/critic": self.clip(self.critic_params, grad_clip),
            }
            self.actor_opt.step()
            self.critic_opt.step()
            self.alpha_opt.step()
            self.target_updater.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        return {k: v / steps for k, v in sums.items()} if steps else {}

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        # the filled rows only (a 1e6-row storage would be written whole by its state_dict), and the write cursor
        rows = len(self.buffer)
        replay = None if rows == 0 else {"rows": self.buffer[:rows].to_dict(), "capacity": self.buffer.storage.max_size,
                                         "writer": self.buffer.writer.state_dict()}
        return {"actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "replay_buffer": replay}

    def load_extra_state(self, state: dict) -> None:
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        replay = state["replay_buffer"]
        if replay is not None:
            rows = TensorDict(replay["rows"], batch_size=[])
            rows.batch_size = rows.get("observation").shape[:1]
            self.buffer.extend(rows[-self.buffer.storage.max_size:])
            if replay["capacity"] == self.buffer.storage.max_size:  # same ring: same next row to overwrite
                self.buffer.writer.load_state_dict(replay["writer"])


def run_sac(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train SAC per ``cfg`` (recipes/config/sac.yaml), evaluate, and write every output; returns the eval summary."""
    return run_baseline(cfg, run_dir, SACTrainer)
