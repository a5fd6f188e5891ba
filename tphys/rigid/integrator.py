"""One frame of the rigid-body simulation: ``substeps`` semi-implicit Euler steps (DFlex's integrator),
``step(model, state, control, dt) -> RigidState`` as in every tphys engine.

Per substep (the stages read as a list, MJX-style):
    kinematics -> ground contact + muscle pulls (link forces) -> joint torques (motors, damping, springs, limit penalties)
    -> qdd = H⁻¹(τ - C) -> qd += h·qdd -> q += h·qd (quaternions: q ⊗ exp(h·ω/2), renormalized)

``step(..., backend=...)`` ("auto" | "cpu" | "torch") picks who runs a frame: the C twin of ``substep``
(``tphys/kernels/cpu/rigid.c``, ``tphys.kernels.rigid_kernels``: the whole frame in one C call forward and one in backward,
one autograd node per frame) or the torch functions here. ``route`` is the rule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.utils._pytree import tree_leaves

from tphys.autodiff import check_recompute, run_substeps, twice_differentiable_requested
from tphys.compiling import compile_fixed
from tphys.kernels import rigid_kernels
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


_KERNELS: dict = {}  # (id(model), h, contact) -> (model, RigidKernel): the model kept alive, so its id is not reused


def kernel_for(model: RigidModel, h: float, contact: bool) -> rigid_kernels.RigidKernel:
    """The ``RigidKernel`` of ``model`` for substeps of h s (built once per model object, h and contact; a few kept)."""
    key = (id(model), float(h), bool(contact))
    hit = _KERNELS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    kernel = rigid_kernels.RigidKernel(model, h, contact)
    if len(_KERNELS) >= 16:
        _KERNELS.pop(next(iter(_KERNELS)))
    _KERNELS[key] = (model, kernel)
    return kernel


def route(model: RigidModel, state: RigidState, control: RigidControl, backend: str = "auto", substep_fn=None) -> str:
    """How ``step`` runs a frame on these inputs: "torch" (the torch substeps, or ``substep_fn``), "plain" (the C frame, no
    graph needed) or "node" (the C frame as one autograd node).

    The rule: ``backend`` resolves by ``rigid_kernels.resolve_backend`` (C for float32/float64 CPU models without muscles when
    ``rigid.c`` builds; "cpu" raises where C cannot run). A resolved "cpu" still runs torch where the C node cannot serve:
    forward-mode tangents or torch.func transforms on an input, torch.compile tracing, and, with grad on, inside
    ``tphys.autodiff.twice_differentiable()`` or with model tensors that require grad. ``substep_fn`` (e.g.
    ``compiled_substep``) is a torch substep: "auto" then runs it, "cpu" raises ValueError."""
    if rigid_kernels.resolve_backend(model, backend) == "torch":
        return "torch"
    if substep_fn is not None:
        if backend == "cpu":
            raise ValueError("step: substep_fn (a torch substep, e.g. compiled_substep) and backend='cpu' exclude each other")
        return "torch"
    inputs = (state.q, state.qd, control.actuation)
    functorch = torch._C._functorch.is_functorch_wrapped_tensor
    if torch.compiler.is_compiling() or any(fwAD.unpack_dual(t).tangent is not None or functorch(t) for t in inputs):
        return "torch"
    grad = torch.is_grad_enabled()
    if grad and (twice_differentiable_requested() or any(isinstance(t, Tensor) and t.requires_grad for t in tree_leaves(model))):
        return "torch"
    if not grad or not any(t.requires_grad for t in inputs):
        return "plain"
    return "node"


def step(model: RigidModel, state: RigidState, control: RigidControl, dt: float, substeps: int = 16, contact: bool = True,
         recompute="none", substep_fn=None, backend: str = "auto") -> RigidState:
    """Advance ``state`` by one frame of ``dt`` seconds in ``substeps`` equal substeps, holding ``control``.

    ``recompute`` ("none" | "step" | "substep", or True/False; see ``tphys.autodiff``): "step" keeps only
    the frame's inputs for backward and reruns its substeps there (memory grows with frames, not
    substeps); "substep" keeps each substep's inputs and reruns each substep.
    ``substep_fn(q, qd, actuation[, activation]) -> (q, qd)`` replaces the substep (see ``compiled_substep``); it is
    given the muscle activations only when ``control.activation`` is not None.
    ``backend`` ("auto" | "cpu" | "torch"): see ``route``. The C frame keeps each substep's input state (N·(nq + D) numbers)
    for its backward; recompute "step" drops them and reruns the frame, "substep" runs one C node per substep.
    """
    recompute = check_recompute(recompute)
    actuation, activation = control.actuation, control.activation
    if actuation.shape[-1] != model.num_actuators:
        raise ValueError(f"control has {actuation.shape[-1]} entries per env, the model has {model.num_actuators} actuators")
    if activation is not None and activation.shape[-1] != model.num_muscles:
        raise ValueError(f"control has {activation.shape[-1]} muscle activations per env, the model has {model.num_muscles} muscles")
    h = dt / substeps
    way = route(model, state, control, backend, substep_fn)
    if way != "torch":
        kernel = kernel_for(model, h, contact)
        if way == "plain":
            q, qd, _ = kernel.forward(state.q, state.qd, actuation, substeps)
            return RigidState(q, qd)
        if recompute == "substep":
            q, qd = run_substeps(lambda k, carry: rigid_kernels.frame(kernel, carry[0], carry[1], actuation, 1), (state.q, state.qd),
                                 substeps, recompute)
        else:
            q, qd = run_substeps(lambda k, carry: rigid_kernels.frame(kernel, carry[0], carry[1], actuation, substeps),
                                 (state.q, state.qd), 1, recompute)
        return RigidState(q, qd)
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
