"""When ``semi_implicit_euler`` hands a step to the fused C kernel (``tphys.kernels.particle_kernels``), and the hand-off.

The kernel runs all substeps of a step in one call, forward only, for what the PODS payload envs are made of: point
masses, kinematic handles, springs and cables (axial damping, the cables' C¹ slack ramp), gravity and linear drag,
in 2-D or 3-D. ``reason_not_fused`` names the first thing a call needs that it lacks (None: it serves the call):

    backend     "torch" / "triton" (``tphys.kernels``' vocabulary) ask for the torch path; "auto" takes the kernel on
                float32/float64 CPU tensors when the C file builds and torch.compile is not tracing
    autograd    grad mode on and any input (state, control or a model tensor) requiring grad, a forward-mode tangent,
                or a torch.func transform (vmap, grad, jacrev): the kernel has no derivatives
    features    inputs of another dtype or device than the state; membrane triangles, tetrahedra, ground contact,
                muscle activations; a dimension other than 2 or 3; incidence rows that are not one -1 and one +1 on
                two distinct particles; a free mask not 0/1

With ``backend="cpu"`` a reason is an error (ValueError); with "auto" the torch path runs. Results equal the torch
path's to round-off (``tests/particles/test_fused_step.py``). Within the kernel, a small float32 model (every payload
env) takes its "unrolled" path (``particle_unrolled``: straight-line C per model topology), a larger one whose springs
join particles at most 3 apart in index (chains) its "band" path, any other its "general" one (``particle_kernels``;
the plan keeps it: ``_plan(model, h).model.path``).
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from tphys.kernels import particle_kernels
from tphys.particles.model import ParticleControl, ParticleModel, ParticleState


def _model_tensors(model: ParticleModel) -> list[Tensor]:
    tensors = [model.mass, model.free_mask, model.free_scatter, model.handle_index, model.handle_scatter, model.gravity, model.drag]
    return tensors + ([] if model.springs is None else list(model.springs))


def _transforms_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running (its tensors have no plain storage)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _needs_autograd(model: ParticleModel, state: ParticleState, control: ParticleControl) -> bool:
    inputs = [state.x, state.v, *control.tensors()]
    dual = getattr(fwAD, "_current_level", 0) >= 0  # inside fwAD.dual_level() (-1 outside; unknown: check the tensors)
    if _transforms_active() or dual and any(fwAD.unpack_dual(t).tangent is not None for t in inputs):
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs + _model_tensors(model))


def _unsupported_feature(model: ParticleModel) -> str | None:
    if model.triangles is not None:
        return "membrane triangles"
    if model.tetrahedra is not None:
        return "tetrahedra"
    if model.ground is not None:
        return "ground contact"
    if model.dim not in (2, 3):
        return f"dimension {model.dim}"
    if any(t.dtype != model.mass.dtype or t.device != model.mass.device for t in _model_tensors(model) if t.is_floating_point()):
        return "model tensors of several dtypes or devices"
    if not bool(((model.free_mask == 0) | (model.free_mask == 1)).all()):
        return "a free mask other than 0/1"
    if model.springs is not None:
        incidence = model.springs.incidence
        if not bool(((incidence == 1).sum(-1).eq(1) & (incidence == -1).sum(-1).eq(1) & (incidence != 0).sum(-1).eq(2)).all()):
            return "a spring incidence row other than one -1 and one +1"
    return None


class _Plan(NamedTuple):
    """What the kernel needs from a model, derived once (``_plan``): the unsupported feature (None: none) and the
    kernel's form of the model (``particle_kernels.prepare``; None with a reason)."""

    reason: str | None
    model: particle_kernels.Model | None


_VERSION = operator.attrgetter("_version")  # a tensor's in-place edit counter
_PLANS: OrderedDict = OrderedDict()  # id(model.mass) -> (the model's tensors and their versions, h, _Plan); a few models
_PLAN_CACHE_SIZE = 16


def _derive(model: ParticleModel, h: float) -> _Plan:
    reason = _unsupported_feature(model)
    if reason is not None:
        return _Plan(reason, None)
    handle = torch.full((model.num_particles,), -1, dtype=torch.int64)
    handle[model.handle_index.cpu()] = torch.arange(model.handle_index.shape[0])
    impulse = h * model.free_mask / model.mass  # the torch path's expressions, same rounding
    weight = model.mass.unsqueeze(-1) * model.gravity
    springs = model.springs
    if springs is None:
        empty, index = model.mass.new_empty(0), torch.empty(0, dtype=torch.int64)
        spring_args = (index, index, empty, empty, empty, empty, 1.0)
    else:
        spring_args = (springs.incidence.argmin(-1), springs.incidence.argmax(-1), springs.rest_length, springs.stiffness,
                       springs.damping, springs.tension_only, float(springs.slack_width))
    return _Plan(None, particle_kernels.prepare(handle, model.free_mask, impulse, weight, float(model.drag), *spring_args))


def _plan(model: ParticleModel, h: float) -> _Plan:
    """``_derive(model, h)``, cached: an entry holds the model's tensors (so that their ids stay theirs) and their
    version counters (an in-place edit of any model tensor derives the plan again)."""
    tensors = _model_tensors(model)
    signature = tuple(map(_VERSION, tensors))
    entry = _PLANS.get(id(model.mass))
    if entry is not None:
        kept, versions, kept_h, plan = entry
        if kept_h == h and versions == signature and len(kept) == len(tensors) and all(map(operator.is_, kept, tensors)):
            _PLANS.move_to_end(id(model.mass))
            return plan
    plan = _derive(model, h)
    _PLANS[id(model.mass)] = (tensors, signature, h, plan)
    while len(_PLANS) > _PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)
    return plan


def _mixed(x: Tensor, others) -> bool:
    """Whether a tensor of ``others`` has another dtype or device than ``x``."""
    dtype, device = x.dtype, x.device
    return any(t.dtype is not dtype or t.device != device for t in others)


def _check(model: ParticleModel, state: ParticleState, control: ParticleControl, backend: str, h: float) -> _Plan:
    """The plan of this call; its reason (None: the kernel serves the call) covers the backend and autograd too."""
    if particle_kernels.resolve_backend(state.x, backend) != "cpu":
        return _Plan(f"backend {backend!r} resolves to torch", None)
    if _needs_autograd(model, state, control):
        plan = _Plan("autograd", None)
    elif control.activation is not None:
        plan = _Plan("muscle activations", None)
    elif _mixed(state.x, (state.v, *control.tensors(), model.mass)):
        plan = _Plan("inputs of another dtype or device than the state's", None)
    else:
        plan = _plan(model, h)
    if plan.reason is not None and backend == "cpu":
        raise ValueError(f"backend='cpu': the fused C particle step does not take {plan.reason}; use backend='auto' or 'torch'")
    return plan


def reason_not_fused(model: ParticleModel, state: ParticleState, control: ParticleControl, backend: str = "auto",
                     h: float = 1.0) -> str | None:
    """Why the fused C step does not serve this call (see the module docstring), or None when it does; with
    ``backend="cpu"`` raises ValueError instead of returning a reason (RuntimeError where C cannot run at all).
    ``h``: the substep, s (the plan this check derives and caches is per substep length)."""
    return _check(model, state, control, backend, h).reason


def fused_semi_implicit_euler(model: ParticleModel, state: ParticleState, control: ParticleControl, dt: float, substeps: int,
                              backend: str = "auto") -> ParticleState | None:
    """``semi_implicit_euler``'s step by the C kernel where it serves the call (``reason_not_fused``), else None:
    the same per-particle constants as the torch path (impulse h·free/m [P] s/kg, weight m·g [P, d] N)."""
    h = dt / substeps
    plan = _check(model, state, control, backend, h)
    if plan.reason is not None:
        return None
    if control.handle_velocity is not None:
        u, handle_map = control.handle_velocity.contiguous(), None
    else:  # the unrolled path computes action @ basis in the kernel (particle_kernels.particle_step)
        u, handle_map = None, tuple(t.contiguous() for t in control.handle_map)
    x, v = particle_kernels.particle_step(plan.model, state.x.contiguous(), state.v.contiguous(), u, substeps, h, handle_map)
    return ParticleState(x, v, state.x, state.v, torch.ones_like(state.has_prev))
