"""The first-order iteration (SAPO Algorithm 1; also SHAC, APG, TrajOpt): one window of H steps in N envs.

1. ``loss(state)`` rolls the env out with the graph and returns the actor loss (and SAPO's
   temperature loss); backward, the non-finite guard, gradient-norm clipping, optimizer step
   (the actor's and, where the loss declares one, the temperature's).
2. The window's observations update the running observation normalizer (after backward).
3. A loss with a ``"critic"`` parameter group: K mini-epochs over the window's (s_t, target_t)
   pairs in ``critic_minibatches`` minibatches; then ``loss.after_update()`` (SHAC's target critic).
4. Learning rates decay linearly; evaluation, logging and checkpoints are ``Trainer``'s.

Checkpoints add the env state the next window starts from to ``Trainer``'s, so a resumed run
computes the same next losses bit for bit on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase

from rl import distributed
from rl.distributed import gather_tree, local_rows, sharded_noise, slice_tree
from rl.modules.normalizer import ObservationNormalizer
from rl.objectives.common import FirstOrderLoss
from rl.trainers.guard import describe
from rl.trainers.loop import LoopConfig, Trainer


@dataclass
class TrainerConfig(LoopConfig):
    """``LoopConfig`` and the critic phase of each window (defaults: SAPO's column of table 2)."""

    critic_iterations: int = 16
    critic_minibatches: int = 4

    ABSENT: ClassVar[dict[str, object]] = {**LoopConfig.ABSENT, "critic_iterations": 0, "critic_minibatches": 1}
    MINIMUM: ClassVar[dict[str, int]] = {**LoopConfig.MINIMUM, "critic_iterations": 0, "critic_minibatches": 1}


class FirstOrderTrainer(Trainer):
    """Trains ``loss.actor`` (and the loss's critic and temperature) on ``loss.env``; see the module docstring.

    Args:
        loss: a ``FirstOrderLoss`` (APG, SHAC, SAPO, TrajOpt).
        config: ``TrainerConfig``.
        run_dir, eval_env, normalizer, logger: as ``Trainer``.
    """

    def __init__(self, loss: FirstOrderLoss, config: TrainerConfig, run_dir: str | Path | None = None,
                 eval_env=None, normalizer: ObservationNormalizer | None = None, logger: str = "csv"):
        env = loss.env
        super().__init__(loss, config, env, int(env.batch_size.numel()) * loss.horizon, run_dir=run_dir, eval_env=eval_env,
                         normalizer=normalizer, logger=logger)
        self.state: TensorDictBase | None = None

    @property
    def name(self) -> str:
        return type(self.loss).__name__.removesuffix("Loss").lower()

    def reset_env(self) -> None:
        self.state = self.env.reset()
        self.running_return.zero_()

    def step(self) -> dict[str, float]:
        """One window: actor (and temperature) step, normalizer update, critic mini-epochs. Returns scalars."""
        if self.state is None:
            self.reset_env()
        lrs = self.set_learning_rates()
        snapshot = self.snapshot() if self.cfg.on_nonfinite == "skip" else None
        self.zero_grad("actor", "alpha")
        failure = None
        try:
            with sharded_noise(self.env_shard):
                out = self.loss(self.state)
            actor_objective = out["loss_actor"] + (out["loss_alpha"] if "loss_alpha" in out.keys() else 0.0)
            (actor_objective * self.env_shard.fraction).backward()  # this rank's share of the global mean
        except FloatingPointError as err:  # the env's NaN/inf state or action check
            failure = f"simulator: {err}"
        failure = self.fail_together(failure)
        if failure is not None:
            return self.drop_window(failure)
        self.reduce_gradients("actor", "alpha")
        losses = {key: out[key] for key in ("loss_actor", "loss_alpha") if key in out.keys()}
        bad = self.nonfinite_report(losses, self.named_parameters("actor", "alpha"))
        if bad:
            return self.drop_window(bad)
        grad_norm = self.clip(self.parameter_groups["actor"])
        self.optimizer_step("actor", "alpha")
        if self.normalizer is not None and "critic_batch" in out.keys():
            self.normalizer.update(out["critic_batch", "observation"])
        elif self.normalizer is not None:
            self.normalizer.update(self.state["observation"])
        critic_loss = self.train_critic(out["critic_batch"]) if "critic" in self.optimizers else float("nan")
        self.loss.after_update()
        bad = self.nonfinite_parameters()
        if bad:
            if snapshot is not None:
                snapshot.restore()
            return self.drop_window(f"non-finite parameters or optimizer state after the update: {describe(bad)}")
        self.state = out["next_state"]
        self.track_returns(out["window", "reward"].double(), out["window", "done"])
        scalars = {
            "loss/actor": out["loss_actor"].item(), "loss/critic": critic_loss, "grad_norm/actor": grad_norm,
            "lr/actor": lrs["actor"], "train/window_reward": out["window", "reward"].mean().item(),
        }
        for key in ("alpha", "entropy"):
            if key in out.keys():
                scalars[f"sapo/{key}"] = out[key].item()
        scalars = distributed.mean_scalars(scalars, ("loss/actor", "train/window_reward", "sapo/entropy"))
        return self.advance(self.steps_per_iter, scalars)

    def drop_window(self, what: str) -> dict[str, float]:
        """The non-finite guard's stop, or (skip) the window dropped and the envs reset."""
        self.nonfinite(what, "window dropped, envs reset")
        self.zero_grad("actor", "alpha")
        self.reset_env()
        return {"train/skipped": float(self.skips)}

    def train_critic(self, batch: TensorDictBase) -> float:
        """``critic_iterations`` mini-epochs of ``loss.critic_loss`` over the window's batch; returns the last loss.

        ``batch`` holds this rank's envs' rows (env-major, H per env); minibatches are drawn over the global rows and each
        rank takes the rows it holds, its mean loss weighted by its share of the minibatch (``rl.distributed``). The
        critics' inputs are computed once (``loss.critic_data``: the normalizer does not move during the mini-epochs) and
        each minibatch indexes its rows: ``loss.critic_fit_loss(inputs[rows], targets[rows])`` is
        ``loss.critic_loss(batch[rows])`` exactly.
        """
        per_env = batch.shape[0] // self.local_envs
        size = self.num_envs * per_env
        first, end = self.env_shard.rows(per_env)
        whole = first == 0 and end == size  # this rank holds every row (one process): the global rows are its own
        per = math.ceil(size / self.cfg.critic_minibatches)
        params = self.parameter_groups["critic"]
        inputs, targets = self.loss.critic_data(batch)
        last = None
        for _ in range(self.cfg.critic_iterations):
            order = torch.randperm(size, generator=self.generator)
            for start in range(0, size, per):
                rows = order[start:start + per]
                mine = rows if whole else local_rows(rows, first, end)
                self.zero_grad("critic")
                local = None
                if mine.numel():
                    local = self.loss.critic_fit_loss(inputs[mine], targets[mine])
                    if mine.numel() != rows.numel():
                        local = local * (mine.numel() / rows.numel())
                    local.backward()
                # the minibatch's loss, summed with the gradients in one message
                loss = self.reduce_gradients("critic", extra=local.detach() if local is not None else params[0].new_zeros(()))
                if not torch.isfinite(loss):
                    self.nonfinite(f"critic loss {loss.item()}", "critic update skipped")
                    self.zero_grad("critic")
                    return float("nan")
                self.clip(params)
                self.optimizer_step("critic")
                last = loss
        return float("nan") if last is None else last.item()

    def extra_state(self) -> dict:
        """The state the next window starts from, of all the global envs (every rank's gathered)."""
        return {"env_state": None if self.state is None else gather_tree(self.env, self.state.to_dict())}

    def load_extra_state(self, state: dict) -> None:
        if state["env_state"] is not None:
            mine = slice_tree(state["env_state"], self.env_shard)
            self.state = TensorDict(mine, batch_size=self.env.batch_size, device=self.env.device)
