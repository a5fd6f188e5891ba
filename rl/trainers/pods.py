"""The PODS iteration (algorithm 1 of the PODS paper): one epoch.

One epoch = k fresh initial states (one per env), one deterministic episode each:

1. ``loss.improve(env.reset())``: the policy's actions, improved through the simulator (first
   or second order) under a line search that never lowers any episode's return;
2. the observation normalizer sees the improved trajectories' observations;
3. ``regression_steps`` optimizer steps on Eq. 7 over the k·T (observation, improved action)
   pairs, in ``minibatches`` minibatches per step (1: full batch, as the paper).

Env steps count the k·T steps of the policy episodes; ``sim_steps`` (logged) also counts the
rollouts of the line search and, for the second order, of the Gauss-Newton products.
Everything else (evaluation, logging, checkpoints, resume, the non-finite guard) is ``Trainer``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from rl.modules.normalizer import ObservationNormalizer
from rl.objectives.pods import PODSLoss
from rl.trainers.guard import describe
from rl.trainers.loop import LoopConfig, Trainer


@dataclass
class PODSConfig(LoopConfig):
    """``LoopConfig`` and the regression of each epoch (Eq. 7; the paper: 50 full-batch steps)."""

    regression_steps: int = 50
    minibatches: int = 1

    MINIMUM: ClassVar[dict[str, int]] = {**LoopConfig.MINIMUM, "regression_steps": 1, "minibatches": 1}


class PODSTrainer(Trainer):
    """Trains ``loss.actor`` by PODS on ``loss.env``; see the module docstring.

    Args:
        loss: a ``PODSLoss``.
        config: ``PODSConfig`` (``actor_lr``, optimizer, schedule, clipping, regression, eval, checkpoints).
        run_dir, eval_env, normalizer, logger: as ``Trainer``.
    """

    stochastic_policy = False  # the deterministic tanh policy of the paper's appendix A.3

    def __init__(self, loss: PODSLoss, config: PODSConfig, run_dir=None, eval_env=None,
                 normalizer: ObservationNormalizer | None = None, logger: str = "csv"):
        super().__init__(loss, config, loss.env, int(loss.env.batch_size.numel()) * loss.horizon, run_dir=run_dir,
                         eval_env=eval_env, normalizer=normalizer, logger=logger)
        self.sim_steps = 0

    @property
    def name(self) -> str:
        return f"pods{self.loss.order}"

    def step(self) -> dict[str, float]:
        lrs = self.set_learning_rates()
        snapshot = self.snapshot() if self.cfg.on_nonfinite == "skip" else None
        start = self.env.reset()
        try:
            improved = self.loss.improve(start)
        except FloatingPointError as err:  # the env's NaN/inf state or action check
            return self.drop_epoch(f"simulator: {err}")
        stats = improved["stats"]
        if not (torch.isfinite(stats["value_policy"]).all() and torch.isfinite(improved["batch", "target_action"]).all()):
            return self.drop_epoch("non-finite return or improved actions")
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
        self.sim_steps += self.simulated_steps(improved)
        policy_return = stats["value_policy"].mean().item()
        self.recent_returns = [policy_return]
        scalars = {
            "loss/actor": last, "loss/actor_first": first, "grad_norm/actor": grad_norm, "lr/actor": lrs["actor"],
            "train/episode_return": policy_return, **self.improvement_scalars(improved), "time/sim_steps": float(self.sim_steps),
        }
        return self.advance(self.steps_per_iter, scalars)

    def improvement_scalars(self, improved) -> dict[str, float]:
        """What the log shows of one improvement (``loss.improve``'s output)."""
        stats = improved["stats"]
        scalars = {
            "pods/improved_return": stats["value_improved"].mean().item(),
            "pods/accepted": (stats["step_size"] > 0).double().mean().item(), "pods/step_size": stats["step_size"].mean().item(),
            "pods/line_search_trials": improved["trials"].item(),
        }
        for key in ("cg_iterations", "cg_residual", "gradient_fallback"):
            if key in improved.keys():
                scalars[f"pods/{key}"] = improved[key].item()
        return scalars

    def drop_epoch(self, what: str) -> dict[str, float]:
        """The non-finite guard's stop, or (skip) the epoch dropped."""
        self.nonfinite(what, "epoch dropped")
        self.zero_grad("actor")
        return {"train/skipped": float(self.skips)}

    def regress(self, batch) -> tuple[float, float, float]:
        """Eq. 7 for ``regression_steps`` steps; returns (first loss, last loss, last gradient norm)."""
        size = batch.shape[0]
        minibatches = self.cfg.minibatches
        per = math.ceil(size / minibatches)
        first = last = float("nan")
        grad_norm = 0.0
        for step in range(self.cfg.regression_steps):
            order = torch.randperm(size, generator=self.generator) if minibatches > 1 else torch.arange(size)
            for begin in range(0, size, per):
                self.zero_grad("actor")
                loss = self.loss(batch[order[begin:begin + per]])["loss_actor"]
                if not torch.isfinite(loss):
                    return first, float("nan"), grad_norm
                loss.backward()
                grad_norm = self.clip(self.parameter_groups["actor"])
                self.optimizer_step("actor")
                last = loss.item()
                if step == 0 and begin == 0:
                    first = last
        return first, last, grad_norm

    def simulated_steps(self, improved) -> int:
        rollouts = 1 + 1 + int(improved["trials"].item())  # policy episode, value+gradient, line search
        if "cg_iterations" in improved.keys():
            rollouts += 2 * int(improved["cg_iterations"].item())  # one JVP + one VJP pass per product
        return rollouts * self.steps_per_iter

    def extra_state(self) -> dict:
        return {"sim_steps": self.sim_steps}

    def load_extra_state(self, state: dict) -> None:
        self.sim_steps = int(state.get("sim_steps", state["counters"].get("sim_steps", 0)))
