"""The DFlex tasks (DiffRL ``envs/*.py``, the rigid half of SHAC's and SAPO's evaluations) as ``RigidEnv``s.

Frames of 1/60 s; actions in [-1, 1] scaled by the motor gears; DFlex's stochastic initial states.
World: z up (DFlex is y up; heights and "up" below are along z), forward is +x.

    name              obs / act  substeps  episode  early termination         reward
    cartpole_swingup    5 /  1       4       240    none                      -(θ² + 0.1θ̇² + 0.05x² + 0.1ẋ²)
    hopper             11 /  3      16      1000    height < -0.45 (rel.)     ẋ + height + (1 - θ²/(π/6)²) - 0.1|a|²
    cheetah            17 /  6      16      1000    none                      ẋ - 0.1|a|²
    ant                37 /  8      16      1000    torso height < 0.27 m     ẋ + 0.1·up + heading + (h - 0.27)
    humanoid           76 / 21      48      1000    torso height < 0.74 m     ẋ + 0.1·up + heading + height - 0.002|a|²

Observations (DFlex's order):
    cartpole_swingup  [x, ẋ, sin θ, cos θ, θ̇]  (θ = 0: pole up; episodes start hanging, θ = -π)
    hopper, cheetah   [q without root x, qd]: hopper's root height is relative to its start (1.25 m)
    ant, humanoid     [torso height, torso quaternion (w, x, y, z), torso linear velocity (world),
                       angular velocity (world), joint angles, 0.1 · joint velocities, up (z of the
                       torso's z axis), heading (torso x axis · direction to a target far along +x),
                       the action just applied]
Height rewards (hopper, humanoid): d = height - (termination + tolerance) clipped to [-1, tol];
-200·d² below zero, scale·d above (hopper: tol 0.3 above -0.3, scale 1; humanoid: tol 0.1, scale 10).
The quaternion is (w, x, y, z) relative to the start orientation, where DFlex gives its y-up (x, y, z, w).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tphys.envs.ranges import ranges_for
from tphys.envs.registry import register
from tphys.envs.rigid_env import PARAMETER_RANGES, RigidEnv, RigidTask
from tphys.envs.snu_humanoid import SNU_HUMANOID
from tphys.math import quat_mul, quat_to_matrix
from tphys.rigid.model import RigidModel

ENV_OPTIONS = ("goal", "substeps", "horizon", "early_termination", "recompute", "compile_substep", "backend", "validate", "seed")


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    """Uniform in [-1, 1), float64."""
    return 2.0 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 1.0


def _height_reward(height_diff: Tensor, tolerance: float, scale: float) -> Tensor:
    d = height_diff.clamp(-1.0, tolerance)
    return torch.where(d < 0.0, -200.0 * d * d, scale * d)


# ---------------------------------------------------------------------------- cart-pole
def _cartpole_initial(model: RigidModel, n: int, gen: torch.Generator):
    q = torch.tensor([0.0, -math.pi], dtype=torch.float64).expand(n, 2) + 0.5 * math.pi * _rand(gen, n, 2)
    qd = 0.25 * _rand(gen, n, 2)
    return q, qd


def _cartpole_observe(model, q, qd, action):
    return torch.stack([q[:, 0], qd[:, 0], torch.sin(q[:, 1]), torch.cos(q[:, 1]), qd[:, 1]], -1)


def _cartpole_reward(obs, action):
    theta = torch.atan2(obs[:, 2], obs[:, 3])  # wrapped to (-π, π]
    return -(theta.square() + 0.1 * obs[:, 4].square() + 0.05 * obs[:, 0].square() + 0.1 * obs[:, 1].square())


def _cartpole_metrics(trajectory, alive):
    """final_abs_angle: |θ| (rad, 0 = upright) and final_abs_position: |x| (m) after the last step."""
    q = trajectory["next", "q"][:, -1]
    return {"final_abs_angle": torch.atan2(torch.sin(q[:, 1]), torch.cos(q[:, 1])).abs(), "final_abs_position": q[:, 0].abs()}


CARTPOLE = RigidTask(name="cartpole_swingup", preset="cartpole", goal="swingup", horizon=240, observation_dim=5,
                     sample_initial=_cartpole_initial, observe=_cartpole_observe, reward=_cartpole_reward,
                     metrics=_cartpole_metrics, contact=False)


def _forward_speed(trajectory, alive):
    """forward_speed: the root's mean x velocity (m/s) over the steps before the episode's termination."""
    speed = trajectory["next", "qd"][..., 0]
    return {"forward_speed": (speed * alive).sum(-1) / alive.sum(-1).clamp_min(1)}


# ---------------------------------------------------------------------------- planar runners
HOPPER_START_HEIGHT = 1.25  # m, torso height at q = 0 of DFlex's root (gymnasium: the rootz ref)
HOPPER_TERMINATION = -0.45  # m below the start height


def _planar_initial(start: list[float], pos_noise: float, angle_noise: float, joint_noise: float, vel_noise: float):
    def sample(model: RigidModel, n: int, gen: torch.Generator):
        q = torch.tensor(start, dtype=torch.float64).expand(n, -1).clone()
        q[:, :2] += pos_noise * _rand(gen, n, 2)
        q[:, 2] = angle_noise * _rand(gen, n)
        q[:, 3:] += joint_noise * _rand(gen, n, model.nq - 3)
        return q, vel_noise * _rand(gen, n, model.nv)

    return sample


def _hopper_observe(model, q, qd, action):
    height = q[:, 1:2] - HOPPER_START_HEIGHT
    return torch.cat([height, q[:, 2:], qd], -1)


def _hopper_reward(obs, action):
    height = _height_reward(obs[:, 0] - (HOPPER_TERMINATION + 0.15), 0.3, 1.0)
    angle = 1.0 - obs[:, 1].square() / (math.pi / 6) ** 2
    return obs[:, 5] + height + angle - 0.1 * action.square().sum(-1)


HOPPER = RigidTask(metrics=_forward_speed, name="hopper", preset="hopper", goal="run", horizon=1000, observation_dim=11,
                   sample_initial=_planar_initial([0.0, HOPPER_START_HEIGHT, 0.0, 0.0, 0.0, 0.0], 0.05, 0.05, 0.05, 0.05),
                   observe=_hopper_observe, reward=_hopper_reward, terminated=lambda obs: obs[:, 0] < HOPPER_TERMINATION)


def _cheetah_observe(model, q, qd, action):
    return torch.cat([q[:, 1:], qd], -1)


CHEETAH = RigidTask(metrics=_forward_speed, name="cheetah", preset="cheetah", goal="run", horizon=1000, observation_dim=17,
                    # gymnasium's torso sits at 0.7 m at q = 0; DFlex starts it at 0.8 m
                    sample_initial=_planar_initial([0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.1, 0.1, 0.1, 0.25),
                    observe=_cheetah_observe, reward=lambda obs, a: obs[:, 8] - 0.1 * a.square().sum(-1))


# ---------------------------------------------------------------------------- free-floating runners
def _free_initial(height: float, joints: list[float] | None):
    """DFlex's stochastic start: ±0.1 m, a tilt up to ±7.5° about a random axis, joints ±0.2, rates ±0.25."""

    def sample(model: RigidModel, n: int, gen: torch.Generator):
        q = model.q0.to(torch.float64).expand(n, -1).clone()
        q[:, :3] = torch.tensor([0.0, 0.0, height], dtype=torch.float64) + 0.1 * _rand(gen, n, 3)
        angle = (math.pi / 24) * _rand(gen, n)
        axis = torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5
        axis = axis / axis.norm(dim=-1, keepdim=True)
        tilt = torch.cat([torch.cos(angle / 2)[:, None], torch.sin(angle / 2)[:, None] * axis], -1)
        q[:, 3:7] = quat_mul(q[:, 3:7], tilt)
        if joints is not None:
            q[:, 7:] = torch.tensor(joints, dtype=torch.float64)
        q[:, 7:] += 0.2 * _rand(gen, n, model.nq - 7)
        return q, 0.25 * _rand(gen, n, model.nv)

    return sample


def _free_observe(model, q, qd, action):
    rot = quat_to_matrix(q[:, 3:7])  # torso -> world
    ang_vel = (rot @ qd[:, 3:6, None])[..., 0]
    to_target = torch.zeros_like(q[:, :3])
    to_target[:, 0] = 1.0  # the target lies 10 km (ant) / 200 m (humanoid) ahead along +x: its direction is +x
    heading = (rot[:, :, 0] * to_target).sum(-1, keepdim=True)
    up = rot[:, 2:3, 2]
    return torch.cat([q[:, 2:3], q[:, 3:7], qd[:, :3], ang_vel, q[:, 7:], 0.1 * qd[:, 6:], up, heading, action], -1)


def _ant_reward(obs, action):
    return obs[:, 5] + 0.1 * obs[:, -10] + obs[:, -9] + (obs[:, 0] - 0.27)


ANT = RigidTask(metrics=_forward_speed, name="ant", preset="ant", goal="run", horizon=1000, observation_dim=37,
                sample_initial=_free_initial(0.75, [0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0]), observe=_free_observe,
                reward=_ant_reward, terminated=lambda obs: obs[:, 0] < 0.27)

HUMANOID_TERMINATION = 0.74


def _humanoid_reward(obs, action):
    up, heading = obs[:, 53], obs[:, 54]
    height = _height_reward(obs[:, 0] - (HUMANOID_TERMINATION + 0.1), 0.1, 10.0)
    return obs[:, 5] + 0.1 * up + heading + height - 0.002 * action.square().sum(-1)


HUMANOID = RigidTask(metrics=_forward_speed, name="humanoid", preset="humanoid", goal="run", horizon=1000, observation_dim=76,
                     sample_initial=_free_initial(1.35, None), observe=_free_observe, reward=_humanoid_reward,
                     terminated=lambda obs: obs[:, 0] < HUMANOID_TERMINATION)


# ---------------------------------------------------------------------------- registry
def _make(task: RigidTask, num_envs, device, dtype, overrides: dict) -> RigidEnv:
    unknown = sorted(set(overrides) - set(ENV_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for env {task.name!r}; env options: {', '.join(ENV_OPTIONS)}")
    return RigidEnv(task, num_envs=num_envs, device=device, dtype=dtype, **overrides)


def _factory(task: RigidTask):
    def make(num_envs, device, dtype, **overrides):
        return _make(task, num_envs, device, dtype, overrides)

    return make


REGISTERED = (  # (task, description, aliases)
    (CARTPOLE, "DFlex cart-pole swing-up (1000 N motor on the cart, no ground); obs 5, action 1, 240 steps", ("cartpole",)),
    (HOPPER, "DFlex Hopper (gymnasium model, penalty ground contact); obs 11, action 3, 1000 steps", ()),
    (CHEETAH, "DFlex HalfCheetah (gymnasium model, penalty ground contact); obs 17, action 6, 1000 steps", ("half_cheetah",)),
    (ANT, "DFlex Ant (gymnasium model, penalty ground contact); obs 37, action 8, 1000 steps", ()),
    (HUMANOID, "DFlex Humanoid (21 motors, 48 substeps, penalty ground contact); obs 76, action 21, 1000 steps", ()),
)
# the registered rigid-body tasks (snu_humanoid, muscle-driven, registers itself in tphys/envs/snu_humanoid.py)
NAMES = tuple(task.name for task, _, _ in REGISTERED) + (SNU_HUMANOID.name,)
for _task, _description, _aliases in REGISTERED:
    register(_task.name, _description, aliases=_aliases, defaults={}, ranges=ranges_for(PARAMETER_RANGES, ENV_OPTIONS))(_factory(_task))
