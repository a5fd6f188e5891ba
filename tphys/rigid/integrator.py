"""One frame of the rigid-body simulation: ``substeps`` semi-implicit Euler steps (DFlex's integrator),
``step(model, state, control, dt) -> RigidState`` as in every tphys engine.

Per substep (the stages read as a list, MJX-style):
    kinematics -> ground contact + muscle pulls (link forces) -> joint torques (motors, damping, springs, limit penalties)
    -> qdd = H⁻¹(τ - C) -> qd += h·qdd -> q += h·qd (quaternions: q ⊗ exp(h·ω/2), renormalized)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.autodiff import check_recompute, run_substeps
from tphys.compiling import compile_fixed
from tphys.math import quat_integrate
from tphys.rigid.contact import ground_forces
from tphys.rigid.dynamics import actuator_forces, joint_accelerations, kinematics, limit_forces, passive_forces
from tphys.rigid.model import RigidModel, RigidState
from tphys.rigid.muscles import link_forces, tensions


class RigidControl(NamedTuple):
    """What drives a rigid model during a frame.

    Attributes:
        actuation: [N, A] actuator commands, held over the frame; actuator a applies the joint force
            gear_a · clamp(actuation_a, range_a) (N·m or N) on its dof (``dynamics.actuator_forces``).
        activation: [N, M] muscle activations in [0, 1] (clamped), held over the frame; muscle m pulls along its
            path with max_force_m · activation_m (N) (``tphys.rigid.muscles``). None: muscles slack.
    """

    actuation: Tensor
    activation: Tensor | None = None


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


def external_forces(model: RigidModel, kin, contact: bool, activation: Tensor | None) -> Tensor | None:
    """[N, L, 6] world spatial forces on the links: ground contact (if ``contact``) plus muscle pulls (activation
    [N, M]); None when there are neither."""
    external = ground_forces(model, kin.poses, kin.velocities) if contact and model.contacts.link.numel() else None
    if model.muscles is not None and activation is not None and model.muscles.cross.numel():
        pull = link_forces(model.muscles, kin.poses, tensions(model.muscles, activation))
        external = pull if external is None else external + pull
    return external


def substep(model: RigidModel, q: Tensor, qd: Tensor, actuation: Tensor, h: float, contact: bool = True,
            activation: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(q, qd) after one semi-implicit Euler substep of h seconds with actuator commands ``actuation`` [N, A] and
    muscle activations ``activation`` [N, M] (or None)."""
    kin = kinematics(model, q, qd)
    external = external_forces(model, kin, contact, activation)
    qdd = joint_accelerations(model, kin, qd, generalized_forces(model, q, qd, actuation), external)
    qd = qd + h * qdd
    return integrate_positions(model, q, qd, h), qd


def step(model: RigidModel, state: RigidState, control: RigidControl, dt: float, substeps: int = 16, contact: bool = True,
         recompute="none", substep_fn=None) -> RigidState:
    """Advance ``state`` by one frame of ``dt`` seconds in ``substeps`` equal substeps, holding ``control``.

    ``recompute`` ("none" | "step" | "substep", or True/False; see ``tphys.autodiff``): "step" keeps only
    the frame's inputs for backward and reruns its substeps there (memory grows with frames, not
    substeps); "substep" keeps each substep's inputs and reruns each substep.
    ``substep_fn(q, qd, actuation[, activation]) -> (q, qd)`` replaces the substep (see ``compiled_substep``); it is
    given the muscle activations only when ``control.activation`` is not None.
    """
    recompute = check_recompute(recompute)
    actuation, activation = control.actuation, control.activation
    if actuation.shape[-1] != model.num_actuators:
        raise ValueError(f"control has {actuation.shape[-1]} entries per env, the model has {model.num_actuators} actuators")
    if activation is not None and activation.shape[-1] != model.num_muscles:
        raise ValueError(f"control has {activation.shape[-1]} muscle activations per env, the model has {model.num_muscles} muscles")
    h = dt / substeps
    one = substep_fn or (lambda q, qd, u, a=None: substep(model, q, qd, u, h, contact, a))
    extra = () if activation is None else (activation,)
    q, qd = run_substeps(lambda k, carry: one(carry[0], carry[1], actuation, *extra), (state.q, state.qd), substeps, recompute)
    return RigidState(q, qd)


def compiled_substep(model: RigidModel, dt: float, substeps: int = 16, contact: bool = True):
    """``torch.compile`` of one substep of ``model`` (opt-in; pass as ``step(..., substep_fn=...)``).

    Only the substep is compiled; frames and substeps stay a Python loop (compiling an unrolled
    rollout makes Inductor's code generation explode). Shapes are static: one compilation per
    batch size. The compiled code is cached on disk across processes (``tphys.compiling.use_cache_dir``).
    """
    h = dt / substeps
    return compile_fixed(lambda q, qd, u, a=None: substep(model, q, qd, u, h, contact, a))
