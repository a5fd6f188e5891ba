"""The PODS task suite (Zamora et al. 2021, section 4 and appendix A.2) as ``PayloadEnv``s.

Cable-driven payloads: kinematic handles whose velocities are the actions drag point-mass
payloads through cables (tension-only springs) and stiff springs. World: y is up, gravity
9.81 m/s², the payload's target is centred at the origin. 150 steps of 24 ms (cloth: 60
steps of 16 ms).

Integrators: ``integrator="semi_implicit"`` (default; symplectic Euler with ``substeps`` per
step) or ``integrator="bdf2"``, the paper's implicit scheme (Newton per step, adjoint
gradients). BDF2 is about 10x slower here because its dense Newton Jacobians come from
autograd. On the cloth, violent random corner motions buckle the sheet (a bifurcation where
Newton on |G| can stall between roots); the solver then restarts from a minimiser of the
step's incremental potential (see ``tphys.particles.implicit``) and converges.
``backend`` ("auto" | "triton" | "cpu" | "torch", default "auto"): the semi-implicit step runs as one fused C kernel
on CPU when no gradient is needed and the model is springs and cables only (every task but the cloth;
``tphys.particles.fused_step``), the torch ops otherwise; "torch" forces the torch ops.

State sizes against the paper's table 2 (observation = handle coordinates + payload
positions + payload velocities):
    pendulum2d         1 + 2 + 2      =   5   (table:   5)
    pendulum3d         2 + 3 + 3      =   8   (table:   8)
    double_pendulum3d  2 + 6 + 6      =  14   (table:  14)
    cable_payload2d    2 + 8 + 8      =  18   (table:  10 = 2*4 + 2, which leaves out the
                                               payload velocities; "go to stop" needs them)
    rope3d             2 + 15 + 15    =  32   (table: "3*5*2 + 2 = 34"; the formula gives 32)
    cloth              12 + 75 + 75   = 162   (table: 162)

Reward weights of Eq. 15 (r = -w_p|p|² - w_x|x|² - w_v|v|² - w_a|a|², a the handle
velocity in m/s, sums over all handles and payload particles):
    goal "stop":            w_p = 0,    w_x = 0,   w_v = 1, w_a = 0.01
    goal "stop_at_origin":  w_p = 0.1,  w_x = 1,   w_v = 1, w_a = 0.01
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tphys.envs.payload import OPTION_RANGES, PayloadEnv, PayloadTask, RewardWeights
from tphys.envs.ranges import NON_NEGATIVE, POSITIVE, check_ranges, int_at_least, ranges_for
from tphys.envs.registry import register
from tphys.particles import ParticleBuilder

WEIGHTS = {
    "stop": RewardWeights(handle_position=0.0, payload_position=0.0, payload_velocity=1.0, action=0.01),
    "stop_at_origin": RewardWeights(handle_position=0.1, payload_position=1.0, payload_velocity=1.0, action=0.01),
}

SLACK_WIDTH = 1e-3  # m, ParticleBuilder's default cable slack width
G = 9.81  # m/s²

ENV_OPTIONS = ("goal", "integrator", "substeps", "newton_tol", "newton_max_iter", "validate", "seed", "horizon", "backend")

# Valid range of every physical parameter of the suite (the *_DEFAULTS below, SI units) and of the env's numeric
# options (tphys.envs.payload.OPTION_RANGES); make() checks them before building anything. Zero turns off the
# bending springs, the grip's rest length, damping, drag and friction; max_angle / max_omega / max_speed are the
# spreads of the random initial states; cloth rows >= 2 (the 4 corners are distinct particles).
PARAMETER_RANGES = dict(
    mass=POSITIVE, length=POSITIVE, segment=POSITIVE, side=POSITIVE, cable_length=POSITIVE, spacing=POSITIVE, grip_length=NON_NEGATIVE,
    stiffness=POSITIVE, link_stiffness=POSITIVE, frame_stiffness=POSITIVE, grip_stiffness=POSITIVE, bending_stiffness=NON_NEGATIVE,
    mu=POSITIVE, lam=NON_NEGATIVE, damping=NON_NEGATIVE, spring_damping=NON_NEGATIVE, drag=NON_NEGATIVE,
    contact_stiffness=POSITIVE, contact_damping=NON_NEGATIVE, friction=NON_NEGATIVE, slip=POSITIVE,
    max_handle_speed=POSITIVE, max_angle=NON_NEGATIVE, max_omega=NON_NEGATIVE, max_speed=NON_NEGATIVE,
    masses=int_at_least(1), rows=int_at_least(2),
    **OPTION_RANGES,
)  # fmt: skip


def _uniform(gen: torch.Generator, n: int, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=gen, dtype=torch.float64)


def _random_sign(gen: torch.Generator, n: int) -> Tensor:
    return torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)


def _hanging_direction_3d(gen: torch.Generator, n: int, max_tilt: float) -> Tensor:
    """[n, 3] unit vectors tilted up to ``max_tilt`` rad from straight down (-y)."""
    tilt = _uniform(gen, n, 0.0, max_tilt)
    azimuth = _uniform(gen, n, 0.0, 2 * math.pi)
    return torch.stack([torch.sin(tilt) * torch.cos(azimuth), -torch.cos(tilt), torch.sin(tilt) * torch.sin(azimuth)], -1)


def _random_perpendicular(gen: torch.Generator, direction: Tensor) -> Tensor:
    """[n, 3] random unit vectors perpendicular to the unit vectors ``direction``."""
    raw = torch.randn(direction.shape, generator=gen, dtype=torch.float64)
    raw = raw - (raw * direction).sum(-1, keepdim=True) * direction
    return raw / raw.norm(dim=-1, keepdim=True)


def _horizontal_offset(gen: torch.Generator, n: int, dim: int, spread: float) -> Tensor:
    """[n, 1, d] random horizontal translation in [-spread, spread] on every horizontal axis."""
    offset = _uniform(gen, n, -spread, spread, 1, dim)
    offset[..., 1] = 0.0
    return offset


def _taut_stretch(load, stiffness: float):
    """Stretch (m) at which a cable of ``stiffness`` (N/m) carries ``load`` (N) at rest.

    Solves k·(s - w/2) = load on the linear branch of ``forces.smooth_ramp`` (w = 1 mm, the
    builder's default slack width), so initial states start with quiet, fully taut cables.
    """
    return load / stiffness + 0.5 * SLACK_WIDTH


def _make_env(name: str, task_fn, task_kwargs: dict, num_envs, device, dtype, overrides: dict) -> PayloadEnv:
    env_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in ENV_OPTIONS}
    unknown = [k for k in overrides if k not in task_kwargs]
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for this env; env options: {', '.join(ENV_OPTIONS)}; "
            f"physical parameters: {', '.join(sorted(task_kwargs))}"
        )
    check_ranges(name, {**task_kwargs, **overrides}, PARAMETER_RANGES)
    task = task_fn(**{**task_kwargs, **overrides})
    return PayloadEnv(task, num_envs=num_envs, device=device, dtype=dtype, **env_kwargs)


def _parameters(defaults: dict) -> dict:
    """The registry's ``defaults`` and ``ranges`` of a task with these physical defaults."""
    return dict(defaults=defaults, ranges=ranges_for(PARAMETER_RANGES, (*defaults, *ENV_OPTIONS)))


# ---------------------------------------------------------------------------- pendulums
PENDULUM_DEFAULTS = dict(mass=0.05, length=0.5, stiffness=500.0, damping=1.0, drag=0.0, max_handle_speed=1.5, max_angle=0.6, max_omega=3.0)


def pendulum_task(dim: int, mass, length, stiffness, damping, drag, max_handle_speed, max_angle, max_omega) -> PayloadTask:
    """A point mass on a cable below a handle that slides on a horizontal line (2-D) or plane (3-D)."""
    b = ParticleBuilder(dim=dim, drag=drag)
    top = [0.0, length] + [0.0] * (dim - 2)
    handle = b.add_handle(top)
    bob = b.add_particle([0.0] * dim, mass)
    b.add_cable(handle, bob, stiffness, damping)
    model, reference = b.build()
    axes = [0] if dim == 2 else [0, 2]
    basis = torch.zeros(len(axes), 1, dim, dtype=torch.float64)
    for a, axis in enumerate(axes):
        basis[a, 0, axis] = 1.0
    sag = _taut_stretch(mass * G, stiffness)

    def sample(model, reference, n, gen):
        offset = _horizontal_offset(gen, n, dim, 0.5)
        if dim == 2:
            angle = _uniform(gen, n, -max_angle, max_angle)
            direction = torch.stack([torch.sin(angle), -torch.cos(angle)], -1)
            tangent = torch.stack([torch.cos(angle), torch.sin(angle)], -1)
        else:
            direction = _hanging_direction_3d(gen, n, max_angle)
            tangent = _random_perpendicular(gen, direction)
        speed = (length * _uniform(gen, n, 0.3, 1.0) * max_omega).unsqueeze(-1)
        x = reference.expand(n, -1, -1) + offset
        x = torch.stack([x[:, 0], x[:, 0] + (length + sag) * direction], 1)
        v = torch.stack([torch.zeros_like(tangent), speed * tangent], 1)
        return x, v

    return PayloadTask(
        name=f"pendulum{dim}d",
        model=model,
        reference=reference,
        action_basis=basis,
        max_handle_speed=max_handle_speed,
        dt=0.024,
        horizon=150,
        substeps=16,
        sample_initial=sample,
        weights=WEIGHTS,
    )


@register("pendulum2d", "2-D cable pendulum (50 g), handle slides on a horizontal line; state 5, action 1",
          **_parameters(PENDULUM_DEFAULTS))
def make_pendulum2d(num_envs, device, dtype, **overrides):
    return _make_env("pendulum2d", lambda **kw: pendulum_task(2, **kw), PENDULUM_DEFAULTS, num_envs, device, dtype, overrides)


@register("pendulum3d", "3-D cable pendulum (50 g), handle moves on a horizontal plane; state 8, action 2",
          **_parameters(PENDULUM_DEFAULTS))
def make_pendulum3d(num_envs, device, dtype, **overrides):
    return _make_env("pendulum3d", lambda **kw: pendulum_task(3, **kw), PENDULUM_DEFAULTS, num_envs, device, dtype, overrides)


# ---------------------------------------------------------------------------- double pendulum
DOUBLE_DEFAULTS = dict(
    mass=0.05, length=0.3, stiffness=500.0, link_stiffness=2000.0, damping=1.0, drag=0.0,
    max_handle_speed=1.5, max_angle=0.5, max_speed=1.0,
)  # fmt: skip


def double_pendulum_task(mass, length, stiffness, link_stiffness, damping, drag, max_handle_speed, max_angle, max_speed):
    """Handle -cable-> mass 1 -stiff bilateral spring-> mass 2, in 3-D; the handle moves on a plane."""
    b = ParticleBuilder(dim=3, drag=drag)
    handle = b.add_handle([0.0, 2 * length, 0.0])
    m1 = b.add_particle([0.0, length, 0.0], mass)
    m2 = b.add_particle([0.0, 0.0, 0.0], mass)
    b.add_cable(handle, m1, stiffness, damping)
    b.add_spring(m1, m2, link_stiffness, damping)
    model, reference = b.build()
    basis = torch.zeros(2, 1, 3, dtype=torch.float64)
    basis[0, 0, 0] = basis[1, 0, 2] = 1.0

    def sample(model, reference, n, gen):
        top = reference[0].expand(n, 3) + _horizontal_offset(gen, n, 3, 0.5)[:, 0]
        d1 = _hanging_direction_3d(gen, n, max_angle)
        d2 = _hanging_direction_3d(gen, n, max_angle)
        p1 = top + (length + _taut_stretch(2 * mass * G, stiffness)) * d1
        p2 = p1 + (length + mass * G / link_stiffness) * d2
        v1 = _uniform(gen, n, 0.3, 1.0).unsqueeze(-1) * max_speed * _random_perpendicular(gen, d1)
        v2 = v1 + _uniform(gen, n, 0.3, 1.0).unsqueeze(-1) * max_speed * _random_perpendicular(gen, d2)
        return torch.stack([top, p1, p2], 1), torch.stack([torch.zeros_like(v1), v1, v2], 1)

    return PayloadTask(
        name="double_pendulum3d",
        model=model,
        reference=reference,
        action_basis=basis,
        max_handle_speed=max_handle_speed,
        dt=0.024,
        horizon=150,
        substeps=16,
        sample_initial=sample,
        weights=WEIGHTS,
    )


@register("double_pendulum3d", "3-D double pendulum (2 x 50 g, cable + stiff link), handle on a plane; state 14, action 2",
          **_parameters(DOUBLE_DEFAULTS))
def make_double_pendulum3d(num_envs, device, dtype, **overrides):
    return _make_env("double_pendulum3d", double_pendulum_task, DOUBLE_DEFAULTS, num_envs, device, dtype, overrides)


# ---------------------------------------------------------------------------- cable-driven payload
PAYLOAD_DEFAULTS = dict(
    mass=0.05, side=0.2, cable_length=0.4, stiffness=500.0, frame_stiffness=2000.0, damping=1.0, drag=0.0,
    max_handle_speed=1.5, max_angle=0.4, max_omega=3.0,
)  # fmt: skip


def cable_payload_task(mass, side, cable_length, stiffness, frame_stiffness, damping, drag, max_handle_speed, max_angle, max_omega):
    """A square of 4 masses braced by 6 stiff springs, hung by two cables from two handles on one line."""
    b = ParticleBuilder(dim=2, drag=drag)
    h = side / 2
    top = cable_length + side / 2
    handles = [b.add_handle([-h, top]), b.add_handle([h, top])]
    corners = [b.add_particle(p, mass) for p in ([-h, h], [h, h], [-h, -h], [h, -h])]
    for i in range(4):
        for j in range(i + 1, 4):
            b.add_spring(corners[i], corners[j], frame_stiffness, damping)
    b.add_cable(handles[0], corners[0], stiffness, damping)
    b.add_cable(handles[1], corners[1], stiffness, damping)
    model, reference = b.build()
    basis = torch.zeros(2, 2, 2, dtype=torch.float64)
    basis[0, 0, 0] = basis[1, 1, 0] = 1.0
    sag = _taut_stretch(2 * mass * G, stiffness)

    def sample(model, reference, n, gen):
        x = reference.expand(n, -1, -1) + _horizontal_offset(gen, n, 2, 0.4)
        angle = _uniform(gen, n, -max_angle, max_angle)
        swing = torch.stack([torch.sin(angle), 1.0 - torch.cos(angle)], -1) * (cable_length + sag)
        swing[:, 1] -= sag
        speed = _random_sign(gen, n) * _uniform(gen, n, 0.3, 1.0) * max_omega * cable_length
        velocity = speed.unsqueeze(-1) * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
        free = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)[:, None]
        x = x + free * swing.unsqueeze(1)
        spin = _uniform(gen, n, -1.0, 1.0)  # rad/s about the payload centre
        centre = x[:, 2:].mean(1, keepdim=True)
        arm = x - centre
        v = free * (velocity.unsqueeze(1) + spin[:, None, None] * torch.stack([-arm[..., 1], arm[..., 0]], -1))
        return x, v

    return PayloadTask(
        name="cable_payload2d",
        model=model,
        reference=reference,
        action_basis=basis,
        max_handle_speed=max_handle_speed,
        dt=0.024,
        horizon=150,
        substeps=16,
        sample_initial=sample,
        weights=WEIGHTS,
    )


@register("cable_payload2d", "2-D payload of 4 braced masses (200 g) on 2 cables from 2 handles on a line; state 18, action 2",
          **_parameters(PAYLOAD_DEFAULTS))
def make_cable_payload2d(num_envs, device, dtype, **overrides):
    return _make_env("cable_payload2d", cable_payload_task, PAYLOAD_DEFAULTS, num_envs, device, dtype, overrides)


# ---------------------------------------------------------------------------- rope
ROPE_DEFAULTS = dict(
    masses=5, mass=0.05, segment=0.1, stiffness=500.0, bending_stiffness=5.0, damping=1.0, drag=0.0,
    max_handle_speed=1.5, max_angle=0.5, max_omega=3.0,
)  # fmt: skip


def rope_task(masses, mass, segment, stiffness, bending_stiffness, damping, drag, max_handle_speed, max_angle, max_omega):
    """A chain of point masses joined by cables, with bending springs across every second mass."""
    b = ParticleBuilder(dim=3, drag=drag)
    length = masses * segment
    handle = b.add_handle([0.0, length, 0.0])
    chain = [handle] + [b.add_particle([0.0, length - (k + 1) * segment, 0.0], mass) for k in range(masses)]
    for i, j in zip(chain[:-1], chain[1:]):
        b.add_cable(i, j, stiffness, damping)
    for i, j in zip(chain[:-2], chain[2:]):
        b.add_spring(i, j, bending_stiffness)
    model, reference = b.build()
    basis = torch.zeros(2, 1, 3, dtype=torch.float64)
    basis[0, 0, 0] = basis[1, 0, 2] = 1.0

    def sample(model, reference, n, gen):
        top = reference[0].expand(n, 3) + _horizontal_offset(gen, n, 3, 0.5)[:, 0]
        direction = _hanging_direction_3d(gen, n, max_angle)
        axis = _random_perpendicular(gen, direction)  # rotation axis of a rigid swing
        omega = (_uniform(gen, n, 0.3, 1.0) * max_omega).unsqueeze(-1) * axis
        # Each cable pre-stretched to carry the weight below it (k·(s - w/2) = load), so the
        # stiff cable modes start quiet.
        load = mass * G * torch.arange(masses, 0, -1, dtype=torch.float64)
        lengths = segment + _taut_stretch(load, stiffness)
        radius = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(lengths, 0)])
        arm = radius[None, :, None] * direction[:, None, :]
        return top[:, None] + arm, torch.cross(omega[:, None, :].expand_as(arm), arm, dim=-1)

    return PayloadTask(
        name="rope3d",
        model=model,
        reference=reference,
        action_basis=basis,
        max_handle_speed=max_handle_speed,
        dt=0.024,
        horizon=150,
        substeps=16,
        sample_initial=sample,
        weights=WEIGHTS,
    )


@register("rope3d", "3-D rope of 5 masses (250 g) joined by cables, one handle on a plane; state 32, action 2", aliases=("rope",),
          **_parameters(ROPE_DEFAULTS))
def make_rope3d(num_envs, device, dtype, **overrides):
    return _make_env("rope3d", rope_task, ROPE_DEFAULTS, num_envs, device, dtype, overrides)


# ---------------------------------------------------------------------------- cloth
CLOTH_DEFAULTS = dict(
    rows=5, mass=0.004, spacing=0.1, mu=200.0, lam=100.0, bending_stiffness=2.0, grip_stiffness=200.0,
    grip_length=0.0, spring_damping=0.05, drag=0.01, contact_stiffness=1000.0, contact_damping=10.0, friction=0.5, slip=0.01,
    max_handle_speed=1.0, max_speed=0.5,
)  # fmt: skip


def cloth_task(rows, mass, spacing, mu, lam, bending_stiffness, grip_stiffness, grip_length, spring_damping, drag,
               contact_stiffness, contact_damping, friction, slip, max_handle_speed, max_speed):  # fmt: skip
    """A square co-rotational cloth held at its 4 corners by 4 free-moving handles, over a table at y = 0."""
    b = ParticleBuilder(dim=3, drag=drag)
    half = (rows - 1) * spacing / 2
    grid = [[b.add_particle([-half + c * spacing, 0.0, -half + r * spacing], mass) for c in range(rows)] for r in range(rows)]
    b.set_membrane(mu, lam)
    for r in range(rows - 1):
        for c in range(rows - 1):
            b.add_triangle(grid[r][c], grid[r][c + 1], grid[r + 1][c + 1])
            b.add_triangle(grid[r][c], grid[r + 1][c + 1], grid[r + 1][c])
    for r in range(rows):
        for c in range(rows):
            if c + 2 < rows:
                b.add_spring(grid[r][c], grid[r][c + 2], bending_stiffness, spring_damping)
            if r + 2 < rows:
                b.add_spring(grid[r][c], grid[r + 2][c], bending_stiffness, spring_damping)
    corners = [grid[0][0], grid[0][-1], grid[-1][0], grid[-1][-1]]
    for corner in corners:
        handle = b.add_handle([b.positions[corner][0], grip_length, b.positions[corner][2]])
        # A zero-length grip (the default) pulls with k·(x_handle - x_corner), linear and smooth;
        # axial damping would depend on the undefined direction at zero length, so it has none.
        b.add_spring(handle, corner, grip_stiffness, spring_damping if grip_length > 0 else 0.0)
    b.set_ground(height=0.0, stiffness=contact_stiffness, damping=contact_damping, friction=friction, slip=slip)
    model, reference = b.build()
    num_handles = len(corners)
    basis = torch.zeros(3 * num_handles, num_handles, 3, dtype=torch.float64)
    for h in range(num_handles):
        for axis in range(3):
            basis[3 * h + axis, h, axis] = 1.0

    def sample(model, reference, n, gen):
        offset = _horizontal_offset(gen, n, 3, 0.2)
        offset[..., 1] = _uniform(gen, n, 0.15, 0.3, 1)
        x = reference.expand(n, -1, -1) + offset
        free = model.free_mask[:, None]
        v = free * _uniform(gen, n, -max_speed, max_speed, 1, 3)
        return x, v

    return PayloadTask(
        name="cloth",
        model=model,
        reference=reference,
        action_basis=basis,
        max_handle_speed=max_handle_speed,
        dt=0.016,
        horizon=60,
        substeps=20,
        sample_initial=sample,
        weights=WEIGHTS,
    )


@register(
    "cloth",
    "5x5 co-rotational cloth (100 g) held at 4 corners by free 3-D handles, laid on a frictional table; state 162, action 12",
    **_parameters(CLOTH_DEFAULTS),
)
def make_cloth(num_envs, device, dtype, **overrides):
    return _make_env("cloth", cloth_task, CLOTH_DEFAULTS, num_envs, device, dtype, overrides)
