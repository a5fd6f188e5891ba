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

import copy
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
from rl.trainers.critic_worker import CriticShadow, CriticWorker, fork_available, overlap_allowed, overlap_mode, share_memory, usable_cores
from rl.trainers.guard import Snapshot, describe, nonfinite_state
from rl.trainers.loop import LoopConfig, NonFiniteError, Trainer


@dataclass
class TrainerConfig(LoopConfig):
    """``LoopConfig`` and the critic phase of each window (defaults: SAPO's column of table 2)."""

    critic_iterations: int = 16
    critic_minibatches: int = 4
    # window k's critic mini-epochs in a forked process beside window k's backward and window k+1's rollout, the same
    # numbers bit for bit (rl.trainers.critic_worker): auto (where allowed), on (raises where not allowed), off
    overlap_critic: str = "off"

    def __post_init__(self):
        super().__post_init__()
        self.overlap_critic = overlap_mode(self.overlap_critic)

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
        self.overlap = self._overlap_allowed()
        self.worker: CriticWorker | None = None  # forked at the first job after the critic's optimizer has its state
        self.inline: tuple | None = None  # (reply, window, undo) of a job that ran in this process, not joined
        self.shadow: CriticShadow | None = None
        self.last_critic_loss = float("nan")
        if self.overlap:
            self.loss.values_from = self.values_from

    def _overlap_allowed(self) -> bool:
        """Whether the critic runs beside the next window: ``overlap_critic`` and the rule (``on`` raises where the rule
        forbids it)."""
        if self.cfg.overlap_critic == "off":
            return False
        why_not = overlap_allowed(
            has_critic="critic" in self.optimizers and self.cfg.critic_iterations > 0 and hasattr(self.loss, "values_from"),
            distributed=distributed.is_distributed(), on_nonfinite=self.cfg.on_nonfinite,
            device=torch.device(self.env.device), threads=torch.get_num_threads(), cores=usable_cores(),
            fork=fork_available())
        if why_not is not None and self.cfg.overlap_critic == "on":
            raise ValueError(f"overlap_critic=on is not possible here: {why_not}")
        return why_not is None

    @property
    def overlapping(self) -> bool:
        """Whether the critic's mini-epochs run beside the next window (see ``rl.trainers.critic_worker``)."""
        return self.overlap

    @property
    def name(self) -> str:
        return type(self.loss).__name__.removesuffix("Loss").lower()

    def reset_env(self) -> None:
        self.state = self.env.reset()
        self.running_return.zero_()

    def step(self) -> dict[str, float]:
        """One window: actor (and temperature) step, normalizer update, critic mini-epochs. Returns scalars.

        Overlapping (``overlap_critic``), the critic's mini-epochs of this window start on the worker once the loss's
        forward is done and are joined in the next window's forward (or before a checkpoint); ``loss/critic`` is then
        the last joined (the previous window's)."""
        if self.state is None:
            self.reset_env()
        lrs = self.set_learning_rates()
        snapshot = self.snapshot() if self.cfg.on_nonfinite == "skip" else None
        self.zero_grad("actor", "alpha")
        failure = None
        try:
            with sharded_noise(self.env_shard):
                out = self.loss(self.state)  # overlapping: joins the previous window's critic (values_from)
            if self.overlapping:
                self.join_critic()  # a loss that took no values still waits for it here
                self.start_critic(out["critic_batch"], lrs["critic"])
            actor_objective = out["loss_actor"] + (out["loss_alpha"] if "loss_alpha" in out.keys() else 0.0)
            if torch.is_tensor(actor_objective) and actor_objective.requires_grad:
                (actor_objective * self.env_shard.fraction).backward()  # this rank's share of the global mean
            else:
                self.zero_gradient("actor", "alpha")
        except NonFiniteError:  # the previous window's critic, joined in the forward
            self.cancel_critic()
            raise
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
        if self.normalizer is not None:
            self.normalizer.update(self.window_observations(out))
        if self.overlapping:
            critic_loss = self.last_critic_loss
        else:
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

    def zero_gradient(self, *groups: str) -> None:
        """A window whose objective does not depend on the parameters (APG on an MPM task whose tool stays above the
        material: no reward depends on an action, so the rollout keeps no graph) has gradient zero, as Rewarped
        returns it: zeros for ``groups``' parameters, and the step goes on as for any other zero gradient (the
        optimizer still steps: weight decay, moments), where ``backward`` would raise."""
        for group in groups:
            for p in self.parameter_groups.get(group, ()):
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)

    def window_observations(self, out: TensorDictBase) -> torch.Tensor:
        """The observations the normalizer takes from a window: the critic batch's, else the start states'."""
        if "critic_batch" in out.keys():
            return out["critic_batch", "observation"]
        return self.state["observation"]

    def set_learning_rates(self) -> dict[str, float]:
        """As ``Trainer``'s, but overlapping the critic's rate is left to its job (which sets the window's own)."""
        lrs = self.learning_rates(self.iteration)
        for group, opt in self.optimizers.items():
            if group == "critic" and self.overlapping:
                continue
            for param_group in opt.param_groups:
                param_group["lr"] = lrs[group]
        return lrs

    # ------------------------------------------------------------------ the critic beside the next window
    def values_from(self, net: torch.nn.Module) -> torch.nn.Module:
        """The loss's ``values_from``: wait for the pending critic job, then a frozen copy of ``net`` as it now is."""
        self.join_critic()
        if self.shadow is None or self.shadow.source is not net:
            self.shadow = CriticShadow(net)
        return self.shadow.refresh()

    def start_critic(self, batch: TensorDictBase, lr: float) -> None:
        """Start this window's critic mini-epochs: inputs normalized with the statistics after this window's update
        (a copy; the live ones move after the backward), the critic's rate ``lr``; undone by ``cancel_critic``. The
        first job (the critic's optimizer has no state yet) runs here; the worker is forked after it."""
        future = None
        if self.normalizer is not None:
            future = copy.deepcopy(self.normalizer)
            future.update(batch["observation"])
        inputs, targets = self.loss.critic_data(batch, normalizer=future)
        optimizer = self.optimizers["critic"]
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr  # this process's copy, which checkpoints hold; the job sets the worker's
        generator = self.generator.get_state()
        message = (inputs, targets, lr, generator)
        before = Snapshot({**self.critic_modules(), "critic_opt": optimizer})

        def undo() -> None:
            before.restore()  # the optimizer's state tensors are new ones, outside shared memory: fork again
            self.generator.set_state(generator)
            self.close_worker()

        if self.worker is None and not optimizer.state:
            self.inline = (self.serve_critic(message), self.iteration, undo)
            return
        if self.worker is None:
            share_memory(self.critic_tensors())
            self.worker = CriticWorker(self.serve_critic)
        self.worker.submit(message, undo, self.iteration)

    def serve_critic(self, message: tuple) -> tuple[float, list[str], torch.Tensor]:
        """A critic job, in the worker (or, the first, here): ``(inputs, targets, lr, generator state)`` ->
        ``(last loss, non-finite names, generator state)``."""
        inputs, targets, lr, generator = message
        self.generator.set_state(generator)
        optimizer = self.optimizers["critic"]
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        loss = self.fit_critic(inputs, targets)
        self.loss.after_update()
        return loss, nonfinite_state(self.critic_modules(), {"critic_opt": optimizer}), self.generator.get_state()

    def critic_tensors(self) -> list[torch.Tensor]:
        """What a critic job writes, to share with the worker: the critic's (and its target's) parameters and buffers,
        the normalizer's excepted (this process replaces those; the job reads none), and the optimizer's state."""
        tensors = [t for module in self.critic_modules().values()
                   for name, t in (*module.named_parameters(), *module.named_buffers()) if not name.startswith("normalizer.")]
        tensors += [t for state in self.optimizers["critic"].state.values() for t in state.values() if isinstance(t, torch.Tensor)]
        return tensors

    def close_worker(self) -> None:
        """End the worker process (a later job forks a new one)."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def critic_modules(self) -> dict[str, torch.nn.Module]:
        """The modules a critic job writes: the critic and, where the loss has one, its target."""
        return {name: module for name in ("critic", "critic_target")
                if (module := getattr(self.loss, name, None)) is not None}

    def join_critic(self) -> None:
        """Wait for the pending critic job (if any) and take its result: its last loss, or the non-finite guard's stop."""
        if self.inline is not None:
            reply, self.inline = self.inline[0], None
        elif self.worker is not None and self.worker.pending:
            reply = self.worker.join()
        else:
            return
        self.last_critic_loss, bad, generator = reply
        self.generator.set_state(generator)
        if bad:
            self.nonfinite(f"non-finite critic parameters or optimizer state after the critic's update: {describe(bad)}")

    def pending_window(self) -> int | None:
        """The iteration whose critic job is pending, if one is."""
        if self.inline is not None:
            return self.inline[1]
        return self.worker.window if self.worker is not None else None

    def cancel_critic(self) -> None:
        """Discard a pending critic job of this window (its window failed); a pending job of an earlier window is
        joined instead (the serial loop finished it before this window began)."""
        window = self.pending_window()
        if window is None:
            return
        if window != self.iteration:
            self.join_critic()
        elif self.inline is not None:
            undo, self.inline = self.inline[2], None
            undo()
        else:
            self.worker.cancel()

    def train(self, iterations: int | None = None) -> None:
        """``Trainer.train``, then the last window's critic joined: the trainer's state is the serial loop's."""
        try:
            super().train(iterations)
        except BaseException:
            self.inline = None
            self.close_worker()
            raise
        self.join_critic()

    def nonfinite_parameters(self) -> list[str]:
        """``Trainer``'s check; overlapping, without the critic's modules and optimizer, which the worker is stepping
        (its job checks them when it ends)."""
        if not self.overlapping:
            return super().nonfinite_parameters()
        skip = self.critic_modules()
        modules = {f"loss.{name}": child for name, child in self.loss.named_children() if name not in skip}
        modules.update({f"loss.{name}": t for name, t in (*self.loss.named_parameters(recurse=False),
                                                           *self.loss.named_buffers(recurse=False))})
        optimizers = {f"{group}_opt": opt for group, opt in self.optimizers.items() if group != "critic"}
        return nonfinite_state(modules, optimizers)

    def drop_window(self, what: str) -> dict[str, float]:
        """The non-finite guard's stop, or (skip) the window dropped and the envs reset."""
        self.cancel_critic()
        self.nonfinite(what, "window dropped, envs reset")
        self.zero_grad("actor", "alpha")
        self.reset_env()
        return {"train/skipped": float(self.skips)}

    def train_critic(self, batch: TensorDictBase) -> float:
        """``critic_iterations`` mini-epochs of ``loss.critic_fit_error`` over the window's batch; returns the last loss.

        The critics' inputs are computed once (``loss.critic_data``: the normalizer does not move during the
        mini-epochs) and each minibatch indexes its rows: ``loss.critic_fit_error(inputs[rows], targets[rows])`` is
        ``loss.critic_loss(batch[rows])`` exactly (``fit_critic``)."""
        return self.fit_critic(*self.loss.critic_data(batch))

    def fit_critic(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The mini-epochs over ``inputs [B, ...]`` and ``targets [B]`` (``loss.critic_data``'s); returns the last loss.

        The rows are this rank's envs' (env-major, H per env); minibatches are drawn over the global rows and each
        rank takes the rows it holds, its mean loss weighted by its share of the minibatch (``rl.distributed``).
        """
        per_env = targets.shape[0] // self.local_envs
        size = self.num_envs * per_env
        first, end = self.env_shard.rows(per_env)
        whole = first == 0 and end == size  # this rank holds every row (one process): the global rows are its own
        per = math.ceil(size / self.cfg.critic_minibatches)
        params = self.parameter_groups["critic"]
        last = None
        for _ in range(self.cfg.critic_iterations):
            order = torch.randperm(size, generator=self.generator)
            for start in range(0, size, per):
                rows = order[start:start + per]
                mine = rows if whole else local_rows(rows, first, end)
                self.zero_grad("critic")
                local = None
                if mine.numel():
                    local = self.loss.critic_fit_error(inputs[mine], targets[mine])
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

    def state_dict(self) -> dict:
        """``Trainer``'s, with the pending critic job joined first (a checkpoint holds the serial loop's state)."""
        self.join_critic()
        return super().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inline = None  # whatever it was fitting is replaced, and the optimizer's state with new tensors: fork again
        self.close_worker()
        super().load_state_dict(state)

    def extra_state(self) -> dict:
        """The state the next window starts from, of all the global envs (every rank's gathered)."""
        return {"env_state": None if self.state is None else gather_tree(self.env, self.state.to_dict())}

    def load_extra_state(self, state: dict) -> None:
        if state["env_state"] is not None:
            mine = slice_tree(state["env_state"], self.env_shard)
            self.state = TensorDict(mine, batch_size=self.env.batch_size, device=self.env.device)
