"""PODS: policy optimisation via differentiable simulators (Zamora et al. 2021, algorithm 1).

Each epoch, from k fresh initial states (one per env):

1. roll out the deterministic policy: actions ā = π(s_t) [T, k, A] and the return V(π);
2. improve the actions through the simulator (``improve``):
   - first order (Eq. 6):  ā + α·dV/dā;
   - second order (Eq. 14): ā + α·Ĥ⁻¹dV/dā with the Gauss-Newton Ĥ of Eq. 13, solved by
     matrix-free conjugate gradients (``rl.objectives.trajectory.GaussNewton``);
   with a per-env backtracking line search on α that accepts a step only if it raises V on
   the simulator (section 3.3), so V(improved) >= V(π) for every initial state;
3. regress the policy onto the improved actions along the improved trajectories (Eq. 7):
   ``forward(batch)`` returns ``loss_actor = mean 1/2 |π(s_t) - ā_t|²`` for a minibatch of
   (``observation``, ``target_action``) pairs; the trainer takes a configurable number of
   Adam steps on it.

The initial step: first order moves the largest action component by ``max_action_change``
(in action units; the raw gradient has no natural scale), or, with ``max_action_change=None``,
tries α = 1 on the raw gradient, the paper's "standard line-search" read literally (its first
trial's size is then whatever |dV/dā| is); second order tries the full Newton
step α = 1, shortened if it would move an action by more than ``newton_step_cap`` (default
None: never; on pendulum2d the uncapped step learned faster per iteration). Steps are
projected onto the action bounds [-1, 1].
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.objectives import LossModule

from rl.objectives.common import Trainable
from rl.objectives.trajectory import (
    GaussNewton,
    backtracking_line_search,
    conjugate_gradient,
    env_major,
    time_major,
    value_and_gradient,
)

ORDERS = (1, 2)


class PODSLoss(Trainable, LossModule):
    """Trajectory-space policy improvement and the regression loss of PODS (one parameter group: the actor).

    Args:
        env: a differentiable TorchRL env with ``horizon``; one env per initial state (k = num_envs).
        actor: deterministic policy module writing ``action`` (e.g. ``rl.modules.DeterministicActor``).
        order: 1 (gradient step) or 2 (Gauss-Newton step; the env needs ``reward_residual``).
        max_action_change: first-order initial step (action units, largest component); None: α = 1
            on the raw dV/dā (Eq. 6 with a standard line search from 1).
        newton_step_cap: optional cap on the second-order initial step (action units).
        line_search_trials: halvings of α tried before an env keeps its actions.
        armijo: sufficient-increase constant of the line search (0: any increase).
        cg_iterations, cg_tol: conjugate-gradient budget and relative tolerance (order 2).
        damping: Levenberg term λ added to Ĥ (units of Ĥ: reward per action²).
        gradient_fallback: order 2: where the Gauss-Newton step improves nothing, line-search the
            first-order direction instead (same monotone guarantee).
    """

    def __init__(self, env: EnvBase, actor: TensorDictModuleBase, order: int = 2, max_action_change: float = 0.5,
                 newton_step_cap: float | None = None, line_search_trials: int = 10, armijo: float = 1e-4,
                 cg_iterations: int = 30, cg_tol: float = 1e-6, damping: float = 1e-6, gradient_fallback: bool = True):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"PODS order must be 1 or 2, got {order!r}")
        if order == 2 and not hasattr(env, "reward_residual"):
            raise TypeError(f"PODS order 2 needs an env with reward_residual (reward = -|e|²); {type(env).__name__} has none")
        if max_action_change is not None and max_action_change <= 0:
            raise ValueError(f"max_action_change (the first-order first trial step) must be > 0 or None, got {max_action_change}")
        if newton_step_cap is not None and newton_step_cap <= 0:
            raise ValueError(f"newton_step_cap must be > 0 or None, got {newton_step_cap}")
        if line_search_trials < 1 or cg_iterations < 1:
            raise ValueError("line_search_trials and cg_iterations must be >= 1")
        self.env, self.actor = env, actor
        self.horizon = int(env.horizon)
        self.order = order
        self.max_action_change = None if max_action_change is None else float(max_action_change)
        self.newton_step_cap = None if newton_step_cap is None else float(newton_step_cap)
        self.line_search_trials, self.armijo = int(line_search_trials), float(armijo)
        self.cg_iterations, self.cg_tol, self.damping = int(cg_iterations), float(cg_tol), float(damping)
        self.gradient_fallback = bool(gradient_fallback)

    # ------------------------------------------------------------------ improvement (no policy gradient)
    @torch.no_grad()
    def policy_actions(self, start: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(actions [T, N, A], observations [T, N, obs], V(π) [N])`` of one deterministic episode.

        Plain ``env.step``s, no reset at the episode's end: an epoch draws its initial states once, from the
        start env (``PODSTrainer``), so k rollouts in chunks and in one batch consume the generator alike."""
        td, actions, observations, rewards = start, [], [], []
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            for _ in range(self.horizon):
                td = self.actor(td.clone(False))
                actions.append(td["action"])
                observations.append(td["observation"])
                out = self.env.step(td)
                rewards.append(out["next", "reward"].squeeze(-1))
                td = step_mdp(out)
        return torch.stack(actions), torch.stack(observations), torch.stack(rewards).sum(0)

    def direction(self, start: TensorDictBase, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """``(V [N], dV/dā [T, N, A], step direction [T, N, A], diagnostics)`` at ``actions``."""
        if self.order == 1:
            value, gradient = value_and_gradient(self.env, start, actions)
            return value, gradient, gradient, {}
        hessian = GaussNewton(self.env, start, actions, damping=self.damping)
        flat, info = conjugate_gradient(hessian, env_major(hessian.gradient), self.cg_iterations, self.cg_tol)
        step = time_major(flat, self.horizon)
        # a CG breakdown (non-finite step) in an env falls back to its gradient: a NaN action would stop training
        broken = ~torch.isfinite(step).all(-1).all(0)  # [N]
        step = torch.where(broken[None, :, None], hessian.gradient, step)
        diagnostics = {"cg_iterations": float(info.iterations), "cg_residual": info.relative_residual.nan_to_num(float("inf")).max().item(),
                       "cg_nonfinite": broken.double().mean().item()}
        return hessian.value, hessian.gradient, step, diagnostics

    def gradient_step(self, gradient: torch.Tensor) -> torch.Tensor:
        """[N] first α of a line search along dV/dā [T, N, A]: ``max_action_change`` / max|dV/dā|, or 1."""
        if self.max_action_change is None:
            return torch.ones(gradient.shape[1], dtype=gradient.dtype, device=gradient.device)
        largest = gradient.abs().amax((0, 2)).clamp_min(torch.finfo(gradient.dtype).tiny)
        return self.max_action_change / largest

    def initial_step(self, direction: torch.Tensor) -> torch.Tensor:
        """[N] first α of the line search (see the module docstring)."""
        if self.order == 1:
            return self.gradient_step(direction)
        largest = direction.abs().amax((0, 2)).clamp_min(torch.finfo(direction.dtype).tiny)
        step = torch.ones_like(largest)
        return step if self.newton_step_cap is None else torch.minimum(step, self.newton_step_cap / largest)

    def improve(self, start: TensorDictBase) -> TensorDict:
        """One policy-improvement step from the env states ``start`` [N].

        Returns a TensorDict [N, T] with ``observation`` (along the improved trajectory) and
        ``target_action``, and non-batched entries ``value_policy`` [N], ``value_improved`` [N],
        ``step_size`` [N] and the scalars ``trials`` and (order 2) ``cg_iterations``, ``cg_residual``.
        """
        actions, observations, _ = self.policy_actions(start)
        value, gradient, direction, diagnostics = self.direction(start, actions)
        search = backtracking_line_search(
            self.env, start, actions, value, observations, gradient, direction, self.initial_step(direction),
            max_trials=self.line_search_trials, armijo=self.armijo,
        )
        trials = search.trials
        failed = search.step_size == 0
        if self.order == 2 and self.gradient_fallback and failed.any():
            # where the Gauss-Newton step found no improvement, try the first-order direction (same guarantee)
            retry = backtracking_line_search(
                self.env, start, actions, value, observations, gradient, gradient, self.gradient_step(gradient),
                max_trials=self.line_search_trials, armijo=self.armijo,
            )
            trials += retry.trials
            use = failed & (retry.step_size > 0)
            search = search._replace(
                actions=torch.where(use[None, :, None], retry.actions, search.actions),
                observations=torch.where(use[None, :, None], retry.observations, search.observations),
                value=torch.where(use, retry.value, search.value),
                step_size=torch.where(use, retry.step_size, search.step_size),
            )
            diagnostics["gradient_fallback"] = use.double().mean().item()
        n = actions.shape[1]
        batch = TensorDict(
            {"observation": search.observations.transpose(0, 1), "target_action": search.actions.transpose(0, 1)},
            batch_size=[n, self.horizon],
        )
        stats = TensorDict({"value_policy": value, "value_improved": search.value, "step_size": search.step_size}, batch_size=[n])
        scalars = {"trials": float(trials), **diagnostics}
        return TensorDict({"batch": batch, "stats": stats, **{k: torch.tensor(v) for k, v in scalars.items()}}, batch_size=[])

    # ------------------------------------------------------------------ regression (Eq. 7)
    def forward(self, batch: TensorDictBase) -> TensorDict:
        """``loss_actor``: mean over samples of 1/2 |π(observation) - target_action|²."""
        predicted = self.actor(batch.select("observation").clone(False))["action"]
        loss = 0.5 * (predicted - batch["target_action"]).square().sum(-1).mean()
        return TensorDict({"loss_actor": loss}, batch_size=[])
