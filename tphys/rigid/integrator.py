"""One frame of the rigid-body simulation: ``substeps`` semi-implicit Euler steps (DFlex's integrator),
``step(model, state, control, dt) -> RigidState`` as in every tphys engine.

Per substep (the stages read as a list, MJX-style):
    kinematics -> ground contact -> joint torques (motors, damping, springs, limit penalties)
    -> qdd = H⁻¹(τ - C) -> qd += h·qdd -> q += h·qd (quaternions: q ⊗ exp(h·ω/2), renormalized)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.autodiff import check_recompute, run_substeps
from tphys.math import quat_integrate
from tphys.rigid.contact import ground_forces
from tphys.rigid.dynamics import actuator_forces, joint_accelerations, kinematics, limit_forces, passive_forces
from tphys.rigid.model import RigidModel, RigidState


class RigidControl(NamedTuple):
    """What drives a rigid model during a frame.

    Attributes:
        actuation: [N, A] actuator commands, held over the frame; actuator a applies the joint force
            gear_a · clamp(actuation_a, range_a) (N·m or N) on its dof (``dynamics.actuator_forces``).
    """

    actuation: Tensor


def integrate_positions(model: RigidModel, q: Tensor, qd: Tensor, h: float) -> Tensor:
    """q after moving with the velocities qd [N, D] for h seconds."""
    links, dofs = model.links, model.dofs
    out = q.index_add(1, dofs.scalar_q, h * qd[:, dofs.scalar])
    arange3, arange4 = torch.arange(3, device=q.device), torch.arange(4, device=q.device)
    if links.free.numel():
        pos_idx = (links.free_q[:, None] + arange3).reshape(-1)
        out = out.index_add(1, pos_idx, h * qd[:, (links.free_dof[:, None] + arange3).reshape(-1)])
        quat_idx = links.free_q[:, None] + 3 + arange4
        omega = qd[:, links.free_dof[:, None] + 3 + arange3]
        out = out.index_copy(1, quat_idx.reshape(-1), quat_integrate(q[:, quat_idx], omega, h).flatten(1))
    if links.ball.numel():
        quat_idx = links.ball_q[:, None] + arange4
        omega = qd[:, links.ball_dof[:, None] + arange3]
        out = out.index_copy(1, quat_idx.reshape(-1), quat_integrate(q[:, quat_idx], omega, h).flatten(1))
    return out


def generalized_forces(model: RigidModel, q: Tensor, qd: Tensor, actuation: Tensor) -> Tensor:
    """[N, D] joint-space forces except contact and bias: motors (actuation [N, A]), passive damping/springs, limit penalties."""
    mat = model.material
    return actuator_forces(model, actuation) + passive_forces(model, q, qd) + limit_forces(model, q, qd, mat.limit_ke, mat.limit_kd)


def substep(model: RigidModel, q: Tensor, qd: Tensor, actuation: Tensor, h: float, contact: bool = True) -> tuple[Tensor, Tensor]:
    """(q, qd) after one semi-implicit Euler substep of h seconds with actuator commands ``actuation`` [N, A]."""
    kin = kinematics(model, q, qd)
    external = ground_forces(model, kin.poses, kin.velocities) if contact and model.contacts.link.numel() else None
    qdd = joint_accelerations(model, kin, qd, generalized_forces(model, q, qd, actuation), external)
    qd = qd + h * qdd
    return integrate_positions(model, q, qd, h), qd


def step(model: RigidModel, state: RigidState, control: RigidControl, dt: float, substeps: int = 16, contact: bool = True,
         recompute="none", substep_fn=None) -> RigidState:
    """Advance ``state`` by one frame of ``dt`` seconds in ``substeps`` equal substeps, holding ``control``.

    ``recompute`` ("none" | "step" | "substep", or True/False; see ``tphys.autodiff``): "step" keeps only
    the frame's inputs for backward and reruns its substeps there (memory grows with frames, not
    substeps); "substep" keeps each substep's inputs and reruns each substep.
    ``substep_fn(q, qd, actuation) -> (q, qd)`` replaces the substep (see ``compiled_substep``).
    """
    recompute = check_recompute(recompute)
    actuation = control.actuation
    if actuation.shape[-1] != model.num_actuators:
        raise ValueError(f"control has {actuation.shape[-1]} entries per env, the model has {model.num_actuators} actuators")
    h = dt / substeps
    one = substep_fn or (lambda q, qd, u: substep(model, q, qd, u, h, contact))
    q, qd = run_substeps(lambda k, carry: one(carry[0], carry[1], actuation), (state.q, state.qd), substeps, recompute)
    return RigidState(q, qd)


def compiled_substep(model: RigidModel, dt: float, substeps: int = 16, contact: bool = True):
    """``torch.compile`` of one substep of ``model`` (opt-in; pass as ``step(..., substep_fn=...)``).

    Only the substep is compiled; frames and substeps stay a Python loop (compiling an unrolled
    rollout makes Inductor's code generation explode). Shapes are static: one compilation per
    batch size. Set ``TORCHINDUCTOR_CACHE_DIR`` to reuse compiled code across processes.
    """
    h = dt / substeps
    return torch.compile(lambda q, qd, u: substep(model, q, qd, u, h, contact), dynamic=False)
