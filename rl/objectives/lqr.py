"""Time-varying linear-Gaussian controllers under a KL bound: the c-step of mirror-descent GPS.

Montgomery & Levine (2016), "Guided policy search via approximate mirror descent", section 3, with
the true (simulator) dynamics linearized by autograd as the PODS paper ran it. Everything is in
deviation coordinates around a nominal trajectory (x̂_t, û_t) and batched over N initial states
(conditions), T steps, X state and U action dimensions:

    dynamics     δx_{t+1} = A_t δx_t + B_t δu_t                       A [N, T, X, X], B [N, T, X, U]
    cost         c_t ≈ ½ zᵀ C_t z + zᵀ c_t,  z = [δx; δu]              C [N, T, X+U, X+U], c [N, T, X+U]
    controller   p(δu | δx) = N(K_t δx + k_t, Σ_t)                     K [N, T, U, X], k [N, T, U], Σ [N, T, U, U]

``kl_constrained_lqr`` solves  min_p E_p[Σ_t c_t]  s.t.  Σ_t E_x KL(p_t(·|x) ‖ π̄_t(·|x)) ≤ ε  for a
linear-Gaussian policy π̄ (the neural policy linearized at the nominal states): the Lagrangian divided
by the multiplier η is the maximum-entropy LQR of the cost c/η - log π̄ (``backward_pass``), whose
optimum is Gaussian with covariance Q_uu⁻¹; η is found per condition by bisection on log η (the KL
falls monotonically as η grows: η → ∞ returns π̄ itself).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class LinearDynamics(NamedTuple):
    """δx_{t+1} = A δx_t + B δu_t: A [N, T, X, X], B [N, T, X, U]."""

    A: Tensor
    B: Tensor


class QuadraticCost(NamedTuple):
    """Per-step cost ½ zᵀ C z + zᵀ c of z = [δx; δu]: C [N, T, X+U, X+U] (symmetric), c [N, T, X+U]."""

    C: Tensor
    c: Tensor

    def __add__(self, other: QuadraticCost) -> QuadraticCost:  # type: ignore[override]
        return QuadraticCost(self.C + other.C, self.c + other.c)

    def scaled(self, factor: Tensor) -> QuadraticCost:
        """The cost times ``factor`` [N] (one per condition)."""
        return QuadraticCost(self.C * factor[:, None, None, None], self.c * factor[:, None, None])


class LinearGaussian(NamedTuple):
    """p(δu_t | δx_t) = N(K_t δx_t + k_t, cov_t): K [N, T, U, X], k [N, T, U], cov [N, T, U, U]."""

    K: Tensor
    k: Tensor
    cov: Tensor


def _sym(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


def negative_log_likelihood(policy: LinearGaussian) -> QuadraticCost:
    """-log π(δu | δx) of a linear-Gaussian ``policy`` as a quadratic cost of z = [δx; δu] (constants dropped).

    With P = Σ⁻¹ and r = δu - K δx - k:  ½ rᵀ P r  =  ½ zᵀ [[KᵀPK, -KᵀP], [-PK, P]] z + zᵀ [KᵀPk; -Pk] + const.
    """
    precision = torch.cholesky_inverse(torch.linalg.cholesky(policy.cov))
    KtP = policy.K.transpose(-1, -2) @ precision
    top = torch.cat([KtP @ policy.K, -KtP], -1)
    bottom = torch.cat([-precision @ policy.K, precision], -1)
    Pk = (precision @ policy.k.unsqueeze(-1)).squeeze(-1)
    vector = torch.cat([(KtP @ policy.k.unsqueeze(-1)).squeeze(-1), -Pk], -1)
    return QuadraticCost(_sym(torch.cat([top, bottom], -2)), vector)


def backward_pass(dynamics: LinearDynamics, cost: QuadraticCost) -> tuple[LinearGaussian, Tensor]:
    """The maximum-entropy LQR of ``cost``: p(δu|δx) ∝ exp(-Q_t(δx, δu)), Q the cost-to-go.

    Returns the controller (K = -Q_uu⁻¹Q_ux, k = -Q_uu⁻¹q_u, cov = Q_uu⁻¹) and ``ok`` [N] bool: False
    for the conditions where some Q_uu was not positive definite (their controller is meaningless).
    """
    A, B = dynamics
    n, horizon, x_dim, _ = A.shape
    u_dim = B.shape[-1]
    F = torch.cat([A, B], -1)  # [N, T, X, X+U]
    Vxx = A.new_zeros(n, x_dim, x_dim)
    vx = A.new_zeros(n, x_dim)
    ok = torch.ones(n, dtype=torch.bool, device=A.device)
    K, k, cov = (A.new_zeros(n, horizon, u_dim, x_dim), A.new_zeros(n, horizon, u_dim),
                 A.new_zeros(n, horizon, u_dim, u_dim))
    eye = torch.eye(u_dim, dtype=A.dtype, device=A.device)
    for t in reversed(range(horizon)):
        Ft = F[:, t]
        Q = _sym(cost.C[:, t] + Ft.transpose(-1, -2) @ Vxx @ Ft)
        q = cost.c[:, t] + (Ft.transpose(-1, -2) @ vx.unsqueeze(-1)).squeeze(-1)
        Quu, Qux, qu = Q[:, x_dim:, x_dim:], Q[:, x_dim:, :x_dim], q[:, x_dim:]
        L, info = torch.linalg.cholesky_ex(Quu)
        bad = info != 0
        if bad.any():  # keep the batch going: a stand-in factor for the failed conditions
            ok &= ~bad
            L = torch.where(bad[:, None, None], eye.expand_as(L), L)
        K[:, t] = -torch.cholesky_solve(Qux, L)
        k[:, t] = -torch.cholesky_solve(qu.unsqueeze(-1), L).squeeze(-1)
        cov[:, t] = torch.cholesky_inverse(L)
        Qxu = Qux.transpose(-1, -2)
        Vxx = _sym(Q[:, :x_dim, :x_dim] + Qxu @ K[:, t])
        vx = q[:, :x_dim] + (Qxu @ k[:, t].unsqueeze(-1)).squeeze(-1)
    return LinearGaussian(K, k, _sym(cov)), ok


def state_moments(dynamics: LinearDynamics, controller: LinearGaussian, mean0: Tensor,
                  cov0: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [N, T, X] and covariance [N, T, X, X] of δx_t under ``controller`` from δx_0 ~ N(mean0 [N, X], cov0 [N, X, X])."""
    A, B = dynamics
    means, covs = [], []
    mean, cov = mean0, cov0
    for t in range(A.shape[1]):
        means.append(mean)
        covs.append(cov)
        closed = A[:, t] + B[:, t] @ controller.K[:, t]
        mean = (closed @ mean.unsqueeze(-1)).squeeze(-1) + (B[:, t] @ controller.k[:, t].unsqueeze(-1)).squeeze(-1)
        cov = _sym(closed @ cov @ closed.transpose(-1, -2) + B[:, t] @ controller.cov[:, t] @ B[:, t].transpose(-1, -2))
    return torch.stack(means, 1), torch.stack(covs, 1)


def kl_divergence(p: LinearGaussian, prior: LinearGaussian, mean: Tensor, cov: Tensor) -> Tensor:
    """[N]: Σ_t E_{δx ~ N(mean_t, cov_t)} KL(p_t(·|δx) ‖ prior_t(·|δx)), the state moments from ``state_moments``.

    Per step: ½ [tr(P̄Σ) - U + log|Σ̄|/|Σ| + mᵀP̄m + tr(ΔKᵀP̄ΔK cov)] with ΔK = K - K̄, m = ΔK mean + k - k̄.
    """
    L_prior = torch.linalg.cholesky(prior.cov)
    precision = torch.cholesky_inverse(L_prior)
    logdet_prior = 2.0 * torch.diagonal(L_prior, dim1=-2, dim2=-1).log().sum(-1)
    logdet = torch.linalg.slogdet(p.cov)[1]
    dK = p.K - prior.K
    m = (dK @ mean.unsqueeze(-1)).squeeze(-1) + p.k - prior.k
    quad = (m.unsqueeze(-2) @ precision @ m.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    spread = torch.diagonal(dK.transpose(-1, -2) @ precision @ dK @ cov, dim1=-2, dim2=-1).sum(-1)
    trace = torch.diagonal(precision @ p.cov, dim1=-2, dim2=-1).sum(-1)
    per_step = 0.5 * (trace - p.cov.shape[-1] + logdet_prior - logdet + quad + spread)
    return per_step.sum(-1)


class ConstrainedSolution(NamedTuple):
    """``kl_constrained_lqr``'s answer: the controller, its multiplier ``eta`` [N] and its ``kl`` [N] to the prior."""

    controller: LinearGaussian
    eta: Tensor
    kl: Tensor


def kl_constrained_lqr(dynamics: LinearDynamics, cost: QuadraticCost, prior: LinearGaussian, epsilon: Tensor | float,
                       mean0: Tensor, cov0: Tensor, eta_range: tuple[float, float] = (1e-8, 1e16),
                       iterations: int = 30) -> ConstrainedSolution:
    """The controller minimizing the expected ``cost`` with at most ``epsilon`` [N] (or a float) of summed KL to ``prior``.

    Bisection on log η per condition between ``eta_range``: an η whose backward pass fails or whose KL exceeds
    ε is too small. Returns the smallest feasible η found (KL ≤ ε up to the bisection's resolution, a
    factor ``(hi/lo)^(2^-iterations)`` in η), or ``eta_range[0]`` where even that satisfies the bound.
    """
    n, dtype, device = cost.C.shape[0], cost.C.dtype, cost.C.device
    epsilon = torch.as_tensor(epsilon, dtype=dtype, device=device).expand(n)
    prior_cost = negative_log_likelihood(prior)

    def solve(eta: Tensor) -> tuple[LinearGaussian, Tensor]:
        controller, ok = backward_pass(dynamics, cost.scaled(1.0 / eta) + prior_cost)
        kl = torch.full((n,), math.inf, dtype=dtype, device=device)
        if ok.any():
            safe = LinearGaussian(*(torch.where(_expand(ok, t), t, p) for t, p in zip(controller, prior)))
            kl = torch.where(ok, kl_divergence(safe, prior, *state_moments(dynamics, safe, mean0, cov0)), kl)
        return controller, kl

    log_lo = torch.full((n,), math.log(eta_range[0]), dtype=dtype, device=device)
    log_hi = torch.full((n,), math.log(eta_range[1]), dtype=dtype, device=device)
    controller, kl = solve(log_lo.exp())
    feasible_at_lo = kl <= epsilon
    for _ in range(iterations):
        mid = 0.5 * (log_lo + log_hi)
        _, kl_mid = solve(mid.exp())
        too_far = ~(kl_mid <= epsilon)
        log_lo = torch.where(too_far, mid, log_lo)
        log_hi = torch.where(too_far, log_hi, mid)
    eta = torch.where(feasible_at_lo, torch.full_like(log_hi, eta_range[0]), log_hi.exp())
    controller, kl = solve(eta)
    return ConstrainedSolution(controller, eta, kl)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - 1))


def expected_cost(dynamics: LinearDynamics, cost: QuadraticCost, controller: LinearGaussian, mean0: Tensor,
                  cov0: Tensor) -> Tensor:
    """[N]: E[Σ_t ½ zᵀC_t z + zᵀc_t] under ``controller``'s closed loop on the linear ``dynamics`` (exact for Gaussians).

    z_t = [δx_t; δu_t] has mean [μ_t; Kμ_t + k] and covariance [[S, SKᵀ], [KS, KSKᵀ + Σ]] (S from ``state_moments``).
    """
    mean, cov = state_moments(dynamics, controller, mean0, cov0)
    K, k, action_cov = controller
    KS = K @ cov
    z_mean = torch.cat([mean, (K @ mean.unsqueeze(-1)).squeeze(-1) + k], -1)
    z_cov = torch.cat([torch.cat([cov, KS.transpose(-1, -2)], -1), torch.cat([KS, KS @ K.transpose(-1, -2) + action_cov], -1)], -2)
    quad = (z_mean.unsqueeze(-2) @ cost.C @ z_mean.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    spread = torch.diagonal(cost.C @ z_cov, dim1=-2, dim2=-1).sum(-1)
    return (0.5 * (quad + spread) + (cost.c * z_mean).sum(-1)).sum(-1)
