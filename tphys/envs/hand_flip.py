"""HandFlip (SAPO paper; Rewarped's ``dexdeform.Flip``): a kinematic 24-DoF Shadow hand folds a disc of dough in its palm.

The hand: gymnasium-robotics' MuJoCo Shadow hand (``tphys.rigid.shadow_hand``: 24 hinges, 19 collision
capsules and boxes), scaled 2.5x and placed as Rewarped places its copy: the hand-mount frame turned by π
about z and moved to (0.5, 0.3, -0.34), found by fitting our body origins to Rewarped's at the start pose
(they agree to 0.1 mm, ``tests/envs/test_hand_flip.py``). Joints start at DexDeform's
default pose (Rewarped's ``DEFAULT_INITIAL_QPOS``); action a in [-1, 1]^24 moves them by a·0.0264 rad per step
(0.33·0.002·40, Rewarped's scale), clipped to the joint limits, linearly over the substeps. The hand is
one-way coupled to the dough through its shapes' SDFs (friction 0.5, ``tphys.mpm.colliders``).

The dough: von Mises plasticine (E 4 kPa, ν 0.2, yield 130 Pa, density 1, Rewarped's Flip values), 2500
particles of volume 2^-14 m³ (Rewarped's) in a 6 mm thick disc of radius 0.095 m centred at
(0.525, 0.422, 0.548), Rewarped's initial extent, above the palm; MLS-MPM on a 48³ grid over the unit cube,
40 substeps of 5e-5 s, gravity -90 m/s² (DexDeform's 30·(-3)), sticky floor. Each reset shifts the disc
by up to ±0.1 m in x and z and up to +0.1 m in y and scales it by up to ±5 % about its centre (Rewarped
scales about the world origin).

Reward (Rewarped's): the particles are two mirror-image halves (z above / below the centre; particle i of
one half is the mirror of particle i of the other). With d the mean distance between the observed pairs
and d₀ its value after the first step, r = clamp((d₀ - d)/d₀, -1, 1): folding one half onto the other
scores; d₀ is a constant for gradients (Rewarped sets it under no_grad). (Rewarped pairs its halves by file
order; the pairing here is the mirror.) 300 steps.

Observations: ``particle_q`` [N, 250, 3] (every 10th particle), ``com_q`` [N, 3], ``joint_q`` [N, 24] and
``observation`` [N, 777], their concatenation. State keys: x, v, c, f (``tphys.mpm.MPMState``), joint_q,
start_distance [N, 1]. ``recompute`` is ``tphys.mpm.step``'s (default True: memory by env steps).
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.envs.mpm_task import PARAMETER_RANGES, KinematicToolEnv, check_task_options
from tphys.envs.ranges import ranges_for
from tphys.envs.registry import register
from tphys.mpm import Material, MPMModel
from tphys.mpm.colliders import Shapes
from tphys.rigid.shadow_hand import geom_poses, load_shadow_hand

DEFAULTS = dict(young=4e3, poisson=0.2, yield_stress=130.0, density=1.0, gravity=-90.0, dt=5e-5, friction=0.5, softness=666.0)
ENV_OPTIONS = ("goal", "substeps", "horizon", "grid_size", "particles", "samples", "recompute", "backend", "validate", "seed")
SCALE = 2.5
BASE_POSITION = (0.5, 0.3, -0.34)  # the hand-mount frame in the world (Rewarped's placement, see the module docstring)
ACTION_SCALE = 0.33 * 0.002 * 40  # rad per step
CENTRE, RADIUS, THICKNESS, PARTICLE_VOLUME = (0.525, 0.422, 0.548), 0.095, 0.006, 2.0**-14
START_POSE = (-0.1651, -0.3197, 0.1434, 0.3203, 0.7126, 0.6705, 0.0002, 0.3153, 0.7660, 0.7323, 0.0004, 0.3674, 0.7120, 0.6699,
              0.0525, -0.1362, 0.3987, 0.7416, 0.7041, 0.0037, 0.5506, -0.0145, -0.0015, -0.7895)  # DexDeform's default (rad)


def disc(count: int) -> Tensor:
    """[count, 3] float64 particles of the dough disc: two layers; the second half mirrors the first across z = centre."""
    half = count // 2
    per_layer = half // 2
    # a half disc of per_layer points on a square lattice in (x, z > 0), found by shrinking the spacing until it fits
    spacing = math.sqrt(0.5 * math.pi * RADIUS**2 / per_layer)
    while True:
        k = int(RADIUS / spacing) + 1
        axis_x = (torch.arange(-k, k + 1, dtype=torch.float64)) * spacing
        axis_z = (torch.arange(0, k + 1, dtype=torch.float64) + 0.5) * spacing
        grid = torch.stack(torch.meshgrid(axis_x, axis_z, indexing="ij"), -1).reshape(-1, 2)
        inside = grid[grid.norm(dim=-1) <= RADIUS]
        if inside.shape[0] >= per_layer:
            break
        spacing *= 0.99
    inside = inside[torch.argsort(inside.norm(dim=-1), stable=True)[:per_layer]]
    layers = [torch.stack([inside[:, 0], torch.full_like(inside[:, 0], y), inside[:, 1]], -1) for y in (-THICKNESS / 4, THICKNESS / 4)]
    upper = torch.cat(layers)  # half = 2·per_layer points: the caller keeps count a multiple of 4
    lower = upper * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    return torch.cat([upper, lower]) + torch.tensor(CENTRE, dtype=torch.float64)


@register("hand_flip", "HandFlip: a kinematic 24-DoF Shadow hand (gymnasium-robotics' MJCF) folds an MPM plasticine disc (2500 "
          "particles, 48³ grid); obs 777 (+ particle_q 250x3), action 24, 300 steps",
          defaults=DEFAULTS, ranges=ranges_for(PARAMETER_RANGES, (*DEFAULTS, *ENV_OPTIONS)))
class HandFlipEnv(KinematicToolEnv):
    """Batched differentiable HandFlip (see the module docstring): the tool is the hand's 24 hinges; the state holds the
    reward's reference distance ``start_distance`` [N, 1], set by the first step."""

    name = "hand_flip"
    state_keys = (*KinematicToolEnv.state_keys, "start_distance")

    def __init__(self, num_envs: int = 1, device="cpu", dtype=torch.float32, goal: str | None = None, substeps: int = 40,
                 horizon: int = 300, grid_size: int = 48, particles: int = 2500, samples: int = 250, recompute: bool | str = True,
                 backend: str = "auto", validate: bool = True, seed: int | None = None, **physics):
        check_task_options("hand_flip", goal, ("flip",), physics, DEFAULTS, ENV_OPTIONS, recompute,
                           substeps=substeps, horizon=horizon, grid_size=grid_size, particles=particles, samples=samples)
        if particles < 2 * samples or particles % 4 or samples % 2:
            raise ValueError(f"hand_flip: particles must be a multiple of 4 and at least 2·samples, samples even; "
                             f"got {particles}, {samples}")
        p = {**DEFAULTS, **physics}
        super().__init__(num_envs, device, dtype, "flip", substeps, horizon, recompute, backend, validate, seed, p["dt"])
        kw = dict(dtype=dtype, device=self.device)
        self.block = disc(particles).to(**kw)
        volume = torch.full((particles,), PARTICLE_VOLUME, **kw)
        material = Material.from_young("plasticine", p["young"], p["poisson"], yield_stress=p["yield_stress"])
        self.model = MPMModel(grid_size, 1.0 / grid_size, p["dt"], torch.tensor([0.0, p["gravity"], 0.0], **kw), p["density"] * volume,
                              volume, material, bound=3, sticky_floor=True)
        self.hand = load_shadow_hand(SCALE).to(**kw)
        self.shapes = Shapes(self.hand.geom_kind, self.hand.geom_size, friction=p["friction"], softness=p["softness"])
        self.base_position = torch.tensor(BASE_POSITION, **kw)
        self.base_rotation = torch.diag(torch.tensor([-1.0, -1.0, 1.0], **kw))  # π about z
        self.joint_start = torch.tensor(START_POSE, **kw)
        self.joint_lower, self.joint_upper, self.action_scale = self.hand.lower, self.hand.upper, ACTION_SCALE
        # pairs of observed particles: every stride-th particle, the first half of them mirrors the second
        self._set_tool_specs(24, particles, samples, start_distance=(1,))

    # ------------------------------------------------------------------ the protocol's hooks
    def initial_state(self) -> dict[str, Tensor]:
        """The dough disc at rest, shifted and scaled at random (see the module docstring), the hand at its start pose."""
        n, gen = self.num_envs, self.generator
        shift = (2 * torch.rand(n, 1, 3, generator=gen, dtype=torch.float64) - 1) * 0.1
        shift[..., 1] = shift[..., 1].abs()  # up only
        scale = 1 + 0.05 * (2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64) - 1)
        centre = torch.tensor(CENTRE, dtype=torch.float64)
        x = ((self.block.double() - centre) * scale + centre + shift).to(self.dtype)
        return dict(self.at_rest(x), start_distance=torch.ones(n, 1, dtype=self.dtype, device=self.device))

    def physics_step(self, state: TensorDictBase, action: Tensor) -> TensorDictBase:
        """The tool's step, and ``start_distance`` [N, 1]: the pairs' mean distance d₀ after the first step (then kept)."""
        next_state = super().physics_step(state, action)
        distance = self.pair_distance(self.observed(next_state.get("x")))
        next_state.set("start_distance", torch.where(next_state.get("step_count") == 1, distance.detach(), state.get("start_distance")))
        return next_state

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] clamp((d₀ - d)/d₀, -1, 1) with d the observed pairs' mean distance (see the module docstring)."""
        start_distance = state.get("start_distance")
        return ((start_distance - self.pair_distance(observation["particle_q"])) / start_distance).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ physics
    def shape_poses(self, joint_q: Tensor) -> tuple[Tensor, Tensor]:
        """World positions [N, 19, 3] and rotations [N, 19, 3, 3] of the hand's collision shapes at joint_q [N, 24]."""
        return geom_poses(self.hand, joint_q, self.base_position, self.base_rotation)

    def pair_distance(self, particle_q: Tensor) -> Tensor:
        """[N, 1] mean distance between the observed mirror pairs."""
        half = self.samples // 2
        return (particle_q[:, :half] - particle_q[:, half:]).norm(dim=-1).mean(-1, keepdim=True)

    # ------------------------------------------------------------------ rendering
    def render_positions(self, td, env_index: int = 0):
        """[T + 1, 250 + 2·19, 3] observed particles and the two end points of each hand shape's long axis, per frame (numpy)."""
        frames = [(td["particle_q"][env_index, 0], td["joint_q"][env_index, 0])]
        frames += [(td["next", "particle_q"][env_index, k], td["next", "joint_q"][env_index, k]) for k in range(td.shape[-1])]
        capsule = torch.tensor([k == "capsule" for k in self.hand.geom_kind], device=self.device)
        half_length = torch.where(capsule, self.hand.geom_size[:, 1], self.hand.geom_size[:, 2])  # capsules along y, boxes along z
        points = []
        for particles, joint_q in frames:
            position, rotation = self.shape_poses(joint_q[None])
            axis = torch.where(capsule[:, None], rotation[0, :, :, 1], rotation[0, :, :, 2])
            ends = torch.stack([position[0] - half_length[:, None] * axis, position[0] + half_length[:, None] * axis], 1).reshape(-1, 3)
            points.append(torch.cat([particles, ends], 0))
        return torch.stack(points).detach().cpu().numpy()

    def render_geometry(self) -> dict:
        bones = [[self.samples + 2 * k, self.samples + 2 * k + 1] for k in range(len(self.hand.geom_kind))]
        return dict(dim=3, up_axis=1, edges=bones, cable=[False] * len(bones), ground=3.0 / self.model.grid_size)
