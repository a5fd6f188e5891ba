"""GPS: mirror-descent guided policy search with the simulator's own dynamics (Montgomery & Levine 2016),
the model-based baseline of the PODS paper's table 1.

One iteration, from k fresh initial states (one per env), shaped like PODS's (``improve`` then a regression):

1. roll out the deterministic policy π_θ: the nominal trajectory (x̂_t, û_t) and its return V(π);
2. c-step, ``iterations`` times: linearize along the nominal trajectory, by autograd through the env
   step: the dynamics (A_t, B_t), the Gauss-Newton expansion of the cost |e_t|² = -r_t (the env's
   ``reward_residual``), and the policy, π̄_t(u|x) = N(π_θ(o(x̂_t)) + ∂π_θ/∂x (x - x̂_t), σ²I)
   (``policy_std`` σ); solve the KL-constrained LQR (``rl.objectives.lqr``: at most ``kl_step`` · T of
   KL to π̄ per initial state); roll the new controller's mean out on the simulator (actions clamped
   to [-1, 1]): that is the next nominal trajectory;
3. s-step: regress π_θ onto the controller's mean actions along its trajectory, each sample weighted
   by the controller's precision Σ_t⁻¹ (normalized to a mean trace of A per sample).

The KL bound adapts as in MDGPS: after each c-step the multiplier of ``kl_step`` is scaled by
predicted / (2 (predicted - actual)) of the improvement (predicted by the linear model, actual on
the simulator), clipped to [0.5, 2] per iteration and kept in [0.1, 10].

The c-step never lowers an initial state's return (ours; MDGPS relies on the step-size rule alone): an
initial state whose new controller, rolled out on the simulator, returns less than the nominal
trajectory re-solves with half its KL bound, up to ``backtracks`` times, and otherwise keeps the nominal
trajectory (the policy's actions, weighted by the linearized policy's precision), as PODS's line search
keeps an episode's actions. On pendulum2d/stop a bound doubled by the rule made the policy's return drop
from -21 to -353 in one iteration without it (tests/rl/test_gps.py).

The state x is every float entry of the env's state that its step reads (found by autograd: the
env's ``state_keys`` whose gradient is connected), flattened; the observation of a state comes
from the env's ``observe``. Shapes: N envs, T steps, X state, A action, E residual entries.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.objectives import LossModule

from rl.objectives.common import Trainable
from rl.objectives.lqr import (
    ConstrainedSolution,
    LinearDynamics,
    LinearGaussian,
    QuadraticCost,
    expected_cost,
    kl_constrained_lqr,
)


class Linearization(NamedTuple):
    """First-order model of one trajectory: ``dynamics`` (A [N, T, X, X], B [N, T, X, A]), the Gauss-Newton
    ``cost`` of |e|², the policy's ``gain`` ∂π/∂x [N, T, A, X] and ``policy_action`` π(o(x̂_t)) [N, T, A],
    the nominal ``states`` [N, T, X], ``actions`` [N, T, A] (clamped), ``observations`` [N, T, obs] and the
    ``value`` Σ_t r_t [N]; ``keys``: the state entries that make up x, in order."""

    dynamics: LinearDynamics
    cost: QuadraticCost
    gain: Tensor
    policy_action: Tensor
    states: Tensor
    actions: Tensor
    observations: Tensor
    value: Tensor
    keys: tuple[str, ...]


def _rows(outputs: list[Tensor], inputs: list[list[Tensor]]) -> Tensor:
    """[N, T, R, I]: row i of step t = d outputs[t][:, i] / d inputs[t] (each flattened per env and concatenated).

    One backward pass per row for all steps at once: step t's output depends on step t's inputs only.
    """
    flat = [leaf for step in inputs for leaf in step]
    per_step = len(inputs[0])
    rows = []
    for i in range(outputs[0].shape[-1]):
        total = sum(out[:, i].sum() for out in outputs)
        grads = torch.autograd.grad(total, flat, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, flat)]
        rows.append(torch.stack([torch.cat([g.flatten(1) for g in grads[s:s + per_step]], -1)
                                 for s in range(0, len(grads), per_step)], 1))
    return torch.stack(rows, 2)


class GPSLoss(Trainable, LossModule):
    """The c-step (``improve``) and the s-step's precision-weighted regression loss (``forward``) of MDGPS.

    Args:
        env: a tphys env with ``reward_residual`` (reward = -|e|²), ``state_keys`` and ``observe`` (the PODS envs).
        actor: deterministic policy module writing ``action`` (``rl.modules.DeterministicActor``).
        kl_step: KL allowed per time step between a controller and the linearized policy (×T per initial state).
        policy_std: σ of the linearized policy's Gaussian (action units).
        iterations: linearize / solve / roll-out passes per c-step (iLQG iterations).
        backtracks: halvings of an initial state's KL bound while its controller lowers its return (0: none).
    """

    def __init__(self, env: EnvBase, actor: TensorDictModuleBase, kl_step: float = 0.2, policy_std: float = 0.1,
                 iterations: int = 1, backtracks: int = 4):
        super().__init__()
        for needed in ("reward_residual", "state_keys", "observe"):
            if not hasattr(env, needed):
                raise TypeError(f"GPS needs an env with {needed} (the tphys PODS envs); {type(env).__name__} has none")
        if kl_step <= 0 or policy_std <= 0 or iterations < 1 or backtracks < 0:
            raise ValueError(f"GPS needs kl_step > 0, policy_std > 0, iterations >= 1 and backtracks >= 0, got {kl_step}, "
                             f"{policy_std}, {iterations}, {backtracks}")
        self.env, self.actor = env, actor
        self.horizon = int(env.horizon)
        self.kl_step, self.policy_std, self.iterations = float(kl_step), float(policy_std), int(iterations)
        self.backtracks = int(backtracks)
        self.register_buffer("kl_multiplier", torch.ones((), dtype=torch.float64))

    # ------------------------------------------------------------------ the simulator's linearization
    def policy_episode(self, start: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``(actions [N, T, A], value [N])``: one deterministic episode of the policy from ``start``, its return Σ_t r_t."""
        td, actions, value = start, [], 0.0
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            for _ in range(self.horizon):
                td = self.actor(td.clone(False))
                actions.append(td["action"])
                out = self.env.step(td)
                value = value + out["next", "reward"].squeeze(-1)
                td = step_mdp(out)
        return torch.stack(actions, 1), value

    def policy_actions(self, start: TensorDictBase) -> Tensor:
        """[N, T, A] actions of one deterministic episode of the policy from ``start``."""
        return self.policy_episode(start)[0]

    def linearize(self, start: TensorDictBase, actions: Tensor) -> Linearization:
        """Play ``actions`` [N, T, A] from ``start`` and differentiate every step (see ``Linearization``).

        Backward passes through the physics: one per state entry (the rows of [A B]). The residual's and the
        policy's rows go through the observation, the reward and the network only: e_t is taken at a detached
        copy x'_t of the next state, and J_e = ∂e/∂x' [A B] + [0 ∂e/∂u].
        """
        env, keys = self.env, tuple(self.env.state_keys)
        td = start.clone(False)
        steps, observations, rewards, states, used = [], [], [], [], None
        previous = torch.zeros_like(actions[:, 0])  # the action the observation of x_t follows (zero at a reset)
        with torch.enable_grad():
            for _ in range(self.horizon):
                leaves = {k: td[k].detach().requires_grad_() for k in keys}
                action = actions[:, len(steps)].detach().clamp(-1.0, 1.0).requires_grad_()
                state = td.clone(False).update(leaves)
                observation = env.observe(state, previous)["observation"]
                previous = action.detach()
                observations.append(observation.detach())
                policy = self.actor(TensorDict({"observation": observation}, batch_size=td.batch_size))["action"]
                out = env.step(state.set("action", action))
                if used is None:  # the state entries the step reads
                    probe = sum(out["next", k].sum() for k in keys)
                    grads = torch.autograd.grad(probe, list(leaves.values()), retain_graph=True, allow_unused=True)
                    used = tuple(k for k, g in zip(keys, grads) if g is not None)
                    if not used:
                        raise ValueError(f"GPS: no state entry of {keys} reaches the step's outputs")
                after = {k: out["next", k].detach().requires_grad_() for k in used}
                next_observation = env.observe(out["next"].clone(False).update(after), action)["observation"]
                transition = TensorDict({"action": action, "next": {"observation": next_observation}}, batch_size=td.batch_size)
                residual = env.reward_residual(transition)
                rewards.append(out["next", "reward"].squeeze(-1).detach())
                states.append(torch.cat([leaves[k].flatten(1) for k in used], -1).detach())
                steps.append({"x": [leaves[k] for k in used], "u": action, "after": [after[k] for k in used],
                              "next": torch.cat([out["next", k].flatten(1) for k in used], -1), "residual": residual,
                              "policy": policy})
                td = step_mdp(out.detach())
            F = _rows([s["next"] for s in steps], [s["x"] + [s["u"]] for s in steps])  # [N, T, X, X+A]
            de = _rows([s["residual"] for s in steps], [s["after"] + [s["u"]] for s in steps])  # [N, T, E, X+A]
            gain = _rows([s["policy"] for s in steps], [s["x"] for s in steps])  # [N, T, A, X]
        x_dim = states[0].shape[-1]
        J = de[..., :x_dim] @ F
        J[..., x_dim:] += de[..., x_dim:]
        e = torch.stack([s["residual"].detach() for s in steps], 1)
        cost = QuadraticCost(2.0 * J.transpose(-1, -2) @ J, 2.0 * (J.transpose(-1, -2) @ e.unsqueeze(-1)).squeeze(-1))
        return Linearization(LinearDynamics(F[..., :x_dim], F[..., x_dim:]), cost, gain,
                             torch.stack([s["policy"].detach() for s in steps], 1), torch.stack(states, 1),
                             actions.clamp(-1.0, 1.0), torch.stack(observations, 1), torch.stack(rewards, 1).sum(1), used)

    def rollout(self, start: TensorDictBase, nominal: Linearization, controller: LinearGaussian) -> tuple[Tensor, Tensor, Tensor]:
        """The controller's mean on the simulator, u_t = clamp(û_t + K_t (x_t - x̂_t) + k_t):
        ``(actions [N, T, A], observations [N, T, obs], value [N])``."""
        td, actions, observations, value = start.clone(False), [], [], 0.0
        with torch.no_grad():
            for t in range(self.horizon):
                deviation = torch.cat([td[k].flatten(1) for k in nominal.keys], -1) - nominal.states[:, t]
                u = nominal.actions[:, t] + (controller.K[:, t] @ deviation.unsqueeze(-1)).squeeze(-1) + controller.k[:, t]
                u = u.clamp(-1.0, 1.0)
                observations.append(td["observation"])
                actions.append(u)
                out = self.env.step(td.set("action", u))
                value = value + out["next", "reward"].squeeze(-1)
                td = step_mdp(out)
        return torch.stack(actions, 1), torch.stack(observations, 1), value

    # ------------------------------------------------------------------ the c-step
    def improve(self, start: TensorDictBase) -> TensorDict:
        """One c-step from the env states ``start`` [N]; returns, like ``PODSLoss.improve``, a TensorDict with
        ``batch`` [N, T] (``observation``, ``target_action``, ``weight`` [A, A] precision), ``stats`` [N]
        (``value_policy``, ``value_improved``, ``kl``, ``eta``, the KL bound ``kl_bound`` it was solved under (after
        backtracking), ``quu_min_eig``: the smallest eigenvalue of its Q_uu = Σ⁻¹ over the steps, positive) and the
        scalars ``kl_multiplier`` (after this c-step's update), ``linearizations``, ``state_dim`` (X: backward passes
        through the physics per linearization), the step-size rule's ``predicted_improvement`` (linear model) and
        ``actual_improvement`` (simulator, before backtracking) of the mean return, per linearization, and ``weight_ess``
        (``effective_sample_fraction`` of the regression's precision traces)."""
        actions = self.policy_actions(start)
        value_policy = None
        predicted_total = actual_total = 0.0
        for _ in range(self.iterations):
            nominal = self.linearize(start, actions)
            if value_policy is None:
                value_policy = nominal.value
            n, t_len, a_dim = nominal.actions.shape
            x_dim = nominal.states.shape[-1]
            eye = torch.eye(a_dim, dtype=nominal.actions.dtype, device=nominal.actions.device)
            prior = LinearGaussian(nominal.gain, nominal.policy_action - nominal.actions,
                                   (self.policy_std ** 2) * eye.expand(n, t_len, a_dim, a_dim).clone())
            mean0, cov0 = nominal.states.new_zeros(n, x_dim), nominal.states.new_zeros(n, x_dim, x_dim)
            epsilon = nominal.value.new_full((n,), self.kl_step * self.kl_multiplier.item() * t_len)
            solution = solved_or_prior(kl_constrained_lqr(nominal.dynamics, nominal.cost, prior, epsilon, mean0, cov0), prior)
            actions, observations, value = self.rollout(start, nominal, solution.controller)
            # the linear model's prediction of the mean trajectory's cost decrease, against the simulator's
            def mean_cost(policy: LinearGaussian) -> Tensor:
                return expected_cost(nominal.dynamics, nominal.cost, policy._replace(cov=torch.zeros_like(policy.cov)), mean0, cov0)
            predicted, actual = mean_cost(prior) - mean_cost(solution.controller), value - nominal.value
            self._adapt(predicted, actual)
            predicted_total, actual_total = predicted_total + predicted.mean().item(), actual_total + actual.mean().item()
            # backtracking: an initial state whose controller lowers its return re-solves with half its bound
            for _ in range(self.backtracks):
                worse = value < nominal.value
                if not worse.any():
                    break
                epsilon = torch.where(worse, 0.5 * epsilon, epsilon)
                retry = solved_or_prior(kl_constrained_lqr(nominal.dynamics, nominal.cost, prior, epsilon, mean0, cov0), prior)
                retry_actions, retry_observations, retry_value = self.rollout(start, nominal, retry.controller)
                solution = _where(worse, retry, solution)
                actions, observations, value = _where(worse, (retry_actions, retry_observations, retry_value),
                                                      (actions, observations, value))
            # the rest keep the nominal trajectory: the policy's own actions, the linearized policy's covariance
            worse = value < nominal.value
            if worse.any():
                kept = ConstrainedSolution(prior, torch.full_like(solution.eta, 1e16), torch.zeros_like(solution.kl))  # eta -> inf
                solution = _where(worse, kept, solution)
                actions, observations, value = _where(worse, (nominal.actions, nominal.observations, nominal.value),
                                                      (actions, observations, value))
        quu = torch.cholesky_inverse(torch.linalg.cholesky(solution.controller.cov))  # Q_uu of the solved (η-scaled) LQR
        precision = quu / (torch.diagonal(quu, dim1=-2, dim2=-1).sum(-1).mean() / a_dim)
        batch = TensorDict({"observation": observations, "target_action": actions, "weight": precision}, batch_size=[n, t_len])
        stats = TensorDict({"value_policy": value_policy, "value_improved": value, "kl": solution.kl, "eta": solution.eta,
                            "kl_bound": epsilon, "quu_min_eig": torch.linalg.eigvalsh(quu).min(-1).values.min(-1).values},
                           batch_size=[n])
        scalars = {"kl_multiplier": self.kl_multiplier.item(), "linearizations": float(self.iterations), "state_dim": float(x_dim),
                   "predicted_improvement": predicted_total / self.iterations, "actual_improvement": actual_total / self.iterations,
                   "weight_ess": effective_sample_fraction(torch.diagonal(precision, dim1=-2, dim2=-1).sum(-1))}
        return TensorDict({"batch": batch, "stats": stats, **{k: torch.tensor(v) for k, v in scalars.items()}}, batch_size=[])

    def shrink_step(self) -> None:
        """The s-step could not follow this c-step (``GPSTrainer.regress``): halve the KL multiplier (kept in [0.1, 10])."""
        self.kl_multiplier.fill_(max(0.5 * self.kl_multiplier.item(), 0.1))

    def _adapt(self, predicted: Tensor, actual: Tensor) -> None:
        """MDGPS's step-size rule on the mean over initial states (predicted and actual cost decreases)."""
        predicted, actual = predicted.mean().item(), actual.mean().item()
        ratio = predicted / (2.0 * max(predicted - actual, 1e-12)) if predicted > 0 else 0.5
        factor = min(max(ratio, 0.5), 2.0)
        self.kl_multiplier.fill_(min(max(self.kl_multiplier.item() * factor, 0.1), 10.0))

    # ------------------------------------------------------------------ the s-step
    def forward(self, batch: TensorDictBase) -> TensorDict:
        """``loss_actor``: mean over samples of ½ (π(o) - u*)ᵀ W (π(o) - u*), W the controller's normalized precision."""
        predicted = self.actor(batch.select("observation").clone(False))["action"]
        error = (predicted - batch["target_action"]).unsqueeze(-1)
        weight = batch["weight"] if "weight" in batch.keys() else None
        quadratic = error.square().sum((-2, -1)) if weight is None else (error.transpose(-1, -2) @ weight @ error).flatten(-3).squeeze(-1)
        return TensorDict({"loss_actor": 0.5 * quadratic.mean()}, batch_size=[])


def solved_or_prior(solution: ConstrainedSolution, prior: LinearGaussian) -> ConstrainedSolution:
    """``solution`` [N], except where its KL is not finite: there the dual search found no η whose backward pass had a
    positive definite Q_uu at every step (seen in float32 on cable_payload2d/stop, a high-gain policy's prior whose
    Riccati recursion loses V_xx's positive semidefiniteness to round-off, at every η up to 1e16), and its controller
    is the failed pass's stand-in (gains of 1e33, then NaN actions); those initial states get the linearized policy
    itself, the η → ∞ end of the search (KL 0)."""
    failed = ~torch.isfinite(solution.kl)
    if not failed.any():
        return solution
    kept = ConstrainedSolution(prior, torch.full_like(solution.eta, 1e16), torch.zeros_like(solution.kl))
    return _where(failed, kept, solution)


def effective_sample_fraction(weights: Tensor) -> float:
    """(Σw)² / (n Σw²) of the n = ``weights.numel()`` sample weights (any shape, ≥ 0): 1 when they are equal, 1/n when
    one sample holds all the weight; the share of the regression's samples that effectively count."""
    weights = weights.flatten().double()
    return (weights.sum().square() / (weights.numel() * weights.square().sum())).item()


def _where(mask: Tensor, new, old):
    """Per initial state (``mask`` [N]), ``new`` where set, else ``old``: tensors [N, ...] or tuples of them, nested."""
    if isinstance(new, Tensor):
        return torch.where(mask.reshape(mask.shape + (1,) * (new.dim() - 1)), new, old)
    return type(new)(*(_where(mask, a, b) for a, b in zip(new, old))) if hasattr(new, "_fields") else \
        tuple(_where(mask, a, b) for a, b in zip(new, old))
