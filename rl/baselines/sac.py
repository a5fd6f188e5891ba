"""SAC from TorchRL's components: ``Collector``, ``SACLoss`` (two Q-nets) + ``SoftUpdate``, a replay buffer.

Per collector batch (``num_envs x horizon`` frames): the batch goes into the replay buffer, then
``updates_per_batch`` gradient updates, each on ``batch_size`` transitions sampled uniformly from
the buffer: actor, Q-nets and temperature (separate optimizers, gradient-norm clipping on actor
and Q-nets), then a Polyak update of the target Q-nets. The first ``warmup_steps`` frames use
uniform random actions (the Collector's ``init_random_frames``) and no updates happen before
the buffer holds that many transitions.

Data parallel (``rl.distributed``): each rank keeps the transitions of its envs and samples its share of
``batch_size`` from them (and of the warm-up and the replay capacity); its losses are weighted by that share
and the gradients summed over ranks. The update is the single-process update in distribution, not to the
last bit (a 1-rank run samples its batch from every env's transitions at once).

``target_tau`` follows the SAPO paper's convention: ``Q' <- target_tau Q' + (1 - target_tau) Q``
(TorchRL's ``SoftUpdate(eps=target_tau)``, i.e. its ``tau = 1 - target_tau``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.objectives import SACLoss, SoftUpdate, ValueEstimators

from rl import distributed
from rl.distributed import env_shard
from rl.objectives.common import Trainable
from rl.trainers.collector import CollectorConfig, CollectorTrainer
from rl.trainers.loop import GROUPS

# a transition: all SACLoss reads (the simulator state x, v, ... stays out of the buffer)
REPLAY_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "done"), ("next", "terminated"))


def global_means(losses: dict[str, Tensor], share: float) -> dict[str, Tensor]:
    """Each rank's mean losses weighted by its ``share`` and summed over ranks (one process: ``losses``)."""
    if not distributed.is_distributed():
        return losses
    values = distributed.all_reduce_sum(torch.stack([v.detach().double() for v in losses.values()]) * share)
    return dict(zip(losses, values))


class SACBaselineLoss(Trainable, SACLoss):
    """TorchRL's ``SACLoss`` (C Q-nets with delayed targets, TD(0) targets); parameter groups: actor, critic (the
    Q-nets), alpha; ``after_update`` is the Polyak update of the target Q-nets (``target_updater``).

    The other keyword arguments are ``SACLoss``'s.
    """

    def __init__(self, actor: TensorDictModuleBase, qnets: list[TensorDictModuleBase], gamma: float, target_tau: float,
                 **kwargs):
        super().__init__(actor, qnets, num_qvalue_nets=len(qnets), delay_qvalue=True, **kwargs)
        self.make_value_estimator(ValueEstimators.TD0, gamma=float(gamma))
        self.target_updater = SoftUpdate(self, eps=float(target_tau))

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"actor": list(self.actor_network_params.values(True, True)),
                "critic": list(self.qvalue_network_params.values(True, True)), "alpha": [self.log_alpha]}

    def after_update(self) -> None:
        self.target_updater.step()


@dataclass
class SACConfig(CollectorConfig):
    """``CollectorConfig`` and SAC's updates, replay and warm-up (recipes/config/algo/sac.yaml; constant rates)."""

    lr_schedule: str = "constant"
    updates_per_batch: int = 8
    batch_size: int = 2048
    replay_size: int = 1_000_000
    warmup_steps: int = 4096

    LR_SCHEDULES: ClassVar[tuple[str, ...]] = ("constant",)
    MINIMUM: ClassVar[dict[str, int]] = {**CollectorConfig.MINIMUM, "updates_per_batch": 0, "batch_size": 1, "warmup_steps": 0}


class SACTrainer(CollectorTrainer):
    """SAC on ``env`` (``loss``: a ``SACBaselineLoss``, ``config``: a ``SACConfig``; ``outputs`` as ``Trainer``'s).

    Each collector batch goes into a replay buffer of at most ``replay_size`` transitions (never more rows than the
    run collects); then ``updates_per_batch`` updates on ``batch_size`` transitions sampled from it, none before the
    buffer holds ``warmup_steps`` (collected with uniform random actions).
    """

    name = "sac"

    def __init__(self, loss: SACBaselineLoss, env: EnvBase, config: SACConfig, **outputs):
        share = env_shard(env).fraction  # this rank's share of the envs, of the batch, the warm-up and the replay
        self.warmup = math.ceil(config.warmup_steps * share)
        super().__init__(loss, env, config, init_random_frames=self.warmup, **outputs)
        capacity = max(1, math.ceil(min(config.replay_size, self.iterations * self.steps_per_iter) * share))
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity), batch_size=max(1, round(config.batch_size * share)))

    # ------------------------------------------------------------------ one batch
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        self.buffer.extend(batch.select(*REPLAY_KEYS).reshape(-1))
        if len(self.buffer) < max(self.warmup, 1):
            return {}
        named = self.named_parameters(*GROUPS)
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(self.cfg.updates_per_batch):
            mb = self.buffer.sample()
            out = self.loss(mb)
            losses = {k: out[k] for k in ("loss_actor", "loss_qvalue", "loss_alpha")}
            self.zero_grad(*GROUPS)
            share = self.env_shard.fraction
            bad = self.nonfinite_report(global_means(losses, share), [])
            if not bad:
                (sum(losses.values()) * share).backward()  # SACLoss detaches across the three losses
                self.reduce_gradients(*GROUPS)
                bad = self.nonfinite_report({}, named)
            if bad:
                self.nonfinite(bad, "update skipped")
                self.zero_grad(*GROUPS)
                continue
            stats = {
                "loss/actor": out["loss_actor"].item(), "loss/critic": out["loss_qvalue"].item(),
                "loss/alpha": out["loss_alpha"].item(), "sac/alpha": out["alpha"].item(), "sac/entropy": out["entropy"].item(),
                "grad_norm/actor": self.clip(self.parameter_groups["actor"]),
                "grad_norm/critic": self.clip(self.parameter_groups["critic"]),
            }
            self.optimizer_step(*GROUPS)
            self.loss.after_update()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        scalars = {k: v / steps for k, v in sums.items()} if steps else {}
        return distributed.mean_scalars(scalars, ("loss/actor", "loss/critic", "loss/alpha", "sac/entropy"))

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        # the filled rows only (a 1e6-row storage would be written whole by its state_dict), and the write cursor
        rows = len(self.buffer)
        replay = None if rows == 0 else {"rows": self.buffer[:rows].to_dict(), "capacity": self.buffer.storage.max_size,
                                         "writer": self.buffer.writer.state_dict()}
        return {**super().extra_state(), "replay_buffer": replay}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        replay = state["replay_buffer"]
        if replay is not None:
            rows = TensorDict(replay["rows"], batch_size=[])
            rows.batch_size = rows.get("observation").shape[:1]
            self.buffer.extend(rows[-self.buffer.storage.max_size:])
            if replay["capacity"] == self.buffer.storage.max_size:  # same ring: same next row to overwrite
                self.buffer.writer.load_state_dict(replay["writer"])
