"""An env's return as a function of an open-loop action sequence: value, gradient, Gauss-Newton.

PODS (``rl.objectives.pods``) improves a policy in trajectory space. With the initial states
fixed, the return of an action sequence ā [T, N, A] played open loop,

    V(ā) = sum_t r_t,

is a differentiable function of ā for each of the N envs. This module gives V and dV/dā
(one backward pass through the rollout), the Gauss-Newton matrix of -V for rewards that are
sums of squares, r_t = -|e_t|² (PODS Eq. 13: the curvature of the reward, pulled back by the
trajectory Jacobian), batched conjugate gradients and a per-env backtracking line search.

Gauss-Newton products are matrix-free: Ĥ·v = 2·J_eᵀ(J_e·v) + λ·v with J_e = de/dā, where
J_eᵀw is a VJP through the rollout's retained graph and J_e·v a VJP through the graph of
that VJP (see ``GaussNewton``); ``dense()`` builds Ĥ from first-order VJP rows only, an
independent path for testing. The env must expose ``reward_residual(transition)
-> [N, E]`` with ``reward == -|e|²`` (``tphys`` payload envs do).

Shapes: T steps, N envs (independent problems: every matrix is block diagonal over envs), A
action dims, E residual entries per step; per-env flat vectors are [N, T·A].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from tphys.autodiff import twice_differentiable


class OpenLoopRollout(NamedTuple):
    rewards: Tensor  # [T, N]
    observations: Tensor  # [T, N, obs] observation at which each action was taken
    residuals: Tensor | None  # [T, N, E] when asked for


def play(env: EnvBase, start: TensorDictBase, actions: Tensor, residuals: bool = False) -> OpenLoopRollout:
    """Play ``actions`` [T, N, A] from the env state ``start`` (an ``env.reset()`` output), with the graph."""
    if residuals and not hasattr(env, "reward_residual"):
        raise TypeError(f"{type(env).__name__} has no reward_residual(transition): Gauss-Newton needs rewards -|e|²")
    td = start
    rewards, observations, errors = [], [], []
    for action in actions.unbind(0):
        observations.append(td["observation"])
        td = env.step(td.clone(False).set("action", action))
        rewards.append(td["next", "reward"].squeeze(-1))
        if residuals:
            errors.append(env.reward_residual(td))
        td = step_mdp(td)
    return OpenLoopRollout(torch.stack(rewards), torch.stack(observations), torch.stack(errors) if residuals else None)


def value_and_gradient(env: EnvBase, start: TensorDictBase, actions: Tensor) -> tuple[Tensor, Tensor]:
    """``(V [N], dV/dā [T, N, A])`` of the open-loop return at ``actions``; the gradient is zero where no reward
    depends on the actions (an MPM tool above the material: the rollout keeps no graph), as Rewarped returns it."""
    leaf = actions.detach().requires_grad_()
    with torch.enable_grad():
        value = play(env, start, leaf).rewards.sum(0)
        gradient = None
        if value.requires_grad:
            (gradient,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
    return value.detach(), torch.zeros_like(leaf) if gradient is None else gradient


def env_major(x: Tensor) -> Tensor:
    """[T, N, A] -> [N, T·A]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def time_major(x: Tensor, steps: int) -> Tensor:
    """[N, T·A] -> [T, N, A]."""
    return x.reshape(x.shape[0], steps, -1).transpose(0, 1)


class GaussNewton:
    """The Gauss-Newton matrix Ĥ = 2·J_eᵀJ_e + damping·I of -V at ``actions``, per env.

    Attributes after construction: ``value`` [N] (= -sum |e|²), ``gradient`` dV/dā [T, N, A].
    Call it on per-env vectors [N, T·A] for Ĥ·v; ``dense()`` -> [N, T·A, T·A].

    J_e·v uses the double-vjp trick: u -> J_eᵀu is linear, so J_e·v = d<J_eᵀu, v>/du, one
    backward pass through the (retained) graph of the first. Forward-mode AD would be the
    textbook tool, but in torch 2.13 on CPU an op mixing a dual and a plain tensor costs
    ~250 µs (the ZeroTensor fallback), 15x the double-vjp route on a pendulum rollout.

    Where no residual depends on the actions (the rollout keeps no graph to them: an MPM tool above the material, an
    env whose residuals are the state's alone), J_e = 0: the gradient is zero, Ĥ = damping·I and the products follow,
    as ``value_and_gradient`` returns zero there.
    """

    def __init__(self, env: EnvBase, start: TensorDictBase, actions: Tensor, damping: float = 0.0):
        self.env, self.start, self.damping = env, start, float(damping)
        self.actions = actions.detach().requires_grad_()
        self.steps = actions.shape[0]
        with torch.enable_grad(), twice_differentiable():
            self.residuals = play(env, start, self.actions, residuals=True).residuals
            value = -self.residuals.square().sum((0, 2))
            gradient = self._probe = self._pulled = None
            if self.residuals.requires_grad:
                (gradient,) = torch.autograd.grad(value.sum(), self.actions, retain_graph=True, allow_unused=True)
            if gradient is not None:
                self._probe = torch.zeros_like(self.residuals, requires_grad=True)
                (self._pulled,) = torch.autograd.grad(self.residuals, self.actions, grad_outputs=self._probe, create_graph=True)
        self.value = value.detach()
        self.gradient = torch.zeros_like(self.actions) if gradient is None else gradient

    @property
    def independent(self) -> bool:
        """Whether no residual depends on the actions (J_e = 0, see the class docstring)."""
        return self._pulled is None

    def jvp(self, tangent: Tensor) -> Tensor:
        """J_e·v: [T, N, A] -> [T, N, E]."""
        if self.independent:
            return torch.zeros_like(self.residuals.detach())
        (out,) = torch.autograd.grad(self._pulled, self._probe, grad_outputs=tangent, retain_graph=True)
        return out

    def vjp(self, cotangent: Tensor) -> Tensor:
        """J_eᵀ·w: [T, N, E] -> [T, N, A], through the retained graph."""
        if self.independent:
            return torch.zeros_like(self.gradient)
        (out,) = torch.autograd.grad(self.residuals, self.actions, grad_outputs=cotangent, retain_graph=True)
        return out

    def __call__(self, vectors: Tensor) -> Tensor:
        tangent = time_major(vectors, self.steps)
        product = 2.0 * self.vjp(self.jvp(tangent))
        return env_major(product) + self.damping * vectors

    def dense(self) -> Tensor:
        """[N, T·A, T·A] from the rows of J_e, one VJP per (step, residual entry) shared by all envs."""
        steps, num_envs, entries = self.residuals.shape
        rows = []
        for t in range(steps):
            for e in range(entries):
                unit = torch.zeros_like(self.residuals)
                unit[t, :, e] = 1.0
                rows.append(env_major(self.vjp(unit)))  # [N, T·A]: row (t, e) of every env's J_e
        jacobian = torch.stack(rows, dim=1)  # [N, T·E, T·A]
        eye = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
        return 2.0 * jacobian.transpose(-1, -2) @ jacobian + self.damping * eye


class CGInfo(NamedTuple):
    iterations: int
    relative_residual: Tensor  # [N] |b - Ĥx| / |b|


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], rhs: Tensor, iterations: int, tol: float = 1e-10
                       ) -> tuple[Tensor, CGInfo]:
    """Solve matvec(x) = rhs for x [N, D], envs independent (symmetric positive semi-definite blocks).

    Stops after ``iterations`` products or when every env's residual is below ``tol``·|rhs|;
    an env whose curvature along the search direction is not positive stops updating.
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = (r * r).sum(-1)
    norm_b = rs.sqrt().clamp_min(torch.finfo(rhs.dtype).tiny)
    active = rs.sqrt() > tol * norm_b
    done = 0
    for done in range(1, iterations + 1):
        if not active.any():
            done -= 1
            break
        hp = matvec(p)
        curvature = (p * hp).sum(-1)
        active = active & (curvature > 0)
        step = torch.where(active, rs / torch.where(active, curvature, torch.ones_like(curvature)), torch.zeros_like(rs))
        x = x + step.unsqueeze(-1) * p
        r = r - step.unsqueeze(-1) * hp
        rs_new = (r * r).sum(-1)
        active = active & (rs_new.sqrt() > tol * norm_b)
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta.unsqueeze(-1) * p
        rs = rs_new
    return x, CGInfo(done, rs.sqrt() / norm_b)


class LineSearchResult(NamedTuple):
    actions: Tensor  # [T, N, A] accepted actions (the start where no step was accepted)
    value: Tensor  # [N] their return
    observations: Tensor  # [T, N, obs] observations along the accepted trajectory
    step_size: Tensor  # [N] accepted alpha, 0 where none
    trials: int  # rollouts played


def backtracking_line_search(env: EnvBase, start: TensorDictBase, actions: Tensor, value: Tensor, observations: Tensor,
                             gradient: Tensor, direction: Tensor, initial_step: Tensor, max_trials: int = 10,
                             armijo: float = 1e-4, low: float = -1.0, high: float = 1.0) -> LineSearchResult:
    """Per env, the first alpha in initial_step·2^-j (j < max_trials) whose projected step improves V.

    Trial actions are clip(ā + alpha·d, low, high). A step is accepted only if V(trial) > V(ā)
    and V(trial) >= V(ā) + armijo·<dV/dā, trial - ā>; envs where no trial passes keep ā
    (alpha = 0). So the returned value is never below ``value`` (PODS section 3.3).
    """
    best_actions, best_value, best_obs = actions.clone(), value.clone(), observations.clone()
    alpha = initial_step.clone()
    accepted = torch.zeros_like(value, dtype=torch.bool)
    trials = 0
    with torch.no_grad():
        for _ in range(max_trials):
            trial = (actions + alpha[None, :, None] * direction).clamp(low, high)
            rollout = play(env, start, trial)
            trials += 1
            trial_value = rollout.rewards.sum(0)
            predicted = (gradient * (trial - actions)).sum((0, 2))
            ok = ~accepted & (trial_value > value) & (trial_value >= value + armijo * predicted)
            best_actions = torch.where(ok[None, :, None], trial, best_actions)
            best_obs = torch.where(ok[None, :, None], rollout.observations, best_obs)
            best_value = torch.where(ok, trial_value, best_value)
            accepted = accepted | ok
            if accepted.all():
                break
            alpha = torch.where(accepted, alpha, 0.5 * alpha)
    step = torch.where(accepted, alpha, torch.zeros_like(alpha))
    return LineSearchResult(best_actions, best_value, best_obs, step, trials)
