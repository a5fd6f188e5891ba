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
from tphys.kernels import g2p, grid_kernels, matmul3, p2g
from tphys.mpm import water
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
    rotation_next), see ``grid.grid_velocity``. Water with every kernel in C takes one fused node (``water.substep``)."""
    if water.serves(model, state.x, colliders, backend):
        return water.substep(model, state, colliders)
    x, v, c, f_trial = state
    n = x.shape[0]
    mass = model.particle_mass.expand(n, -1)
    f, stress = elastic_stress(model.material, f_trial, backend=backend)
    scale = (-model.dt * 4 / model.dx**2) * model.particle_volume  # [P]
    affine = torch.addcmul(mass[..., None, None] * c, scale[:, None, None], stress)  # -dt·V·(4/dx²)·τ + m·C, one pass
    origin, shape = window(model, x)
    local = x - (origin.to(x.dtype) * model.dx).unsqueeze(1)  # positions in the window's frame
    grid_mass, grid_momentum = p2g(local, mass, mass.unsqueeze(-1) * v, affine, shape, model.dx, backend=backend)
    v, c = g2p(local, grid_velocity(model, grid_mass, grid_momentum, colliders, origin, backend), model.dx, backend=backend)
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    return MPMState(torch.add(x, v, alpha=model.dt), v, c, advect(model.material, torch.add(eye, c, alpha=model.dt), f, backend))


def advect(material, update: Tensor, f: Tensor, backend: str = "auto") -> Tensor:
    """The next trial deformation gradient update·F [..., 3, 3] (update = I + dt·C). Water's F is c·I
    (``materials.elastic_stress``), so its product is the scaling update·c: the same values (a float product is exact in
    the C loops' double), one elementwise op in place of a 3x3 product and its backward."""
    if material.kind == "water":
        return update * f[..., :1, :1]
    return matmul3(update, f, backend)


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


SEGMENT = 10  # substeps per segment of the "step" recompute mode (see ``_Recompute``)


class Frame(NamedTuple):
    """What ``_Recompute`` runs: a frame of ``model``'s substeps, split into segments of at most ``segment`` substeps.

    Attributes:
        model, shapes, backend: as ``step`` has them.
        control: the frame's ``MPMControl`` (its inputs are replaced by the node's).
        substeps: K, the frame's substeps.
        segment: the most substeps of one segment.
    """

    model: MPMModel
    shapes: Shapes | None
    control: MPMControl
    substeps: int
    segment: int
    backend: str

    def bounds(self) -> list[tuple[int, int]]:
        """(first, last) substeps of each segment, in order."""
        return [(k, min(k + self.segment, self.substeps)) for k in range(0, self.substeps, self.segment)]

    def table(self, inputs) -> tuple[Tensor, ...]:
        """``pose_table`` of the control with ``inputs``."""
        return pose_table(self.control._replace(inputs=tuple(inputs)), self.substeps)

    def run(self, state, table, first: int, last: int) -> MPMState:
        """``substeps_from`` the tensors ``state`` over substeps first..last - 1."""
        return substeps_from(self.model, MPMState(*state), self.shapes, table, first, last, self.backend)


class _Recompute(torch.autograd.Function):
    """MPM's "step" recompute mode: forward ``frame`` (a ``Frame``) from tensors (*state, *inputs) without a graph, keeping
    the inputs and the state at the start of each segment; backward reruns the segments last to first, each once with
    a graph (a segment's intermediates live only while it is differentiated), and differentiates the shapes' pose table
    (``pose_table``) once at the end. Two forwards per substep in all; model tensors get no gradient.

    Kept beside ``tphys.autodiff.run_substeps`` because it costs less: torch's non-reentrant checkpoint around the frame
    (``run_substeps``' "step") holds the whole frame's intermediates during its backward; checkpointing each substep
    inside it runs three forwards per substep (the forward, the rerun with checkpoints, each checkpoint's recompute),
    as this node did before it kept its segments' starts.
    Memory per call: the inputs and one state per segment of ``SEGMENT`` substeps (4 for the 40 substeps of the
    MPM tasks); in backward, one segment's intermediates at a time. A frame whose result depends on nothing that needs
    a gradient (``independent``: no shape touched the material) keeps nothing and its backward is free."""

    @staticmethod
    def forward(ctx, frame: Frame, *tensors):
        count = len(MPMState._fields)
        state, inputs = tensors[:count], tensors[count:]
        starts = []
        with torch.no_grad(), grid_kernels.contacts() as acted:
            table = frame.table(inputs)
            for first, last in frame.bounds():
                starts.extend(state)
                state = tuple(frame.run(state, table, first, last))
        ctx.frame, ctx.independent = frame, independent(ctx.needs_input_grad[1:1 + count], acted, frame.substeps)
        ctx.save_for_backward(*(() if ctx.independent else (*inputs, *starts)))
        return state

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        frame, count = ctx.frame, len(MPMState._fields)
        if ctx.independent:  # the gradient is zero: no rerun (plain autograd would have had no graph at all)
            return (None,) * len(ctx.needs_input_grad)
        need_state, need_inputs = ctx.needs_input_grad[1:1 + count], ctx.needs_input_grad[1 + count:]
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) for t, need in zip(saved[:len(need_inputs)], need_inputs)]
        starts = saved[len(need_inputs):]
        with torch.enable_grad():
            table = frame.table(inputs)
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in table]  # the segments' graphs end here
        table_grads: list[Tensor | None] = [None] * len(leaves)
        carry_grads = list(grads)
        for j, (first, last) in reversed(list(enumerate(frame.bounds()))):
            need = need_state if j == 0 else (True,) * count
            start = [t.detach().requires_grad_(n) for t, n in zip(starts[j * count:(j + 1) * count], need)]
            with torch.enable_grad():
                out = frame.run(start, leaves, first, last)
            found = _grad(out, carry_grads, [*start, *leaves])
            carry_grads = found[:count]
            table_grads = [_add(a, b) for a, b in zip(table_grads, found[count:])]
        return (None, *carry_grads, *_grad(table, table_grads, inputs))


def independent(need_state, acted: list[int], substeps: int) -> bool:
    """Whether a frame's result depends on nothing that needs a gradient: no state tensor needs one (``need_state``) and
    the C grid update reported, for every one of the ``substeps``, that no shape acted on any node (``acted``, from
    ``grid_kernels.contacts``), so the poses, hence the inputs, never reached the velocities (a roller above the dough).
    Plain autograd's result has no graph then; ``_Recompute`` keeps its node (so that a loss of it still has a graph, as
    before) but saves nothing and returns no gradient without rerunning the frame."""
    return not any(need_state) and len(acted) == substeps and not any(acted)


def _grad(outputs, grads, wanted) -> list[Tensor | None]:
    """d(Σ outputs·grads)/d wanted (None for a tensor that needs none or that nothing reaches); None grads count as 0."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    targets = [t for t in wanted if t.requires_grad]
    if not pairs or not targets:
        return [None] * len(wanted)
    found = iter(torch.autograd.grad([o for o, _ in pairs], targets, [g for _, g in pairs], allow_unused=True))
    return [next(found) if t.requires_grad else None for t in wanted]


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a + b


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
        "step"      keeps this call's inputs and the state every ``SEGMENT`` substeps; backward reruns each segment
                    once with a graph, so memory grows with calls (env steps), not substeps (one extra forward).
                    Model tensors get no gradient in this mode (see ``_Recompute``).
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
        return MPMState(*_Recompute.apply(Frame(model, shapes, control, substeps, SEGMENT, backend), *state, *control.inputs))
    return MPMState(*frame(recompute, *state, *control.inputs))
