"""MLS-MPM time stepping (Hu et al. 2018): pure functions of (model, state).

One substep: return mapping of the trial F and Kirchhoff stress τ (one SVD) -> P2G of mass,
momentum and the MLS affine term A = -dt·V·(4/dx²)·τ + m·C onto the grid window of the particles ->
grid update (gravity, colliders, walls) -> G2P of v and C -> x += dt·v, F_trial <- (I + dt·C)·F.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from tphys.kernels import g2p, p2g
from tphys.kernels.transfer_cpu import matmul3
from tphys.mpm.grid import grid_velocity, window
from tphys.mpm.materials import elastic_stress
from tphys.mpm.model import MPMModel, MPMState


def substep(model: MPMModel, state: MPMState, backend: str = "auto", colliders: tuple | None = None) -> MPMState:
    """One MLS-MPM substep of ``model.dt`` seconds; ``backend`` picks the transfer kernels (see ``tphys.kernels``);
    ``colliders``: None or (shapes, position, rotation, position_next, rotation_next), see ``grid.grid_velocity``."""
    x, v, c, f_trial = state
    n = x.shape[0]
    mass = model.particle_mass.expand(n, -1)
    f, stress = elastic_stress(model.material, f_trial)
    affine = (-model.dt * 4 / model.dx**2) * model.particle_volume[:, None, None] * stress + mass[..., None, None] * c
    origin, shape = window(model, x)
    local = x - (origin.to(x.dtype) * model.dx).unsqueeze(1)  # positions in the window's frame
    grid_mass, grid_momentum = p2g(local, mass, mass.unsqueeze(-1) * v, affine, shape, model.dx, backend=backend)
    v, c = g2p(local, grid_velocity(model, grid_mass, grid_momentum, colliders, origin), model.dx, backend=backend)
    return MPMState(x + model.dt * v, v, c, matmul3(torch.eye(3, dtype=x.dtype, device=x.device) + model.dt * c, f))


RECOMPUTE = (False, True, "step", "substep")


class _Recompute(torch.autograd.Function):
    """Runs ``run(*inputs)`` without a graph; backward reruns it with one and differentiates that (inputs only:
    model tensors get no gradient). Unlike torch's non-reentrant checkpoint, checkpoints nested inside ``run``
    then keep only their own inputs during the rerun."""

    @staticmethod
    def forward(ctx, run, *inputs):
        ctx.run = run
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return run(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            outputs = ctx.run(*inputs)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) if pairs and wanted
                     else [None] * len(wanted))
        return (None, *(next(found) if t.requires_grad else None for t in inputs))


def step(model: MPMModel, state: MPMState, substeps: int, recompute: bool | str = True, backend: str = "auto",
         shapes=None, poses=None, controls: tuple = ()) -> MPMState:
    """``substeps`` substeps, with kinematic collider ``shapes`` (``colliders.Shapes`` or None) at ``poses``: a function
    (t, *controls) -> (position [N, S, 3], rotation [N, S, 3, 3]) of the shapes at the fraction t in [0, 1] of this
    call (each pose is evaluated once, and a substep moves the shapes from one to the next); ``controls``: the tensors
    it reads (e.g. joint targets), passed here so that they get gradients.

    ``recompute`` trades time for memory in backward:
        False       autograd keeps every substep's intermediates;
        "substep"   keeps each substep's input and reruns that substep in backward (one extra forward);
        True/"step" keeps only this call's inputs; backward reruns the substeps, each recomputed again in
                    turn, so memory grows with calls (env steps), not substeps (two extra forwards). Model
                    tensors get no gradient in this mode.
    """
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    count, posed = len(state), 0 if shapes is None else 2  # state tensors, then the shapes' current pose

    def one(k, *tensors):
        s, pose, control = MPMState(*tensors[:count]), tensors[count:count + posed], tensors[count + posed:]
        if shapes is None:
            return (*substep(model, s, backend), *control)
        following = poses((k + 1) / substeps, *control)
        return (*substep(model, s, backend, (shapes, *pose, *following)), *following, *control)

    def run(*tensors):
        per_substep = bool(recompute) and torch.is_grad_enabled()
        if shapes is not None:
            tensors = (*tensors[:count], *poses(0.0, *tensors[count:]), *tensors[count:])
        for k in range(substeps):
            tensors = checkpoint(one, k, *tensors, use_reentrant=False) if per_substep else one(k, *tensors)
        return tensors[:count]

    if recompute in (True, "step") and torch.is_grad_enabled():
        return MPMState(*_Recompute.apply(run, *state, *controls))
    return MPMState(*run(*state, *controls))
