"""FluidMove (SAPO paper; Rewarped's ``softgym.Transport``): carry water in an open container to a target without spilling.

MLS-MPM water (``tphys.mpm``, kind "water": F reset to J^(1/3)·I, pressure τ = λ(J - 1)J·I with λ of
E 100 kPa, ν 0.3, Rewarped's water; density 1000 kg/m³) on a 48³ grid over the unit cube, 40 substeps of
5e-4 s per step (Rewarped's ``regular`` settings), gravity -9.8 m/s², free-slip walls and floor. The water
starts as 2880 particles drawn uniformly (fixed seed) in a 0.16 x 0.094 x 0.2 m block centred on the
container's origin (Rewarped's 16 x 9 x 20 "random" cube), each of volume block/2880 (``particles``).

The container: five boxes (bottom and four walls, 0.05 m thick) around a 0.18 x 0.16 x 0.22 m cavity,
kinematic, with prismatic joints q = (x, y, z) starting at (0.5, 0.15, 0.5), limits [0.18, 0.82] x
[0.16, 0.84] x [0.22, 0.78]; action a in [-1, 1]³ moves q by 0.01·a m per step (clipped to the limits),
linearly over the substeps; one-way coupling through the boxes' SDFs (friction 0.5, softness 666).

Target: q₀ + (0.2, 0.3, 0.2)·u with u_x, u_z uniform in [-1, 1] and u_y in [0, 1], drawn at reset (Rewarped's).
Reward (Rewarped's): 0.1·(1/(1 + d²))² (doubled at d <= 0.02), d = |q - target|, minus the fraction of the
250 observed particles outside the container's box (0.14, 0.105, 0.16 m half extents about q), each
counted by sigmoid((|p - q| - bound)/1e-5) on its farthest axis. 300 steps.

Observations: ``particle_q`` [N, 250, 3] (every 11th particle), ``com_q`` [N, 3], ``joint_q`` [N, 3],
``target_q`` [N, 3] and ``observation`` [N, 759], their concatenation. State keys: x, v, c, f
(``tphys.mpm.MPMState``), joint_q, target_q. ``recompute`` is ``tphys.mpm.step``'s.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.envs.mpm_task import PARAMETER_RANGES, KinematicToolEnv, check_task_options
from tphys.envs.ranges import ranges_for
from tphys.envs.registry import register
from tphys.mpm import Material, MPMModel
from tphys.mpm.colliders import Shapes

DEFAULTS = dict(young=1e5, poisson=0.3, density=1e3, gravity=-9.8, dt=5e-4, friction=0.5, softness=666.0)
ENV_OPTIONS = ("goal", "substeps", "horizon", "grid_size", "particles", "samples", "recompute", "backend", "validate", "seed")
CAVITY, WALL = (0.18, 0.16, 0.22), 0.05  # inner length, height, width; wall thickness, m
START = (0.5, 0.15, 0.5)
WATER = (0.16, 0.094, 0.2)  # block of water, m
ACTION_SCALE = 0.01
TARGET_RANGE = (0.2, 0.3, 0.2)


def container() -> tuple[list[list[float]], list[list[float]]]:
    """(half extents, offsets from the joint origin) of the five boxes: bottom, left, right, back, front (Rewarped's)."""
    length, h, w = CAVITY
    t = WALL
    halves = [[length / 2 + t, t / 2, w / 2 + t], [t / 2, (h + t) / 2, w / 2 + t], [t / 2, (h + t) / 2, w / 2 + t],
              [length / 2 + t, (h + t) / 2, t / 2], [length / 2 + t, (h + t) / 2, t / 2]]
    offsets = [[0.0, -(h + t) / 2, 0.0], [-(length + t) / 2, -t / 2, 0.0], [(length + t) / 2, -t / 2, 0.0], [0.0, -t / 2, -(w + t) / 2],
               [0.0, -t / 2, (w + t) / 2]]
    return halves, offsets


@register("fluid_move", "FluidMove: carry MPM water (2880 particles, 48³ grid) in a kinematic 5-box container to a target "
          "without spilling; obs 759 (+ particle_q 250x3), action 3, 300 steps",
          defaults=DEFAULTS, ranges=ranges_for(PARAMETER_RANGES, (*DEFAULTS, *ENV_OPTIONS)))
class FluidMoveEnv(KinematicToolEnv):
    """Batched differentiable FluidMove (see the module docstring): the tool is the container on three prismatic joints,
    and the state holds each env's target ``target_q`` [N, 3], drawn at reset and observed."""

    name = "fluid_move"
    state_keys = (*KinematicToolEnv.state_keys, "target_q")
    observed_keys = ("joint_q", "target_q")
    action_scale = ACTION_SCALE

    def __init__(self, num_envs: int = 1, device="cpu", dtype=torch.float32, goal: str | None = None, substeps: int = 40,
                 horizon: int = 300, grid_size: int = 48, particles: int = 2880, samples: int = 250, recompute: bool | str = True,
                 backend: str = "auto", validate: bool = True, seed: int | None = None, **physics):
        check_task_options("fluid_move", goal, ("transport",), physics, DEFAULTS, ENV_OPTIONS, recompute,
                           substeps=substeps, horizon=horizon, grid_size=grid_size, particles=particles, samples=samples)
        if not isinstance(particles, int) or particles < samples:
            raise ValueError(f"fluid_move: particles must be an int >= samples={samples}, got {particles!r}")
        count = particles
        p = {**DEFAULTS, **physics}
        super().__init__(num_envs, device, dtype, "transport", substeps, horizon, recompute, backend, validate, seed, p["dt"])
        kw = dict(dtype=dtype, device=self.device)
        water = torch.tensor(WATER, dtype=torch.float64)
        block = (torch.rand(count, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5) * water
        self.block = (block + torch.tensor(START, dtype=torch.float64)).to(**kw)
        volume = torch.full((count,), float(water.prod()) / count, **kw)
        lam = Material.from_young("water", p["young"], p["poisson"]).lam
        material = Material("water", 0.0, lam)  # τ = λ(J - 1)J·I, Rewarped's volume elasticity
        self.model = MPMModel(grid_size, 1.0 / grid_size, p["dt"], torch.tensor([0.0, p["gravity"], 0.0], **kw), p["density"] * volume,
                              volume, material, bound=3)
        halves, offsets = container()
        self.shapes = Shapes(("box",) * 5, torch.tensor(halves, **kw), friction=p["friction"], softness=p["softness"])
        self.offsets = torch.tensor(offsets, **kw)
        self.joint_lower = torch.tensor(CAVITY, **kw)
        self.joint_upper = 1 - self.joint_lower
        self.joint_start = torch.tensor(START, **kw)
        self.bounds = torch.tensor([CAVITY[0] / 2 + WALL, CAVITY[1] / 2 + WALL / 2, CAVITY[2] / 2 + WALL], **kw)
        self._set_tool_specs(3, count, samples, target_q=(3,))

    # ------------------------------------------------------------------ the protocol's hooks
    def initial_state(self) -> dict[str, Tensor]:
        """The water block at rest in the container at its start, and a random target (see the module docstring)."""
        n, gen = self.num_envs, self.generator
        u = 2 * torch.rand(n, 3, generator=gen, dtype=torch.float64) - 1
        u[:, 1] = u[:, 1] / 2 + 0.5  # up only
        target_q = (self.joint_start.double() + torch.tensor(TARGET_RANGE, dtype=torch.float64) * u).to(self.dtype)
        return dict(self.at_rest(self.block.expand(n, -1, -1).clone()), target_q=target_q)

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] Rewarped's Transport reward (see the module docstring) of ``joint_q``, ``target_q`` and ``particle_q``."""
        joint_q = state.get("joint_q")
        d = (joint_q - state.get("target_q")).norm(dim=-1)
        closeness = (1 / (1 + d.square())).square()
        closeness = torch.where(d <= 0.02, 2 * closeness, closeness)
        outside = torch.sigmoid(((observation["particle_q"] - joint_q[:, None]).abs() - self.bounds) / 1e-5).amax(-1)
        return (0.1 * closeness - outside.mean(-1)).unsqueeze(-1)

    # ------------------------------------------------------------------ physics
    def shape_poses(self, joint_q: Tensor) -> tuple[Tensor, Tensor]:
        """World positions [N, 5, 3] and rotations [N, 5, 3, 3] of the container's boxes at joint_q [N, 3]."""
        n = joint_q.shape[0]
        return joint_q[:, None] + self.offsets, torch.eye(3, dtype=joint_q.dtype, device=joint_q.device).expand(n, 5, 3, 3)

    # ------------------------------------------------------------------ rendering
    def render_positions(self, td, env_index: int = 0):
        """[T + 1, 250 + 8 + 1, 3] observed particles, the container cavity's 8 corners and the target, per frame (numpy)."""
        frames = [(td["particle_q"][env_index, 0], td["joint_q"][env_index, 0], td["target_q"][env_index, 0])]
        frames += [(td["next", "particle_q"][env_index, k], td["next", "joint_q"][env_index, k], td["next", "target_q"][env_index, k])
                   for k in range(td.shape[-1])]
        half = torch.tensor(CAVITY, dtype=self.dtype, device=self.device) / 2
        signs = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=self.dtype, device=self.device)
        return torch.stack([torch.cat([p, q + signs * half, t[None]], 0) for p, q, t in frames]).detach().cpu().numpy()

    def render_geometry(self) -> dict:
        s = self.samples
        corners = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]  # the cube's 12 edges
        edges = [[s + a, s + b] for a, b in corners]
        return dict(dim=3, up_axis=1, edges=edges, cable=[False] * len(edges), ground=3.0 / self.model.grid_size)
