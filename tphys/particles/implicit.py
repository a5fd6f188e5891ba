"""Newton solves of batched nonlinear systems, differentiated by the adjoint method.

``implicit_solve(residual, y0, inputs)`` finds y* with residual(y*, *inputs) = 0 for every
env of a batch (envs are independent: the Jacobian is block diagonal, one dense [D, D]
block per env). Its backward pass does not unroll the Newton iterations: by the implicit
function theorem, dL/dinputs = -lambdaᵀ ∂G/∂inputs with Jᵀ lambda = dL/dy*, one transposed
linear solve and one vector-Jacobian product of the residual at the solution.

Jacobians are dense, built row by row with reverse-mode AD (``torch.func.vjp``
vmapped over the D unit vectors) and factored with ``torch.linalg.solve``: O(N·D²) memory
and O(N·D³) time. That is the right tool up to D of a few hundred (every PODS task is
D <= 75); beyond that a sparse or matrix-free (CG) solve is needed.

Globalisation. Newton on G with a line search on |G| can stall at a local minimum of |G|
where G != 0 and the Jacobian is singular: a cloth buckling under compression has a
negative out-of-plane stiffness larger than the inertia term m·c0²/dt², so G has several
roots and |G| valleys between them. When the caller can supply an *energy* E(y) whose
gradient is a positive diagonal scaling of G's conservative part (the incremental potential
of an implicit step), envs that stall are restarted from a local minimiser of E found by
projected Newton (eigenvalues of the Hessian reflected to positive, Armijo steps on E),
which is a root of G's conservative part and a starting point from which Newton on the
full G converges. The solution is still a root of G, so the adjoint is unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

Residual = Callable[..., Tensor]
Energy = Callable[..., Tensor]  # E(y [N, D], *inputs) -> [N]


# A solve whose max |G| ends above UNCONVERGED x tol is unconverged (restarted, then warned
# about); between tol and that, Newton has reached G's round-off floor.
UNCONVERGED = 100.0


class NewtonInfo(NamedTuple):
    iterations: int  # accepted Newton updates
    residual: float  # max |G| at the returned solution


def batched_jacobian(fn: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """Jacobian blocks [N, D, D] of fn: [N, D] -> [N, D] whose envs are independent.

    Reverse mode (one forward pass, D vmapped vector-Jacobian products): unlike
    ``torch.func.jvp`` it also runs inside a ``torch.autograd.forward_ad`` dual level, which
    the forward-mode Gauss-Newton products of PODS open around the whole rollout.
    """
    dim = y.shape[-1]
    _, pullback = torch.func.vjp(fn, y)
    basis = torch.eye(dim, dtype=y.dtype, device=y.device).unsqueeze(1).expand(dim, y.shape[0], dim)
    rows = torch.func.vmap(lambda t: pullback(t)[0])(basis)  # [D_out, N, D_in]
    return rows.transpose(0, 1)


def minimize_energy(energy: Callable[[Tensor], Tensor], y0: Tensor, max_iter: int) -> Tensor:
    """A local minimiser [N, D] of energy: [N, D] -> [N] (envs independent) by projected Newton.

    Each step solves with |H| (the Hessian's eigenvalues reflected to positive and floored
    at 1e-8 of the largest), a descent direction even where H is indefinite, and backtracks
    per env until the Armijo condition holds. Stops when no env decreases E any further.
    """

    def gradient(y):
        return torch.func.grad(lambda z: energy(z).sum())(y)

    y = y0
    value = energy(y)
    for _ in range(max_iter):
        grad = gradient(y)
        hessian = batched_jacobian(gradient, y)
        eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (hessian + hessian.transpose(-1, -2)))
        magnitude = eigenvalues.abs()
        magnitude = torch.maximum(magnitude, 1e-8 * magnitude.amax(-1, keepdim=True))
        coefficients = (eigenvectors.transpose(-1, -2) @ grad.unsqueeze(-1)).squeeze(-1) / magnitude
        step = (eigenvectors @ coefficients.unsqueeze(-1)).squeeze(-1)
        slope = -(grad * step).sum(-1)  # directional derivative along -step, <= 0
        scale = torch.ones_like(value)
        for _ in range(40):
            trial = y - scale.unsqueeze(-1) * step
            trial_value = energy(trial)
            worse = ~(trial_value <= value + 1e-4 * scale * slope)
            if not worse.any():
                break
            scale = torch.where(worse, 0.5 * scale, scale)
        improved = ~worse & (trial_value < value)
        if not improved.any():
            break
        y = torch.where(improved.unsqueeze(-1), trial, y)
        value = torch.where(improved, trial_value, value)
    return y


def newton(fn: Callable[[Tensor], Tensor], y0: Tensor, tol: float, max_iter: int) -> tuple[Tensor, NewtonInfo]:
    """Newton from ``y0`` with a per-env backtracking line search on |fn(y)|.

    A step is halved (up to 30 times) for each env whose residual norm it does not reduce,
    so a cable going slack or a contact opening mid-step cannot make the iteration diverge.
    Stops when max |fn(y)| <= tol, after ``max_iter`` iterations, or when no env improves.
    """
    y = y0
    value = fn(y)
    norm = value.detach().norm(dim=-1)
    updates = 0
    for _ in range(max_iter):
        error = value.detach().abs().max().item() if value.numel() else 0.0
        if error <= tol:
            return y, NewtonInfo(updates, error)
        step = torch.linalg.solve(batched_jacobian(fn, y), value)
        scale = torch.ones_like(norm)
        for _ in range(30):
            trial = y - scale.unsqueeze(-1) * step
            trial_value = fn(trial)
            trial_norm = trial_value.detach().norm(dim=-1)
            worse = trial_norm > (1.0 - 1e-4 * scale) * norm
            if not worse.any():
                break
            scale = torch.where(worse, 0.5 * scale, scale)
        improved = ~worse
        if not improved.any():
            break  # no env can make progress
        updates += 1
        keep = improved.unsqueeze(-1)
        y = torch.where(keep, trial, y)
        value = torch.where(keep, trial_value, value)
        norm = torch.where(improved, trial_norm, norm)
    error = value.detach().abs().max().item() if value.numel() else 0.0
    return y, NewtonInfo(updates, error)


class _AdjointSolve(torch.autograd.Function):
    """Identity on the converged solution; derivatives by the implicit function theorem.

    Reverse mode (``backward``): one solve with Jᵀ. Forward mode (``jvp``, for the
    Gauss-Newton products of PODS): dy = -J⁻¹·(∂G/∂inputs · d inputs), one solve with J.
    """

    @staticmethod
    def forward(ctx, residual: Residual, solution: Tensor, *inputs: Tensor) -> Tensor:
        ctx.residual = residual
        ctx.save_for_backward(solution, *inputs)
        ctx.save_for_forward(solution, *inputs)
        return solution.clone()

    @staticmethod
    def jvp(ctx, _residual_tangent, _solution_tangent, *input_tangents):
        solution, *inputs = ctx.saved_tensors
        moving = [d is not None for d in input_tangents]
        constants = [t.detach() for t in inputs]
        with torch.enable_grad():
            # ∂G/∂inputs · tangents by the double-vjp trick (nested forward mode is unsupported):
            # u -> <(∂G/∂inputs)ᵀu, tangents> is linear in u and its gradient is the product.
            leaves = [t.requires_grad_(m) for t, m in zip(constants, moving)]
            value = ctx.residual(solution.detach(), *leaves)
            probe = torch.zeros_like(value, requires_grad=True)
            targets = [t for t, m in zip(leaves, moving) if m]
            pulled = torch.autograd.grad(value, targets, grad_outputs=probe, create_graph=True, allow_unused=True)
            tangents = [d for d in input_tangents if d is not None]
            inner = sum((p * d).sum() for p, d in zip(pulled, tangents) if p is not None)
            if not isinstance(inner, Tensor):  # no moving input reaches G
                return torch.zeros_like(solution)
            (moved,) = torch.autograd.grad(inner, probe)
            constants = [t.detach() for t in inputs]
            jacobian = batched_jacobian(lambda y: ctx.residual(y, *constants), solution.detach())
        return -torch.linalg.solve(jacobian, moved)

    @staticmethod
    def backward(ctx, grad_solution: Tensor):
        # Under create_graph the result stays differentiable w.r.t. grad_solution (it is linear
        # in it), which is what a Jacobian-vector product by the double-vjp trick needs; second
        # derivatives w.r.t. the inputs are not provided.
        solution, *inputs = ctx.saved_tensors
        wanted = ctx.needs_input_grad[2:]
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            constants = [t.detach() for t in inputs]
            jacobian = batched_jacobian(lambda y: ctx.residual(y, *constants), solution.detach()).detach()
            adjoint = torch.linalg.solve(jacobian.transpose(-1, -2), grad_solution)
            leaves = [t.detach().requires_grad_(w) for t, w in zip(inputs, wanted)]
            value = ctx.residual(solution.detach(), *leaves)
            targets = [t for t, w in zip(leaves, wanted) if w]
            grads = iter(torch.autograd.grad(value, targets, grad_outputs=-adjoint, allow_unused=True, create_graph=create_graph))
        return (None, None, *[next(grads) if w else None for w in wanted])


def globalized_newton(
    fn: Callable[[Tensor], Tensor],
    y0: Tensor,
    tol: float,
    max_iter: int,
    energy: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, NewtonInfo]:
    """``newton``, and for the envs it leaves above ``tol``: Newton again from a minimiser of ``energy``.

    With an energy, the first attempt gets a third of ``max_iter``: Newton that has not
    converged by then is in a |G| valley far more often than it is about to converge.
    """
    if energy is None:
        return newton(fn, y0, tol, max_iter)
    y, info = newton(fn, y0, tol, max(max_iter // 3, 1))
    if info.residual <= UNCONVERGED * tol:
        return y, info
    stalled = (fn(y).detach().abs().amax(-1) > UNCONVERGED * tol).unsqueeze(-1)
    restart = minimize_energy(energy, y0, max_iter).detach()  # the start carries no gradient
    retried, retry_info = newton(fn, torch.where(stalled, restart, y), tol, max_iter)
    y = torch.where(stalled, retried, y)
    error = fn(y).detach().abs().max().item()
    return y, NewtonInfo(info.iterations + retry_info.iterations, error)


def implicit_solve(
    residual: Residual,
    y0: Tensor,
    inputs: Sequence[Tensor],
    tol: float,
    max_iter: int = 30,
    adjoint: bool = True,
    energy: Energy | None = None,
) -> tuple[Tensor, NewtonInfo]:
    """Solve residual(y, *inputs) = 0 for y [N, D] by Newton from ``y0``.

    Args:
        residual: G(y, *inputs) -> [N, D]; env n of G depends on env n of y only.
        y0: [N, D] initial guess (no gradient flows through it).
        inputs: tensors G depends on; gradients flow to those that require grad.
        tol: convergence threshold on max |G|, in G's units.
        max_iter: Newton iterations at most.
        adjoint: True differentiates by the implicit function theorem (one solve in
            backward); False unrolls the Newton iterations in autograd (for testing).
        energy: optional E(y, *inputs) -> [N] whose y-gradient is a positive diagonal
            scaling of G's conservative part; envs where Newton stalls restart from a
            local minimiser of E (see the module docstring).
    """
    if not adjoint:
        fallback = None if energy is None else (lambda y: energy(y, *inputs))
        return globalized_newton(lambda y: residual(y, *inputs), y0.detach(), tol, max_iter, fallback)
    with torch.no_grad():
        constants = [t.detach() for t in inputs]
        fallback = None if energy is None else (lambda y: energy(y, *constants))
        solution, info = globalized_newton(lambda y: residual(y, *constants), y0.detach(), tol, max_iter, fallback)
    reverse = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    forward = any(fwAD.unpack_dual(t).tangent is not None for t in inputs)
    if reverse or forward:
        solution = _AdjointSolve.apply(residual, solution, *inputs)
    return solution, info


def warn_if_unconverged(info: NewtonInfo, tol: float, where: str) -> None:
    if info.residual > UNCONVERGED * tol:
        warnings.warn(
            f"{where}: Newton stopped after {info.iterations} iterations with residual {info.residual:.3e} "
            f"(tolerance {tol:.1e}); reduce dt or stiffness, or raise max_iter",
            RuntimeWarning,
            stacklevel=3,
        )
