"""The PODS training loop (algorithm 1 of the PODS paper).

One iteration (epoch) = k fresh initial states (one per env), one deterministic episode each:

1. ``loss.improve(env.reset())``: the policy's actions, improved through the simulator (first
   or second order) under a line search that never lowers any episode's return;
2. the observation normalizer sees the improved trajectories' observations;
3. ``regression_steps`` optimizer steps on Eq. 7 over the k·T (observation, improved action)
   pairs, in ``minibatches`` minibatches per step (1: full batch, as the paper).

Env steps count the k·T steps of the policy episodes; ``sim_steps`` (logged) also counts the
rollouts of the line search and, for the second order, of the Gauss-Newton products.
Everything else (evaluation, logging, checkpoints, resume, the non-finite guard) is
``FirstOrderTrainer``'s.
"""

from __future__ import annotations

import math

import torch

from rl.modules.normalizer import ObservationNormalizer
from rl.objectives.pods import PODSLoss
from rl.trainers.first_order import FirstOrderTrainer, TrainerConfig
from rl.trainers.guard import describe


class PODSTrainer(FirstOrderTrainer):
    """Trains ``loss.actor`` by PODS on ``loss.env``; see the module docstring.

    Args:
        loss: a ``PODSLoss``.
        config: ``TrainerConfig`` (``actor_lr``, optimizer, schedule, clipping, eval, checkpoints).
        regression_steps: optimizer steps on Eq. 7 per epoch (the paper: 50).
        minibatches: minibatches per regression step.
        Other arguments as ``FirstOrderTrainer``.
    """

    def __init__(self, loss: PODSLoss, config: TrainerConfig, regression_steps: int = 50, minibatches: int = 1,
                 run_dir=None, eval_env=None, normalizer: ObservationNormalizer | None = None, logger: str = "csv"):
        if regression_steps < 1 or minibatches < 1:
            raise ValueError("regression_steps and minibatches must be >= 1")
        super().__init__(loss, config, run_dir=run_dir, eval_env=eval_env, normalizer=normalizer, logger=logger)
        self.regression_steps, self.minibatches = int(regression_steps), int(minibatches)
        self.sim_steps = 0

    def step(self) -> dict[str, float]:
        lrs = self._set_lrs()
        snapshot = self._snapshot() if self.cfg.on_nonfinite == "skip" else None
        start = self.env.reset()
        try:
            improved = self.loss.improve(start)
        except FloatingPointError as err:  # the env's NaN/inf state or action check
            return self._nonfinite(f"simulator: {err}")
        stats = improved["stats"]
        if not (torch.isfinite(stats["value_policy"]).all() and torch.isfinite(improved["batch", "target_action"]).all()):
            return self._nonfinite("non-finite return or improved actions")
        batch = improved["batch"].reshape(-1)
        if self.normalizer is not None:
            self.normalizer.update(batch["observation"])
        first, last, grad_norm = self._regress(batch)
        if not math.isfinite(last):
            if snapshot is not None:
                snapshot.restore()
            return self._nonfinite(f"regression loss {last}")
        bad = self.nonfinite_parameters()
        if bad:
            if snapshot is not None:
                snapshot.restore()
            return self._nonfinite(f"non-finite parameters or optimizer state after the regression: {describe(bad)}")
        self.iteration += 1
        self.env_steps += self.steps_per_iter
        self.sim_steps += self._simulated_steps(improved)
        policy_return = stats["value_policy"].mean().item()
        self.recent_returns = [policy_return]
        scalars = {
            "loss/actor": last, "loss/actor_first": first, "grad_norm/actor": grad_norm, "lr/actor": lrs["actor"],
            "train/episode_return": policy_return, "pods/improved_return": stats["value_improved"].mean().item(),
            "pods/accepted": (stats["step_size"] > 0).double().mean().item(), "pods/step_size": stats["step_size"].mean().item(),
            "pods/line_search_trials": improved["trials"].item(), "time/sim_steps": float(self.sim_steps),
        }
        for key in ("cg_iterations", "cg_residual", "gradient_fallback"):
            if key in improved.keys():
                scalars[f"pods/{key}"] = improved[key].item()
        self._watch_stall(scalars)
        return scalars

    def _regress(self, batch) -> tuple[float, float, float]:
        """Eq. 7 for ``regression_steps`` steps; returns (first loss, last loss, last gradient norm)."""
        size = batch.shape[0]
        per = math.ceil(size / self.minibatches)
        first = last = float("nan")
        grad_norm = 0.0
        for step in range(self.regression_steps):
            order = torch.randperm(size, generator=self.generator) if self.minibatches > 1 else torch.arange(size)
            for begin in range(0, size, per):
                self.actor_opt.zero_grad(set_to_none=True)
                loss = self.loss(batch[order[begin:begin + per]])["loss_actor"]
                if not torch.isfinite(loss):
                    return first, float("nan"), grad_norm
                loss.backward()
                grad_norm = self._clip(self.actor_params)
                self.actor_opt.step()
                last = loss.item()
                if step == 0 and begin == 0:
                    first = last
        return first, last, grad_norm

    def _simulated_steps(self, improved) -> int:
        rollouts = 1 + 1 + int(improved["trials"].item())  # policy episode, value+gradient, line search
        if "cg_iterations" in improved.keys():
            rollouts += 2 * int(improved["cg_iterations"].item())  # one JVP + one VJP pass per product
        return rollouts * self.steps_per_iter

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["counters"]["sim_steps"] = self.sim_steps
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sim_steps = int(state["counters"].get("sim_steps", 0))
