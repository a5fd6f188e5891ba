"""DFlex's SNUHumanoid (DiffRL ``envs/snu_humanoid.py``): the lower body of the SNU skeleton driven by 152 muscles.

Model: ``tphys/rigid/assets/snu_humanoid.xml`` with ``tphys.rigid.presets.DFLEX["snu_humanoid"]`` (11 box bodies,
free pelvis, ball hips and ankles, hinge knees and toes: nq 29, nv 24; penalty ground contact ke 5e3, kd 2e3,
kf 1e3, mu 0.5; muscle forces 0.36 x the units' f0). Frames of 1/60 s, 48 substeps, 1000 steps.
World: z up, forward +x (DFlex is y up; the skeleton's own axes are x left, y up, z forward).

    action       [N, 152] in [-1, 1]: muscle activation (action + 1) / 2 (DiffRL: actions * 0.5 + 0.5)
    observation  [N, 53]  (DFlex's order)
        0       pelvis height (m)
        1:5     pelvis quaternion (w, x, y, z) relative to the start orientation (DFlex: its raw y-up (x, y, z, w))
        5:8     pelvis origin's linear velocity (world, m/s)
        8:11    pelvis angular velocity (world, rad/s)
        11:33   joint positions (ball joints as (w, x, y, z) quaternions, hinges in rad)
        33:51   0.1 x joint velocities (ball joints: body-frame angular velocity)
        51      up: z of the pelvis's up axis (relative to the start orientation)
        52      heading: its forward axis · the horizontal direction to a target 10 km ahead along +x
    reward       ẋ + 0.1 up + heading - 0.001 Σ activation  (DiffRL computes a height reward but does not add it)
    terminated   pelvis height < 0.46 m, or a diverged simulation (``RigidEnv``)

Initial states (DiffRL's ``stochastic_init``, on in its SNUHumanoid configs): the pelvis 1 m up ± 0.1 m per axis,
turned by up to ±7.5° about a random axis, joints at rest, every generalized velocity ± 0.25.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tphys.envs.ranges import ranges_for
from tphys.envs.registry import register
from tphys.envs.rigid_env import PARAMETER_RANGES, RigidEnv, RigidTask
from tphys.math import quat_mul, quat_to_matrix
from tphys.rigid.model import RigidModel

ENV_OPTIONS = ("goal", "substeps", "horizon", "early_termination", "recompute", "compile_substep", "validate", "seed")
TERMINATION_HEIGHT = 0.46  # m
TARGET_DISTANCE = 10000.0  # m ahead along +x
START_INVERSE = (0.5, -0.5, -0.5, -0.5)  # conjugate of the root body's quat in the asset (skeleton axes -> world)


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    """Uniform in [-1, 1), float64."""
    return 2.0 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 1.0


def sample_initial(model: RigidModel, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """q [n, 29], qd [n, 24] float64: DiffRL's stochastic start around the model's rest pose (``model.q0``)."""
    q = model.q0.to(torch.float64).expand(n, -1).clone()
    q[:, :3] += 0.1 * _rand(gen, n, 3)
    angle = (math.pi / 24) * _rand(gen, n)
    axis = torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5
    axis = axis / axis.norm(dim=-1, keepdim=True)
    tilt = torch.cat([torch.cos(angle / 2)[:, None], torch.sin(angle / 2)[:, None] * axis], -1)
    q[:, 3:7] = quat_mul(q[:, 3:7], tilt)
    return q, 0.25 * _rand(gen, n, model.nv)


def observe(model: RigidModel, q: Tensor, qd: Tensor, action: Tensor) -> Tensor:
    """[N, 53] DFlex's SNUHumanoid observation (see the module docstring) of q [N, 29], qd [N, 24]."""
    rot = quat_to_matrix(q[:, 3:7])  # pelvis -> world
    ang_vel = (rot @ qd[:, 3:6, None])[..., 0]
    turned = quat_mul(q[:, 3:7], torch.tensor(START_INVERSE, dtype=q.dtype, device=q.device).expand(q.shape[0], 4))
    turn = quat_to_matrix(turned)  # rotation since the start orientation (world axes)
    to_target = torch.stack([TARGET_DISTANCE - q[:, 0], -q[:, 1], torch.zeros_like(q[:, 0])], -1)
    heading = (turn[:, :, 0] * to_target).sum(-1, keepdim=True) / to_target.norm(dim=-1, keepdim=True)
    return torch.cat([q[:, 2:3], turned, qd[:, :3], ang_vel, q[:, 7:], 0.1 * qd[:, 6:], turn[:, 2:3, 2], heading], -1)


def reward(obs: Tensor, action: Tensor) -> Tensor:
    """[N]: forward speed + 0.1 up + heading - 0.001 Σ activation, activation = (action + 1) / 2."""
    return obs[:, 5] + 0.1 * obs[:, 51] + obs[:, 52] - 0.001 * (0.5 * action + 0.5).abs().sum(-1)


def _forward_speed(trajectory, alive):
    """forward_speed: the pelvis's mean x velocity (m/s) over the steps before the episode's termination."""
    speed = trajectory["next", "qd"][..., 0]
    return {"forward_speed": (speed * alive).sum(-1) / alive.sum(-1).clamp_min(1)}


SNU_HUMANOID = RigidTask(name="snu_humanoid", preset="snu_humanoid", goal="run", horizon=1000, observation_dim=53,
                         sample_initial=sample_initial, observe=observe, reward=reward,
                         terminated=lambda obs: obs[:, 0] < TERMINATION_HEIGHT, metrics=_forward_speed, muscles=True)


@register("snu_humanoid", "DFlex SNUHumanoid (SNU lower body, 152 muscle-tendon units, 48 substeps, penalty ground contact); "
          "obs 53, action 152, 1000 steps", aliases=("snu",), defaults={}, ranges=ranges_for(PARAMETER_RANGES, ENV_OPTIONS))
def make_snu_humanoid(num_envs, device, dtype, **overrides) -> RigidEnv:
    unknown = sorted(set(overrides) - set(ENV_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for env 'snu_humanoid'; env options: {', '.join(ENV_OPTIONS)}")
    return RigidEnv(SNU_HUMANOID, num_envs=num_envs, device=device, dtype=dtype, **overrides)
