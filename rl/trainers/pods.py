"""The PODS iteration (algorithm 1 of the PODS paper): one epoch.

One epoch = k fresh initial states (``rollouts_per_epoch``; default num_envs), one deterministic episode each:

1. ``start_env.reset()`` draws the k initial states in one call (``start_env``: an env of k envs, or the
   training env itself when k = num_envs); ``loss.improve`` runs them in ceil(k / num_envs) chunks of
   num_envs envs (the last chunk padded with copies of its first states, whose results are dropped): the
   policy's actions, improved through the simulator (first or second order) under a line search that
   never lowers any episode's return. Every env's improvement is independent of the others', so k
   rollouts in chunks of n give the epoch of k envs in one chunk (to rounding: tests/rl/test_pods.py);
2. the observation normalizer sees the improved trajectories' observations;
3. ``regression_steps`` optimizer steps on Eq. 7 over all k·T (observation, improved action)
   pairs, in ``minibatches`` minibatches per step (1: full batch, as the paper).

Data parallel (``rl.distributed``): each rank improves its share of the k initial states (its slice of the one
draw, ``TphysEnv.set_shard``) with no communication; the regression's minibatches are drawn over the global
k·T rows, each rank's mean loss weighted by its share and the gradients summed over ranks.

Env steps count the k·T steps of the policy episodes; ``sim_steps`` (logged) also counts the
rollouts of the line search and, for the second order, of the Gauss-Newton products (padding included).
Everything else (evaluation, logging, checkpoints, resume, the non-finite guard) is ``Trainer``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict

from rl import distributed
from rl.distributed import env_shard, local_rows
from rl.modules.normalizer import ObservationNormalizer
from rl.objectives.pods import PODSLoss
from rl.trainers.guard import describe
from rl.trainers.loop import LoopConfig, Trainer


@dataclass
class PODSConfig(LoopConfig):
    """``LoopConfig``, the rollouts of each epoch (k; the paper: 4000) and its regression (Eq. 7; the paper: 50
    full-batch steps). ``rollouts_per_epoch``: None means one per env (k = num_envs)."""

    regression_steps: int = 50
    minibatches: int = 1
    rollouts_per_epoch: int | None = None

    MINIMUM: ClassVar[dict[str, int]] = {**LoopConfig.MINIMUM, "regression_steps": 1, "minibatches": 1}

    def __post_init__(self):
        super().__post_init__()
        if self.rollouts_per_epoch is not None and self.rollouts_per_epoch < 1:
            raise ValueError(f"rollouts_per_epoch must be >= 1 (null: num_envs), got {self.rollouts_per_epoch}")


class PODSTrainer(Trainer):
    """Trains ``loss.actor`` by PODS on ``loss.env``; see the module docstring.

    Args:
        loss: a ``PODSLoss``.
        config: ``PODSConfig`` (``actor_lr``, optimizer, schedule, clipping, regression, rollouts per epoch,
            eval, checkpoints).
        start_env: the env whose ``reset()`` draws an epoch's k = ``rollouts_per_epoch`` initial states: k envs
            of the training env's task and seed (its generator is the one a checkpoint saves). Default
            ``loss.env``, which must then have k envs.
        run_dir, eval_env, normalizer, logger: as ``Trainer``.
    """

    stochastic_policy = False  # the deterministic tanh policy of the paper's appendix A.3

    def __init__(self, loss: PODSLoss, config: PODSConfig, run_dir=None, eval_env=None,
                 normalizer: ObservationNormalizer | None = None, logger: str = "csv", start_env=None):
        num_envs = int(loss.env.batch_size.numel())  # this rank's envs (a chunk)
        start_env = loss.env if start_env is None else start_env
        rollouts = env_shard(loss.env).total if config.rollouts_per_epoch is None else int(config.rollouts_per_epoch)
        if env_shard(start_env).total != rollouts:
            raise ValueError(f"rollouts_per_epoch={rollouts} needs a start_env of {rollouts} envs to draw the initial states "
                             f"(got {env_shard(start_env).total}; the training env has {env_shard(loss.env).total})")
        local = int(start_env.batch_size.numel())  # this rank's share of the k rollouts
        super().__init__(loss, config, start_env, local * loss.horizon, run_dir=run_dir, eval_env=eval_env,
                         normalizer=normalizer, logger=logger)
        self.rollouts, self.chunk = local, num_envs
        self.sim_steps = 0

    @property
    def name(self) -> str:
        return f"pods{self.loss.order}"

    def step(self) -> dict[str, float]:
        lrs = self.set_learning_rates()
        snapshot = self.snapshot() if self.cfg.on_nonfinite == "skip" else None
        start = self.env.reset()  # the k initial states of this epoch, in one draw (this rank's share)
        failure = None
        try:
            improved, chunks = self.improve(start)
            stats = improved["stats"]
            if not (torch.isfinite(stats["value_policy"]).all() and torch.isfinite(improved["batch", "target_action"]).all()):
                failure = "non-finite return or improved actions"
        except FloatingPointError as err:  # the env's NaN/inf state or action check
            failure = f"simulator: {err}"
        failure = self.fail_together(failure)
        if failure is not None:
            return self.drop_epoch(failure)
        batch = improved["batch"].reshape(-1)
        if self.normalizer is not None:
            self.normalizer.update(batch["observation"])
        first, last, grad_norm = self.regress(batch)
        if not math.isfinite(last):
            if snapshot is not None:
                snapshot.restore()
            return self.drop_epoch(f"regression loss {last}")
        bad = self.nonfinite_parameters()
        if bad:
            if snapshot is not None:
                snapshot.restore()
            return self.drop_epoch(f"non-finite parameters or optimizer state after the regression: {describe(bad)}")
        simulated = torch.tensor(float(sum(self.simulated_steps(chunk) for chunk in chunks)), dtype=torch.float64)
        self.sim_steps += int(distributed.all_reduce_sum(simulated).item())
        scalars = distributed.mean_scalars({"train/episode_return": stats["value_policy"].mean().item(),
                                            **self.improvement_scalars(improved, chunks)},
                                           ("train/episode_return", "pods/improved_return", "pods/accepted", "pods/step_size",
                                            "pods/line_search_trials", "pods/cg_iterations", "pods/gradient_fallback"))
        self.recent_returns = [scalars["train/episode_return"]]
        scalars.update({"loss/actor": last, "loss/actor_first": first, "grad_norm/actor": grad_norm, "lr/actor": lrs["actor"],
                        "time/sim_steps": float(self.sim_steps)})
        return self.advance(self.steps_per_iter, scalars)

    def improve(self, start) -> tuple[TensorDict, list[TensorDict]]:
        """``loss.improve`` of the k states ``start`` in chunks of the training env's size: ``(improved, chunks)``,
        ``improved`` holding ``batch`` [k, T] and ``stats`` [k] of all k, ``chunks`` each chunk's scalars."""
        if self.rollouts == self.chunk:
            improved = self.loss.improve(start)
            return improved, [improved.exclude("batch", "stats")]
        batches, stats, chunks = [], [], []
        for begin in range(0, self.rollouts, self.chunk):
            part = start[begin:begin + self.chunk]
            size = part.shape[0]
            if size < self.chunk:  # pad the last chunk with copies of its own first states; their results are dropped
                part = torch.cat([part, part[torch.arange(self.chunk - size) % size]])
            out = self.loss.improve(part)
            batches.append(out["batch"][:size])
            stats.append(out["stats"][:size])
            chunks.append(out.exclude("batch", "stats"))
        return TensorDict({"batch": torch.cat(batches), "stats": torch.cat(stats)}, batch_size=[]), chunks

    def improvement_scalars(self, improved, chunks) -> dict[str, float]:
        """What the log shows of one improvement: over all k rollouts, and the chunks' diagnostics averaged
        (``cg_residual``: the largest)."""
        stats = improved["stats"]
        scalars = {
            "pods/improved_return": stats["value_improved"].mean().item(),
            "pods/accepted": (stats["step_size"] > 0).double().mean().item(), "pods/step_size": stats["step_size"].mean().item(),
            "pods/line_search_trials": _mean(chunks, "trials"),
        }
        for key in ("cg_iterations", "gradient_fallback"):
            if key in chunks[0].keys():
                scalars[f"pods/{key}"] = _mean(chunks, key)
        if "cg_residual" in chunks[0].keys():
            scalars["pods/cg_residual"] = max(chunk["cg_residual"].item() for chunk in chunks)
        return scalars

    def drop_epoch(self, what: str) -> dict[str, float]:
        """The non-finite guard's stop, or (skip) the epoch dropped."""
        self.nonfinite(what, "epoch dropped")
        self.zero_grad("actor")
        return {"train/skipped": float(self.skips)}

    def regress(self, batch) -> tuple[float, float, float]:
        """Eq. 7 for ``regression_steps`` steps; returns (first loss, last loss, last gradient norm).

        ``batch``: this rank's rollouts' rows, env-major (T per rollout); minibatches are drawn over the global rows."""
        per_env = batch.shape[0] // self.rollouts
        size = self.num_envs * per_env
        first_row, end_row = self.env_shard.rows(per_env)
        minibatches = self.cfg.minibatches
        per = math.ceil(size / minibatches)
        first = last = float("nan")
        grad_norm = 0.0
        for step in range(self.cfg.regression_steps):
            order = torch.randperm(size, generator=self.generator) if minibatches > 1 else torch.arange(size)
            for begin in range(0, size, per):
                picked = order[begin:begin + per]
                mine = local_rows(picked, first_row, end_row)
                self.zero_grad("actor")
                local = self.loss(batch[mine])["loss_actor"] * (mine.numel() / picked.numel()) if mine.numel() else None
                if local is not None:
                    local.backward()
                zero = self.parameter_groups["actor"][0].new_zeros(())
                loss = self.reduce_gradients("actor", extra=local.detach() if local is not None else zero)
                if not torch.isfinite(loss):
                    return first, float("nan"), grad_norm
                grad_norm = self.clip(self.parameter_groups["actor"])
                self.optimizer_step("actor")
                last = loss.item()
                if step == 0 and begin == 0:
                    first = last
        return first, last, grad_norm

    def simulated_steps(self, chunk) -> int:
        """Env steps simulated by one chunk (``chunk``: its scalars from ``loss.improve``)."""
        rollouts = 1 + 1 + int(chunk["trials"].item())  # policy episode, value+gradient, line search
        if "cg_iterations" in chunk.keys():
            rollouts += 2 * int(chunk["cg_iterations"].item())  # one JVP + one VJP pass per product
        return rollouts * self.chunk * self.loss.horizon

    def extra_state(self) -> dict:
        return {"sim_steps": self.sim_steps}

    def load_extra_state(self, state: dict) -> None:
        self.sim_steps = int(state.get("sim_steps", state["counters"].get("sim_steps", 0)))


def _mean(chunks: list[TensorDict], key: str) -> float:
    return sum(chunk[key].item() for chunk in chunks) / len(chunks)
