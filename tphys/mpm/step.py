"""MLS-MPM time stepping (Hu et al. 2018): pure functions of (model, state), and the engine step
``step(model, state, control, dt) -> MPMState`` as in every tphys engine.

One substep: return mapping of the trial F and Kirchhoff stress τ (one SVD) -> P2G of mass,
momentum and the MLS affine term A = -dt·V·(4/dx²)·τ + m·C onto the grid window of the particles ->
grid update (gravity, colliders, walls) -> G2P of v and C -> x += dt·v, F_trial <- (I + dt·C)·F.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.autodiff import check_recompute, run_substeps
from tphys.kernels import g2p, matmul3, p2g
from tphys.mpm.colliders import Shapes
from tphys.mpm.grid import grid_velocity, window
from tphys.mpm.materials import elastic_stress
from tphys.mpm.model import MPMModel, MPMState


class MPMControl(NamedTuple):
    """What drives the material during a frame: kinematic colliders (none by default).

    Attributes:
        shapes: the collider shapes (``colliders.Shapes``), or None.
        poses: ``(t, *inputs) -> (position [N, S, 3] m, rotation [N, S, 3, 3])`` of the shapes at the fraction
            t in [0, 1] of the frame (a float); with ``batched``, t is a [T] tensor of fractions and the poses come
            back as [T, N, S, 3] / [T, N, S, 3, 3] (one call for every substep boundary of the frame: a hand's
            kinematics is one batched evaluation, not K + 1 small ones). A function of ``inputs`` (not a table of
            poses) so that the "step" recompute mode keeps only the inputs and rebuilds the poses in backward.
        inputs: the tensors ``poses`` reads (e.g. joint positions and their motion over the frame); they get
            gradients.
        batched: whether ``poses`` takes a [T] tensor of fractions (see ``poses``).
    """

    shapes: Shapes | None = None
    poses: Callable | None = None
    inputs: tuple[Tensor, ...] = ()
    batched: bool = False


def substep(model: MPMModel, state: MPMState, backend: str = "auto", colliders: tuple | None = None) -> MPMState:
    """One MLS-MPM substep of ``model.dt`` seconds; ``backend`` picks every kernel: transfers, SVD, 3x3 products,
    stresses (see ``tphys.kernels``); ``colliders``: None or (shapes, position, rotation, position_next,
    rotation_next), see ``grid.grid_velocity``."""
    x, v, c, f_trial = state
    n = x.shape[0]
    mass = model.particle_mass.expand(n, -1)
    f, stress = elastic_stress(model.material, f_trial, backend=backend)
    affine = (-model.dt * 4 / model.dx**2) * model.particle_volume[:, None, None] * stress + mass[..., None, None] * c
    origin, shape = window(model, x)
    local = x - (origin.to(x.dtype) * model.dx).unsqueeze(1)  # positions in the window's frame
    grid_mass, grid_momentum = p2g(local, mass, mass.unsqueeze(-1) * v, affine, shape, model.dx, backend=backend)
    v, c = g2p(local, grid_velocity(model, grid_mass, grid_momentum, colliders, origin, backend), model.dx, backend=backend)
    return MPMState(x + model.dt * v, v, c, matmul3(torch.eye(3, dtype=x.dtype, device=x.device) + model.dt * c, f, backend))


def fractions(substeps: int) -> list[float]:
    """The K + 1 substep boundaries k/K, k = 0..K, of a frame of K = ``substeps`` substeps, as fractions of the frame."""
    return [k / substeps for k in range(substeps + 1)]


def pose_table(control: MPMControl, substeps: int) -> tuple[Tensor, ...]:
    """(position [K + 1, N, S, 3], rotation [K + 1, N, S, 3, 3]) of ``control``'s shapes at every substep boundary k/K,
    from one call of ``control.poses`` where it is ``batched``, else one call per boundary; () without shapes."""
    shapes, poses, inputs, batched = control
    if shapes is None:
        return ()
    times = fractions(substeps)
    if batched:
        like = next((t for t in inputs if t.is_floating_point()), shapes.sizes)
        return tuple(poses(torch.tensor(times, dtype=torch.float64).to(like), *inputs))
    position, rotation = zip(*(poses(t, *inputs) for t in times))
    return torch.stack(position), torch.stack(rotation)


def substeps_from(model: MPMModel, state: MPMState, shapes: Shapes | None, table: tuple[Tensor, ...], first: int, last: int,
                  backend: str = "auto") -> MPMState:
    """``state`` after substeps first..last - 1 of a frame, the shapes (if any) moving along ``table`` (``pose_table``)."""
    for k in range(first, last):
        colliders = None if shapes is None else (shapes, table[0][k], table[1][k], table[0][k + 1], table[1][k + 1])
        state = substep(model, state, backend, colliders)
    return state


class _Recompute(torch.autograd.Function):
    """Runs ``run(*inputs)`` without a graph; backward reruns it with one and differentiates that (inputs only:
    model tensors get no gradient).

    MPM's "step" recompute mode, kept beside ``tphys.autodiff.run_substeps`` because it costs less memory here:
    the forward builds no graph at all (so it keeps nothing of the substeps), and the rerun in backward
    checkpoints each substep (a frame's intermediates, stencils and grids, are large). torch's non-reentrant
    checkpoint around the frame (``run_substeps``' "step") holds the whole frame's intermediates during its
    backward; with the substeps checkpointed inside it, the forward keeps every substep's input. Measured
    (benchmark-style peak RSS of forward + backward; float32 plasticine cube, 32³ grid, N = 4, 8000 particles
    per env, a moving sphere collider, 4 frames of 20 substeps): this node 231 MB; the generic "step" 785 MB;
    the generic "step" over per-substep checkpoints 644 MB (115, 247 and 287 MB with glibc's
    MALLOC_MMAP_THRESHOLD_=65536, which keeps freed tensors from pinning the heap). Gradients agree exactly.
    """

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


def substep_count(model: MPMModel, dt: float) -> int:
    """How many substeps of ``model.dt`` make a frame of ``dt`` seconds (ValueError unless a whole number)."""
    count = round(dt / model.dt)
    if count < 1 or abs(count * model.dt - dt) > 1e-9 * dt:
        raise ValueError(f"dt = {dt} s is not a whole number of MPM substeps of model.dt = {model.dt} s")
    return count


def step(model: MPMModel, state: MPMState, control: MPMControl, dt: float, recompute="step", backend: str = "auto") -> MPMState:
    """Advance ``state`` by a frame of ``dt`` seconds: ``dt / model.dt`` substeps (a whole number), with the kinematic
    colliders of ``control`` (see ``MPMControl``).

    ``recompute`` ("none" | "step" | "substep", or True/False; ``tphys.autodiff``) trades time for memory in backward:
        "none"      autograd keeps every substep's intermediates;
        "substep"   keeps each substep's input and reruns that substep in backward (one extra forward);
        "step"      keeps only this call's inputs; backward reruns the substeps, each recomputed again in
                    turn, so memory grows with calls (env steps), not substeps (two extra forwards). Model
                    tensors get no gradient in this mode (see ``_Recompute``).
    ``backend`` ("auto" | "triton" | "cpu" | "torch") picks every kernel, see ``tphys.kernels``.
    """
    recompute = check_recompute(recompute)
    substeps = substep_count(model, dt)
    shapes, poses = control.shapes, control.poses
    if (shapes is None) != (poses is None):
        raise ValueError("MPMControl needs both shapes and poses, or neither")
    count = len(state)

    def frame(mode: str, *tensors) -> tuple:
        """The frame from ``tensors`` = (*state, *inputs) with ``run_substeps``' recompute ``mode``; the shapes' poses at
        every substep boundary come first, in one table (``pose_table``)."""
        start, read = tensors[:count], tensors[count:]
        table = pose_table(control._replace(inputs=tuple(read)), substeps)

        def one(k, carry):
            return tuple(substeps_from(model, MPMState(*carry), shapes, table, k, k + 1, backend))

        return run_substeps(one, tuple(start), substeps, mode)

    if recompute == "step" and torch.is_grad_enabled():
        return MPMState(*_Recompute.apply(lambda *tensors: frame("substep", *tensors), *state, *control.inputs))
    return MPMState(*frame(recompute, *state, *control.inputs))
