"""Constants and state of a batched articulated rigid-body system in generalized coordinates.

Conventions (SI units, MuJoCo's layout so that MJCF models and MuJoCo results compare directly):
    N   envs in the batch (leading dim of every state tensor)
    L   links: one per joint of an MJCF body (a body with k joints is a chain of k links, the
        first k-1 massless; a body without joints is one link with a fixed joint). Links are
        sorted by depth, so ``model.levels`` are contiguous slices and a link's parent comes first.
    nq  generalized positions: hinge/slide 1, ball 4 (quaternion w, x, y, z), free 7 (position, quaternion)
    D   generalized velocities (dofs): hinge/slide 1, ball 3 (body-frame angular velocity),
        free 6 (world linear velocity of the joint anchor, then body-frame angular velocity)
    C   contact points (sphere centres, capsule end-points, box corners), each with a radius
    A   actuators (motors: torque = gear · control)
    M   muscles (``tphys.rigid.muscles``: tension = max force · activation along a path of via points)

World frame: z up, gravity ``model.gravity``. Spatial vectors are Plücker coordinates in world
axes taken at the world origin (see ``tphys.math``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from tphys.autodiff import cast_tensor, map_tensors

if TYPE_CHECKING:
    from tphys.rigid.muscles import Muscles

JOINT_TYPES = ("free", "ball", "slide", "hinge", "fixed")


class Links(NamedTuple):
    """The kinematic tree, joints grouped by type for batched transforms.

    Attributes:
        parent: [L] long, parent link (-1: world).
        offset_pos: [L, 3] m, link frame origin in the parent frame at q = ref (MJCF body pos).
        offset_rot: [L, 3, 3] rotation of the link frame in the parent frame at q = ref.
        order: [L] long, position of each link in the concatenation hinge | slide | ball | free | fixed.
        hinge, slide, ball, free, fixed: [L_t] long link indices of each joint type.
        hinge_q, slide_q, ball_q, free_q: [L_t] long first generalized-position index of each joint.
        ball_dof, free_dof: [L_t] long first dof index of each ball / free joint.
        hinge_axis, slide_axis: [L_t, 3] unit axes in the link frame.
        hinge_anchor, ball_anchor: [L_t, 3] m, rotation centre in the link frame.
        hinge_ref, slide_ref: [L_t] joint value at which the link sits at its offset (MJCF ``ref``).
        mass: [L] kg (0 for the massless links of multi-joint bodies).
        com: [L, 3] m, centre of mass in the link frame.
        inertia: [L, 3, 3] kg·m², about the centre of mass, link axes.
        levels: tuple of (start, stop) link slices of equal depth.
    """

    parent: Tensor
    offset_pos: Tensor
    offset_rot: Tensor
    order: Tensor
    hinge: Tensor
    slide: Tensor
    ball: Tensor
    free: Tensor
    fixed: Tensor
    hinge_q: Tensor
    slide_q: Tensor
    ball_q: Tensor
    free_q: Tensor
    ball_dof: Tensor
    free_dof: Tensor
    hinge_axis: Tensor
    slide_axis: Tensor
    hinge_anchor: Tensor
    ball_anchor: Tensor
    hinge_ref: Tensor
    slide_ref: Tensor
    mass: Tensor
    com: Tensor
    inertia: Tensor
    levels: tuple


class Dofs(NamedTuple):
    """Per generalized velocity.

    Attributes:
        link: [D] long, the link whose joint owns the dof.
        axis: [D, 3] unit axis (link frame; world frame where ``world_fixed``).
        anchor: [D, 3] m, rotation centre in the link frame (rotational dofs).
        rotational: [D] 1.0 for rotations, 0.0 for translations.
        world_fixed: [D] 1.0 for the free joint's translations (axes fixed in the world).
        ancestor: [L, D] 1.0 where the dof moves the link (its joint is on the path from the root).
        armature: [D] kg·m² (or kg), added to the mass matrix diagonal.
        damping: [D] N·m·s/rad (or N·s/m), passive torque -damping·qd.
        scalar: [Ds] long, the hinge and slide dofs (those with a scalar position).
        scalar_q: [Ds] long, their generalized-position index.
        stiffness: [Ds] passive spring -stiffness·(q - springref).
        springref: [Ds] spring rest position.
        limited: [Ds] 1.0 where the joint range applies.
        lower, upper: [Ds] joint range (rad or m).
    """

    link: Tensor
    axis: Tensor
    anchor: Tensor
    rotational: Tensor
    world_fixed: Tensor
    ancestor: Tensor
    armature: Tensor
    damping: Tensor
    scalar: Tensor
    scalar_q: Tensor
    stiffness: Tensor
    springref: Tensor
    limited: Tensor
    lower: Tensor
    upper: Tensor


class ContactPoints(NamedTuple):
    """Points of the collision shapes that touch the ground plane z = 0 (DFlex's contact model).

    Attributes:
        link: [C] long.
        pos: [C, 3] m, in the link frame.
        radius: [C] m (0 for box corners).
    """

    link: Tensor
    pos: Tensor
    radius: Tensor


SHAPE_KINDS = ("sphere", "capsule", "box", "cylinder", "ellipsoid")


class Shapes(NamedTuple):
    """The geometric shapes (MJCF geoms) attached to links, for kinematic coupling and drawing.

    Attributes:
        link: [G] long.
        pos: [G, 3] m, shape centre in the link frame.
        rot: [G, 3, 3] shape axes in the link frame (capsules and cylinders lie along their z axis).
        kind: [G] long index into ``SHAPE_KINDS``.
        size: [G, 3] m, MuJoCo's size: sphere (r, -, -), capsule/cylinder (r, half length, -),
            box (half extents), ellipsoid (radii).
    """

    link: Tensor
    pos: Tensor
    rot: Tensor
    kind: Tensor
    size: Tensor


class Actuators(NamedTuple):
    """Motors on dofs: generalized force = gear · clamp(control, lower, upper).

    Attributes:
        dof: [A] long.
        gear: [A] N·m (or N) per unit control.
        lower, upper: [A] control range (±inf when unlimited).
    """

    dof: Tensor
    gear: Tensor
    lower: Tensor
    upper: Tensor


class Material(NamedTuple):
    """Penalty parameters (scalar tensors, so they can be identified by gradient descent).

    Attributes:
        contact_ke: N/m, normal stiffness of the ground.
        contact_kd: N·s/m², normal damping per metre of penetration (DFlex: scales with depth).
        contact_kf: N·s/m, viscous friction slope, capped by Coulomb.
        contact_mu: Coulomb friction coefficient.
        limit_ke: N·m/rad (N/m), joint-limit penalty stiffness (a scalar, or [Ds] one per hinge/slide dof).
        limit_kd: N·m·s/rad, joint-limit damping (applied outside the range only; scalar or [Ds]).
    """

    contact_ke: Tensor
    contact_kd: Tensor
    contact_kf: Tensor
    contact_mu: Tensor
    limit_ke: Tensor
    limit_kd: Tensor


def material(contact_ke=1e4, contact_kd=1e3, contact_kf=1e3, contact_mu=0.9, limit_ke=1e3, limit_kd=10.0,
             dtype=torch.float64, device=None) -> Material:
    """A ``Material`` from numbers (defaults: DFlex's hopper contact, its joint limits for every task)."""
    values = (contact_ke, contact_kd, contact_kf, contact_mu, limit_ke, limit_kd)
    return Material(*[torch.as_tensor(v, dtype=dtype, device=device) for v in values])


class RigidModel(NamedTuple):
    """Everything constant during a rollout (shared by the envs of a batch).

    Attributes:
        links, dofs, contacts, shapes, actuators, material: see their classes.
        gravity: [3] m/s².
        q0: [nq] default generalized positions (MJCF qpos0: ``ref`` values, free/ball bodies at their pose).
        names: dict with ``bodies`` {name: link}, ``joints`` {name: (q index, dof index, type)},
            ``actuators`` [names], ``shapes`` [names] and ``body_links`` [link of each MJCF body, world excluded].
        muscles: ``tphys.rigid.muscles.Muscles``, or None for a model without muscles.
    """

    links: Links
    dofs: Dofs
    contacts: ContactPoints
    shapes: Shapes
    actuators: Actuators
    material: Material
    gravity: Tensor
    q0: Tensor
    names: dict
    muscles: Muscles | None = None

    @property
    def num_links(self) -> int:
        return self.links.parent.shape[0]

    @property
    def nq(self) -> int:
        return self.q0.shape[0]

    @property
    def nv(self) -> int:
        return self.dofs.link.shape[0]

    @property
    def num_actuators(self) -> int:
        return self.actuators.dof.shape[0]

    @property
    def num_muscles(self) -> int:
        return 0 if self.muscles is None else self.muscles.count

    @property
    def dtype(self) -> torch.dtype:
        return self.q0.dtype

    def to(self, device=None, dtype=None) -> RigidModel:
        return map_tensors(self, lambda t: cast_tensor(t, device, dtype))


class RigidState(NamedTuple):
    """Batched state: ``q`` [N, nq] generalized positions, ``qd`` [N, D] generalized velocities."""

    q: Tensor
    qd: Tensor
