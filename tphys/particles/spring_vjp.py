"""Spring forces as one autograd node with a hand-written vector-Jacobian product.

Same physics as ``forces.spring_forces`` (its torch twin, which tests hold this equal to),
but backward runs ~15 fused tensor ops instead of autograd's replay of ~40, and saves six
tensors per call instead of every intermediate. The semi-implicit integrator uses it on its
hot path. It supports first derivatives w.r.t. positions and velocities only: not double
backward, not ``torch.func`` transforms, not gradients w.r.t. spring parameters; the twin
serves those (``use_fused_springs`` decides).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.autograd.function import once_differentiable

from tphys.autodiff import twice_differentiable_requested
from tphys.particles.model import Springs

_EPS = 1e-12


class _SpringForce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v, incidence, rest, stiffness, damping, cable, width):
        delta = torch.einsum("sp,...pd->...sd", incidence, x)  # x_j - x_i
        delta_v = torch.einsum("sp,...pd->...sd", incidence, v)
        length = torch.linalg.vector_norm(delta, dim=-1).clamp_min(_EPS)
        direction = delta / length.unsqueeze(-1)
        stretch = length - rest
        tau = torch.clamp(stretch / width, 0.0, 1.0)  # position inside a cable's C¹ slack ramp
        ramp = tau * (stretch - 0.5 * width * tau)  # forces.smooth_ramp
        elastic = stretch + cable * (ramp - stretch)
        taut = 1.0 + cable * (tau * tau * (3.0 - 2.0 * tau) - 1.0)  # forces.smooth_step on cables
        rate = (delta_v * direction).sum(-1)
        damping_taut = damping * taut
        tension = stiffness * elastic + damping_taut * rate
        # d tension / d stretch at fixed rate: elastic' = lerp(1, tau, cable); taut' = 6·tau(1 - tau)/w.
        slope = stiffness * (1.0 + cable * (tau - 1.0)) + damping * cable * 6.0 * tau * (1.0 - tau) / width * rate
        ctx.save_for_backward(incidence, direction, length, tension, delta_v, damping_taut, slope)
        return -torch.einsum("sp,...sd->...pd", incidence, tension.unsqueeze(-1) * direction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_force):
        incidence, direction, length, tension, delta_v, damping_taut, slope = ctx.saved_tensors
        grad_spring = -torch.einsum("sp,...pd->...sd", incidence, grad_force)  # dL/d(tension·direction)
        grad_tension = (grad_spring * direction).sum(-1)
        grad_rate = damping_taut * grad_tension
        grad_direction = tension.unsqueeze(-1) * grad_spring + grad_rate.unsqueeze(-1) * delta_v
        radial = (grad_direction * direction).sum(-1, keepdim=True)
        grad_delta = (grad_direction - radial * direction) / length.unsqueeze(-1) + (slope * grad_tension).unsqueeze(-1) * direction
        grad_delta_v = grad_rate.unsqueeze(-1) * direction
        grad_x = torch.einsum("sp,...sd->...pd", incidence, grad_delta)
        grad_v = torch.einsum("sp,...sd->...pd", incidence, grad_delta_v)
        return grad_x, grad_v, None, None, None, None, None, None


def fused_spring_forces(springs: Springs, x: Tensor, v: Tensor) -> Tensor:
    """Forces [..., P, d] of ``springs``; equal to ``forces.spring_forces``, cheaper backward."""
    return _SpringForce.apply(
        x,
        v,
        springs.incidence,
        springs.rest_length,
        springs.stiffness,
        springs.damping,
        springs.tension_only,
        springs.slack_width,
    )


def use_fused_springs(springs: Springs, x: Tensor, v: Tensor) -> bool:
    """The fused node serves only first-order reverse-mode gradients w.r.t. x and v.

    The twin takes over when a spring parameter needs a gradient, when x or v carries a
    forward-mode tangent (``torch.autograd.forward_ad``), or inside ``twice_differentiable()``.
    """
    if twice_differentiable_requested() or any(t.requires_grad for t in springs):
        return False
    return all(fwAD.unpack_dual(t).tangent is None for t in (x, v))
