"""Time steppers: pure functions ``step(model, state, control, dt) -> ParticleState`` (``ParticleControl``).

Handles move kinematically with the commanded velocity (x_h += dt·u_h, v_h = u_h) under
both integrators; free particles follow Newton's second law with ``total_forces``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from tphys.autodiff import check_recompute, run_substeps
from tphys.particles.forces import potential_energy, total_forces
from tphys.particles.fused_step import fused_semi_implicit_euler
from tphys.particles.implicit import implicit_solve, warn_if_unconverged
from tphys.particles.model import ParticleControl, ParticleModel, ParticleState

# BDF coefficients (c0, c1, c2) of  v_{n+1} = (c0·x_{n+1} + c1·x_n + c2·x_{n-1}) / dt.
_BDF1 = (1.0, -1.0, 0.0)
_BDF2 = (1.5, -2.0, 0.5)


def handle_velocity_field(model: ParticleModel, handle_velocity: Tensor) -> Tensor:
    """[N, H, d] handle velocities -> [N, P, d], zero on the free particles."""
    return torch.einsum("hp,nhd->npd", model.handle_scatter, handle_velocity)


def semi_implicit_euler(model: ParticleModel, state: ParticleState, control: ParticleControl, dt: float, substeps: int = 1,
                        recompute="none", backend: str = "auto") -> ParticleState:
    """Symplectic Euler (v += h·a, then x += h·v) over ``substeps`` equal substeps of ``dt``, holding ``control``
    (handle velocities [N, H, d] m/s; muscle activations [N, T] or None).

    ``recompute`` ("none" | "step" | "substep", or True/False): what backward keeps, see ``tphys.autodiff``.
    ``backend`` ("auto" | "triton" | "cpu" | "torch", ``tphys.kernels``' vocabulary): "auto" runs the whole step as one
    fused C kernel where it serves the call (CPU float32/float64, no autograd needed, springs/cables/gravity/drag
    only: ``fused_step.reason_not_fused``), the torch ops below otherwise; "torch" forces the torch ops, "cpu" the
    kernel (an error where it cannot serve the call).
    """
    recompute = check_recompute(recompute)
    fused = fused_semi_implicit_euler(model, state, control, dt, substeps, backend)
    if fused is not None:
        return fused
    h = dt / substeps
    free = model.free_mask.unsqueeze(-1)
    impulse_per_force = h * free / model.mass.unsqueeze(-1)  # [P, 1] s/kg, zero on handles
    activation = control.activation

    def substep(k, carry):
        x, v = carry
        v = torch.addcmul(v, impulse_per_force, total_forces(model, x, v, fused=True, activation=activation))
        return x.add(v, alpha=h), v

    v = free * state.v + handle_velocity_field(model, control.velocities())
    x, v = run_substeps(substep, (state.x, v), substeps, recompute)
    return ParticleState(x, v, state.x, state.v, torch.ones_like(state.has_prev))


def default_tolerance(dtype: torch.dtype) -> float:
    """Newton tolerance on the BDF residual, in m/s."""
    return 1e-11 if dtype == torch.float64 else 1e-4


def bdf2(
    model: ParticleModel,
    state: ParticleState,
    control: ParticleControl,
    dt: float,
    tol: float | None = None,
    max_iter: int = 30,
    adjoint: bool = True,
) -> ParticleState:
    """Implicit BDF2 step (BDF1 = backward Euler for envs whose state has no history) under ``control``
    (handle velocities [N, H, d] m/s; muscle activations: not supported, must be None).

    Solves, for the free particles' next positions x,
        G(x) = c0·v(x) + c1·v_n + c2·v_{n-1} - dt·f(x, v(x)) / m = 0,
        v(x) = (c0·x + c1·x_n + c2·x_{n-1}) / dt,
    by Newton, and differentiates the solution by the adjoint (see ``implicit_solve``).
    Envs where Newton stalls (a buckling cloth) restart from a minimiser of the step's
    incremental potential (``_incremental_potential``).
    """
    if control.activation is not None:
        raise ValueError("bdf2 does not take muscle activations (use semi_implicit_euler)")
    tol = default_tolerance(state.x.dtype) if tol is None else tol
    num_envs, _, dim = state.x.shape
    has_prev = state.has_prev.unsqueeze(-1)
    coefficients = torch.where(
        has_prev,
        torch.tensor(_BDF2, dtype=state.x.dtype, device=state.x.device),
        torch.tensor(_BDF1, dtype=state.x.dtype, device=state.x.device),
    )  # [N, 3]
    handle_u = handle_velocity_field(model, control.velocities())
    leaves, spec = tree_flatten(model)
    tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]

    def rebuild(model_tensors):
        model_leaves = list(leaves)
        for slot, tensor in zip(tensor_slots, model_tensors):
            model_leaves[slot] = tensor
        return tree_unflatten(model_leaves, spec)

    def residual(y, x_n, v_n, x_p, v_p, u, c, *model_tensors):
        m = rebuild(model_tensors)
        x, v = _bdf_kinematics(m, y, x_n, x_p, u, c, dt)
        c0, c1, c2 = (c[:, k, None, None] for k in range(3))
        g = c0 * v + c1 * v_n + c2 * v_p - dt * total_forces(m, x, v) / m.mass.unsqueeze(-1)
        return torch.einsum("fp,npd->nfd", m.free_scatter, g).reshape(num_envs, -1)

    def energy(y, x_n, v_n, x_p, v_p, u, c, *model_tensors):
        m = rebuild(model_tensors)
        return _incremental_potential(m, *_bdf_kinematics(m, y, x_n, x_p, u, c, dt), v_n, v_p, c, dt)

    free_x = torch.einsum("fp,npd->nfd", model.free_scatter, state.x + dt * state.v).reshape(num_envs, -1)
    inputs = [state.x, state.v, state.x_prev, state.v_prev, handle_u, coefficients] + [leaves[i] for i in tensor_slots]
    solution, info = implicit_solve(residual, free_x, inputs, tol=tol, max_iter=max_iter, adjoint=adjoint, energy=energy)
    warn_if_unconverged(info, tol, "bdf2")
    x, v = _bdf_kinematics(model, solution, state.x, state.x_prev, handle_u, coefficients, dt)
    return ParticleState(x, v, state.x, state.v, torch.ones_like(state.has_prev))


def _incremental_potential(model, x, v, v_n, v_p, coefficients, dt):
    """E [N] in J whose gradient in the free positions is (m/dt)·G without the dissipative forces.

    E = sum_free m|v|²/2 + m(c1·v_n + c2·v_{n-1})·x/dt + drag·dt|v|²/(2c0) + U(x),
    with v = v(x) the BDF velocity and U the potential energy: the inertia, drag and
    conservative forces of G. Spring and contact damping and friction have no potential and
    are left out; they only shape where the restarted Newton iteration starts.
    """
    c0, c1, c2 = (coefficients[:, k, None] for k in range(3))
    speed2 = (v * v).sum(-1)  # [N, P]
    momentum = ((c1.unsqueeze(-1) * v_n + c2.unsqueeze(-1) * v_p) * x).sum(-1)
    per_particle = model.mass * (0.5 * speed2 + momentum / dt) + model.drag * dt * speed2 / (2 * c0)
    return (model.free_mask * per_particle).sum(-1) + potential_energy(model, x)


def _bdf_kinematics(model, free_positions, x_n, x_p, handle_u, coefficients, dt):
    """Assemble next positions/velocities [N, P, d] from the free particles' positions [N, F·d]."""
    num_envs, num_particles, dim = x_n.shape
    handle = (1.0 - model.free_mask).unsqueeze(-1)
    free_x = free_positions.reshape(num_envs, -1, dim)
    x = handle * (x_n + dt * handle_u) + torch.einsum("fp,nfd->npd", model.free_scatter, free_x)
    c0, c1, c2 = (coefficients[:, k, None, None] for k in range(3))
    v = (1.0 - handle) * (c0 * x + c1 * x_n + c2 * x_p) / dt + handle * handle_u
    return x, v
