"""The KL-constrained LQR of GPS's c-step against direct computations (float64, random small systems)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.objectives.lqr import (
    LinearDynamics,
    LinearGaussian,
    QuadraticCost,
    backward_pass,
    kl_constrained_lqr,
    kl_divergence,
    negative_log_likelihood,
    state_moments,
)
from rl.objectives.lqr import (
    expected_cost as model_expected_cost,
)

D = torch.float64


def random_problem(seed: int, n=2, horizon=4, x_dim=3, u_dim=2):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(x_dim, dtype=D) + 0.3 * torch.randn(n, horizon, x_dim, x_dim, generator=g, dtype=D)
    B = torch.randn(n, horizon, x_dim, u_dim, generator=g, dtype=D)
    M = torch.randn(n, horizon, x_dim + u_dim, x_dim + u_dim, generator=g, dtype=D)
    C = M @ M.transpose(-1, -2) / (x_dim + u_dim) + 0.1 * torch.eye(x_dim + u_dim, dtype=D)  # positive definite
    c = torch.randn(n, horizon, x_dim + u_dim, generator=g, dtype=D)
    S = torch.randn(n, horizon, u_dim, u_dim, generator=g, dtype=D)
    prior = LinearGaussian(0.3 * torch.randn(n, horizon, u_dim, x_dim, generator=g, dtype=D),
                           0.5 * torch.randn(n, horizon, u_dim, generator=g, dtype=D),
                           S @ S.transpose(-1, -2) + 0.5 * torch.eye(u_dim, dtype=D))
    mean0 = torch.randn(n, x_dim, generator=g, dtype=D)
    L = torch.randn(n, x_dim, x_dim, generator=g, dtype=D)
    return LinearDynamics(A, B), QuadraticCost(0.5 * (C + C.transpose(-1, -2)), c), prior, mean0, 0.1 * L @ L.transpose(-1, -2)


def open_loop_cost(dynamics, cost, x0, u):
    """Σ_t ½ zᵀCz + zᵀc along δx_{t+1} = Aδx + Bδu from x0 [X] with controls u [T, U] (condition 0)."""
    A, B = dynamics
    x, total = x0, 0.0
    for t in range(A.shape[1]):
        z = torch.cat([x, u[t]])
        total = total + 0.5 * z @ cost.C[0, t] @ z + z @ cost.c[0, t]
        x = A[0, t] @ x + B[0, t] @ u[t]
    return total


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_backward_pass_mean_is_the_optimal_open_loop_plan(seed):
    dynamics, cost, _, mean0, _ = random_problem(seed)
    controller, ok = backward_pass(dynamics, cost)
    assert ok.all()
    # the controller's mean actions from x0 minimize the (strictly convex) quadratic cost over open-loop plans
    x, plan = mean0[0], []
    for t in range(dynamics.A.shape[1]):
        plan.append(controller.K[0, t] @ x + controller.k[0, t])
        x = dynamics.A[0, t] @ x + dynamics.B[0, t] @ plan[-1]
    plan = torch.stack(plan).requires_grad_(True)
    (grad,) = torch.autograd.grad(open_loop_cost(dynamics, cost, mean0[0], plan), plan)
    assert grad.abs().max() < 1e-9
    hessian = torch.autograd.functional.hessian(lambda u: open_loop_cost(dynamics, cost, mean0[0], u), plan.detach())
    assert torch.linalg.eigvalsh(hessian.reshape(plan.numel(), -1)).min() > 0  # a minimum, not a saddle
    # the covariance is Q_uu⁻¹ of the last step, where the cost-to-go is the step cost alone
    Cuu = cost.C[:, -1, 3:, 3:]
    assert torch.allclose(controller.cov[:, -1], torch.linalg.inv(Cuu), atol=1e-12)


def gaussian_kl(mean_p, cov_p, mean_q, cov_q):
    d = mean_p.shape[-1]
    iq = torch.linalg.inv(cov_q)
    diff = mean_q - mean_p
    return 0.5 * (torch.trace(iq @ cov_p) - d + diff @ iq @ diff + torch.logdet(cov_q) - torch.logdet(cov_p))


def joint(policy, t, mean, cov):
    """Mean and covariance of (δx, δu) with δx ~ N(mean, cov) and δu | δx ~ policy_t (condition 0)."""
    K, k, S = policy.K[0, t], policy.k[0, t], policy.cov[0, t]
    m = torch.cat([mean, K @ mean + k])
    top = torch.cat([cov, cov @ K.T], 1)
    bottom = torch.cat([K @ cov, K @ cov @ K.T + S], 1)
    return m, torch.cat([top, bottom], 0)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_kl_divergence_is_the_kl_of_the_joint_gaussians(seed):
    dynamics, cost, prior, mean0, cov0 = random_problem(seed)
    # The reference inverts each joint covariance and subtracts log-determinants, so it inherits cov0's condition number:
    # a random 0.1·L·Lᵀ reached 2e11 at seed 10, where the reference's float64 round-off alone was 5e-8 of the KL (past
    # rtol 1e-9). A floor on cov0's eigenvalues keeps the reference exact to rtol; the identity does not depend on it.
    cov0 = cov0 + 0.05 * torch.eye(cov0.shape[-1], dtype=cov0.dtype)
    controller, _ = backward_pass(dynamics, cost + negative_log_likelihood(prior))
    mean, cov = state_moments(dynamics, controller, mean0, cov0)
    expected = sum(gaussian_kl(*joint(controller, t, mean[0, t], cov[0, t]), *joint(prior, t, mean[0, t], cov[0, t]))
                   for t in range(mean.shape[1]))
    assert torch.allclose(kl_divergence(controller, prior, mean, cov)[0], expected, rtol=1e-9)


def test_state_moments_propagate_the_closed_loop():
    dynamics, cost, prior, mean0, cov0 = random_problem(3)
    mean, cov = state_moments(dynamics, prior, mean0, cov0)
    A, B, K, k, S = dynamics.A[0, 0], dynamics.B[0, 0], prior.K[0, 0], prior.k[0, 0], prior.cov[0, 0]
    assert torch.allclose(mean[0, 1], (A + B @ K) @ mean0[0] + B @ k)
    assert torch.allclose(cov[0, 1], (A + B @ K) @ cov0[0] @ (A + B @ K).T + B @ S @ B.T)


def expected_cost(dynamics, cost, controller, mean0, cov0):
    """E[Σ_t ½ zᵀCz + zᵀc] under the controller's closed loop (exact for Gaussians)."""
    mean, cov = state_moments(dynamics, controller, mean0, cov0)
    total = torch.zeros(mean.shape[0], dtype=D)
    for t in range(mean.shape[1]):
        for i in range(mean.shape[0]):
            m, S = joint(LinearGaussian(*(p[i:i + 1] for p in controller)), t, mean[i, t], cov[i, t])
            total[i] += 0.5 * (m @ cost.C[i, t] @ m + torch.trace(cost.C[i, t] @ S)) + m @ cost.c[i, t]
    return total


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.05, 0.5, 2.0]))
def test_the_bound_holds_at_the_multiplier_found_and_is_active(seed, epsilon):
    dynamics, cost, prior, mean0, cov0 = random_problem(seed)
    solution = kl_constrained_lqr(dynamics, cost, prior, epsilon, mean0, cov0)
    kl_prior = kl_divergence(prior, prior, *state_moments(dynamics, prior, mean0, cov0))
    assert torch.allclose(kl_prior, torch.zeros_like(kl_prior), atol=1e-10)
    assert (solution.kl <= epsilon * (1 + 1e-6)).all()
    # active: the smallest feasible η puts the KL on the bound, unless η sits at its lower end
    active = solution.eta > 1e-7
    assert torch.allclose(solution.kl[active], torch.full_like(solution.kl[active], epsilon), rtol=1e-3)
    # and it lowers the expected cost below the prior's (the prior is feasible with KL 0)
    assert (expected_cost(dynamics, cost, solution.controller, mean0, cov0)
            <= expected_cost(dynamics, cost, prior, mean0, cov0) + 1e-9).all()


def test_larger_bounds_buy_lower_costs():
    dynamics, cost, prior, mean0, cov0 = random_problem(11)
    costs = [expected_cost(dynamics, cost, kl_constrained_lqr(dynamics, cost, prior, eps, mean0, cov0).controller, mean0, cov0)
             for eps in (0.01, 0.1, 1.0, 10.0)]
    for tighter, looser in zip(costs, costs[1:]):
        assert (looser <= tighter + 1e-9).all()
    assert (costs[-1] < costs[0] - 1e-3).all()


def test_a_failed_backward_pass_is_flagged_not_propagated():
    dynamics, cost, prior, mean0, cov0 = random_problem(5)
    C = cost.C.clone()
    C[1, :, 3:, 3:] = -torch.eye(2, dtype=D)  # concave in the actions for condition 1
    controller, ok = backward_pass(dynamics, QuadraticCost(C, cost.c))
    assert ok.tolist() == [True, False]
    assert torch.isfinite(controller.K[0]).all()
    # under the KL bound the prior's curvature makes a large enough η feasible again
    solution = kl_constrained_lqr(dynamics, QuadraticCost(C, cost.c), prior, 0.5, mean0, cov0)
    assert torch.isfinite(solution.kl).all() and (solution.kl <= 0.5 * (1 + 1e-6)).all()
    assert math.isfinite(solution.eta[1].item()) and solution.eta[1] > 1e-8


def test_expected_cost_matches_the_step_by_step_moments():
    dynamics, cost, prior, mean0, cov0 = random_problem(17)
    controller, _ = backward_pass(dynamics, cost + negative_log_likelihood(prior))
    for policy in (prior, controller):
        assert torch.allclose(model_expected_cost(dynamics, cost, policy, mean0, cov0),
                              expected_cost(dynamics, cost, policy, mean0, cov0), rtol=1e-10)
