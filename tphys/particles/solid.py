"""The FEM solid's engine step: one frame of a free tetrahedral solid with muscles on the ground,
``step(model, state, SolidControl(activation), dt) -> ParticleState`` as in every tphys engine.

A frame is ``substeps`` semi-implicit Euler substeps (v += h·F/m, then x += h·v, the physics of
``integrators.semi_implicit_euler``) with the activations held over the frame, by a
``solid_substep.SolidSubstep``: with its C backend (the default on CPU) the whole frame is one C call and one
autograd node (``SolidSubstep.frame``), otherwise each substep is one autograd node with a hand-written backward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor

from tphys.autodiff import check_recompute, run_substeps
from tphys.particles.model import ParticleModel, ParticleState
from tphys.particles.solid_substep import SolidSubstep


class SolidControl(NamedTuple):
    """What drives the solid during a frame.

    Attributes:
        activation: [N, T] muscle activation of each tetrahedron (scales its fiber stress ``max_stress``;
            negative: active extension), held over the frame.
    """

    activation: Tensor


def step(model: ParticleModel, state: ParticleState, control: SolidControl, dt: float, substeps: int = 1, recompute="none",
         substepper: SolidSubstep | None = None) -> ParticleState:
    """Advance ``state`` (x, v [N, P, 3] m, m/s) by one frame of ``dt`` seconds in ``substeps`` equal substeps.

    ``model``: tetrahedra only, no handles (see ``SolidSubstep``). ``recompute`` ("none" | "step" | "substep",
    or True/False; ``tphys.autodiff``): without it backward keeps x and v of every substep (2·N·P·3 numbers);
    "step" keeps only the frame's inputs and reruns its substeps in backward (memory per frame, not per
    substep). With the C backend, "none" and "step" run the frame as one node (``SolidSubstep.frame``, which keeps
    each substep's x and v: the same memory as "substep"; "step" checkpoints it), "substep" one node per substep.
    ``substepper``: a ``SolidSubstep(model, dt / substeps)`` to reuse (e.g. one built with ``compile=True`` or a
    ``backend`` once per env); default: a fresh one with ``backend="auto"``.
    """
    recompute = check_recompute(recompute)
    h = dt / substeps
    if substepper is None:
        substepper = SolidSubstep(model, h)
    elif substepper.model is not model or not math.isclose(substepper.h, h, rel_tol=1e-12):
        raise ValueError(f"substepper steps h = {substepper.h} s of another model or substep; this step needs h = dt/substeps = {h} s")
    activation = control.activation
    if recompute != "substep" and substepper.fuses_frames(state.x, state.v, activation):  # the C backend: one node per frame
        x, v = run_substeps(lambda k, carry: substepper.frame(carry[0], carry[1], activation, substeps), (state.x, state.v), 1, recompute)
    else:
        x, v = run_substeps(lambda k, carry: substepper(carry[0], carry[1], activation), (state.x, state.v), substeps, recompute)
    return ParticleState(x, v, state.x, state.v, state.has_prev.new_ones(state.has_prev.shape))
