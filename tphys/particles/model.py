"""Constants and state of a batched particle system.

Conventions (SI units throughout):
    N   envs in the batch (leading dim of every state tensor)
    P   particles (free point masses and kinematic handles together)
    H   handles: kinematic particles whose velocity is the control
    d   spatial dimension, 2 or 3; the up axis is ``model.up_axis`` (y, index 1)

``ParticleModel`` holds what does not change during a rollout and is shared by all envs
of a batch; ``ParticleState`` holds what does; ``ParticleControl`` what drives a step. All are NamedTuples of tensors, so they
are pytrees that ``torch.func`` and ``torch.compile`` handle directly, and any tensor of a
model may require grad (e.g. for system identification).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tphys.autodiff import cast_tensor, map_tensors


class Springs(NamedTuple):
    """Two-particle springs; ``tension_only`` marks unilateral cables.

    Attributes:
        incidence: [S, P] +1 at particle j, -1 at particle i (spring vector = x_j - x_i).
        rest_length: [S] m.
        stiffness: [S] N/m.
        damping: [S] N·s/m, along the spring axis.
        tension_only: [S] float 1.0 for a cable (no force when slack), 0.0 for a spring.
        slack_width: [] m, width of the C¹ slack-to-taut transition of cables (see
            ``forces.smooth_ramp``); 1 mm by default.
    """

    incidence: Tensor
    rest_length: Tensor
    stiffness: Tensor
    damping: Tensor
    tension_only: Tensor
    slack_width: Tensor


class Triangles(NamedTuple):
    """Co-rotational membrane triangles for cloth, d = 3 only (see ``forces.membrane_forces``).

    Attributes:
        corners: [T, 3] long particle indices.
        gather: [3, T, P] one-hot rows that pick each corner (used for gather and scatter).
        rest_inverse: [T, 2, 2] inverse of the rest edge matrix in the triangle's 2-D frame.
        rest_area: [T] m^2.
        mu: Lamé mu of the sheet, N/m (force per unit length).
        lam: Lamé lambda of the sheet, N/m.
    """

    corners: Tensor
    gather: Tensor
    rest_inverse: Tensor
    rest_area: Tensor
    mu: Tensor
    lam: Tensor


class Tetrahedra(NamedTuple):
    """Stable neo-Hookean solid elements with contractile muscle fibers, d = 3 only (see ``fem``).

    Attributes:
        corners: [T, 4] long particle indices.
        rest_inverse: [T, 3, 3] inverse of the rest edge matrix Dm = [x1-x0, x2-x0, x3-x0].
        rest_volume: [T] m³.
        mu: [T] Lamé mu, Pa.
        lam: [T] Lamé lambda, Pa.
        damping: [T] Pa·s, viscous stress damping·dF/dt.
        fiber: [T, 3] unit fiber direction in the rest configuration.
        max_stress: [T] Pa, fiber tension at activation 1 (0: passive tissue).
    """

    corners: Tensor
    rest_inverse: Tensor
    rest_volume: Tensor
    mu: Tensor
    lam: Tensor
    damping: Tensor
    fiber: Tensor
    max_stress: Tensor


class Ground(NamedTuple):
    """Horizontal plane ``x[up_axis] = height`` with penalty contact and smooth friction.

    Normal force   f_n = (stiffness + damping · ramp_slip(-v_n)) · ramp_smoothing(depth)   [N]
    Friction       f_t = -friction · f_n · v_t / sqrt(|v_t|^2 + slip^2)                 [N]
    ramp_w is ``forces.smooth_ramp`` (relu rounded to C¹ over a width w): penalty stiffness
    (N/m) with damping (N·s/m²) only while approaching, and a smooth Coulomb law (full
    Coulomb for |v_t| >> slip, viscous below it). ``smoothing`` is in m, ``slip`` in m/s.
    """

    height: Tensor
    stiffness: Tensor
    damping: Tensor
    friction: Tensor
    slip: Tensor
    smoothing: Tensor


class ParticleModel(NamedTuple):
    """Everything constant in a rollout.

    Attributes:
        mass: [P] kg; the entries of handles are ignored.
        free_mask: [P] float 1.0 for free point masses, 0.0 for handles.
        free_scatter: [F, P] one-hot rows mapping the F free particles to particles.
        handle_index: [H] long indices of the handles among the particles.
        handle_scatter: [H, P] one-hot rows mapping handle values to particles.
        gravity: [d] m/s^2.
        drag: [] linear drag coefficient, N·s/m (force -drag·v on every free particle).
        springs: bilateral springs, cables and bending springs, or None.
        triangles: cloth membrane, or None.
        ground: contact plane, or None.
        up_axis: index of the vertical axis.
        tetrahedra: FEM solid elements, or None.
    """

    mass: Tensor
    free_mask: Tensor
    free_scatter: Tensor
    handle_index: Tensor
    handle_scatter: Tensor
    gravity: Tensor
    drag: Tensor
    springs: Springs | None
    triangles: Triangles | None
    ground: Ground | None
    up_axis: int = 1
    tetrahedra: Tetrahedra | None = None

    @property
    def num_particles(self) -> int:
        return self.mass.shape[0]

    @property
    def dim(self) -> int:
        return self.gravity.shape[0]

    @property
    def num_free(self) -> int:
        return self.free_scatter.shape[0]

    def to(self, device=None, dtype=None) -> ParticleModel:
        """Copy with floating tensors cast to ``dtype`` and all tensors moved to ``device``."""
        return map_tensors(self, lambda t: cast_tensor(t, device, dtype))


class ParticleState(NamedTuple):
    """Dynamic state of N envs.

    Attributes:
        x: [N, P, d] positions, m.
        v: [N, P, d] velocities, m/s (handles: their commanded velocity).
        x_prev: [N, P, d] positions one step earlier (BDF2 history).
        v_prev: [N, P, d] velocities one step earlier (BDF2 history).
        has_prev: [N] bool, whether x_prev/v_prev hold a real previous step. A step from a
            state without history is a BDF1 (backward Euler) step.
    """

    x: Tensor
    v: Tensor
    x_prev: Tensor
    v_prev: Tensor
    has_prev: Tensor

    @staticmethod
    def without_history(x: Tensor, v: Tensor) -> ParticleState:
        """A state with positions ``x`` and velocities ``v`` [N, P, d] and no BDF2 history."""
        return ParticleState(x, v, x, v, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))




class ParticleControl(NamedTuple):
    """What drives the particles during a step (held over its substeps).

    Attributes:
        handle_velocity: [N, H, d] commanded velocities of the handles, m/s; or None with ``handle_map``.
        activation: [N, T] muscle activations of ``model.tetrahedra`` (None: passive muscles).
        handle_map: (action [N, A], basis [A, H, d] m/s) standing for handle_velocity = action @ basis (the payload envs'
            commands), which the fused C step computes in place (no [N, H, d] tensor, no matmul call); every other
            path takes ``velocities()``. None: ``handle_velocity`` is given.
    """

    handle_velocity: Tensor | None
    activation: Tensor | None = None
    handle_map: tuple[Tensor, Tensor] | None = None

    def velocities(self) -> Tensor:
        """[N, H, d] the handle velocities, m/s: ``handle_velocity``, or ``action @ basis`` of ``handle_map``."""
        if self.handle_velocity is not None:
            return self.handle_velocity
        if self.handle_map is None:
            raise ValueError("ParticleControl: neither handle_velocity nor handle_map is given")
        action, basis = self.handle_map
        return torch.mm(action, basis.flatten(1)).view(action.shape[0], *basis.shape[1:])

    def tensors(self) -> list[Tensor]:
        """The control's tensors (handle velocities or the map's action and basis; activations): what autograd checks."""
        found = [self.handle_velocity] if self.handle_velocity is not None else list(self.handle_map or ())
        return found + ([self.activation] if self.activation is not None else [])
