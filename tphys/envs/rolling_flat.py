"""RollingFlat (SAPO paper; Rewarped's ``plasticinelab.RollingPin``): a kinematic rolling pin flattens dough.

MLS-MPM (``tphys.mpm``) on a G³ grid over the unit cube (G = 48, 3-cell boundary layer, sticky floor
at y = 3/G), 40 substeps of 5e-5 s per env step, gravity -90 m/s², Rewarped's ``dexdeform`` settings.
Dough: von Mises plasticine (E 5 kPa, ν 0.2, yield 50 Pa, density 1 kg/m³, Rewarped's values), a
0.3 x 0.125 x 0.3 m block of 18 x 8 x 18 particles (2592, Rewarped's count) centred at
(0.5, 0.7·0.125 + floor, 0.5); each reset shifts it by up to ±0.1 m in x and z and up to +0.05 m in y
and scales it by up to ±10 % about its centre.

Roller: two capsules along z (radius 0.03 m, length 0.4 m, and a 0.012 m axle of 0.6 m), friction 0.9.
Its joint q = (x, y, yaw) starts at (0.5, 0.66·(hi - lo) + lo, 0) with lo = 0.06 + floor, hi = lo + 0.25;
limits x in [0.12, 0.88], y in [lo, hi], yaw in ±0.66π. Action a in [-1, 1]³ moves q by
a·(0.01 m, 0.01 m, π/60) per step (clipped to the limits), linearly over the substeps. (Rewarped's D6
joint swings the roller about a pivot at z = 0; ours yaws it about its own centre.)

Reward (Rewarped's): with h the heights of the 250 observed particles and d = mean(h)/0.125,
(1/(1 + d))² (doubled where d <= 0.33) - Var(h). 300 steps, no early termination.

Observations: ``particle_q`` [N, 250, 3] (every ⌊P/250⌋-th particle), ``com_q`` [N, 3] (their mean),
``joint_q`` [N, 3] (Rewarped's keys, for a point-cloud encoder) and ``observation`` [N, 756], their
concatenation. State keys: x, v [N, P, 3], c, f [N, P, 3, 3] (see ``tphys.mpm.MPMState``), joint_q.

``recompute`` (default True: memory grows with env steps, not substeps) is ``tphys.mpm.step``'s.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.envs.mpm_task import PARAMETER_RANGES, KinematicToolEnv, check_task_options
from tphys.envs.ranges import ranges_for
from tphys.envs.registry import register
from tphys.math import axis_angle_to_matrix
from tphys.mpm import Material, MPMModel
from tphys.mpm.colliders import Shapes

DEFAULTS = dict(young=5e3, poisson=0.2, yield_stress=50.0, density=1.0, gravity=-90.0, dt=5e-5, friction=0.9, softness=666.0)
ENV_OPTIONS = ("goal", "substeps", "horizon", "grid_size", "lattice", "samples", "recompute", "backend", "validate", "seed")
SIZE, HEIGHT = 0.3, 0.125  # dough block, m
RADIUS = 0.03
ACTION_SCALE = (0.01, 0.01, math.pi / 60)


@register("rolling_flat", "RollingFlat: MPM plasticine dough (2592 particles, 48³ grid) flattened by a kinematic rolling pin; "
          "obs 756 (+ particle_q 250x3), action 3, 300 steps",
          defaults=DEFAULTS, ranges=ranges_for(PARAMETER_RANGES, (*DEFAULTS, *ENV_OPTIONS)))
class RollingFlatEnv(KinematicToolEnv):
    """Batched differentiable RollingFlat; see the module docstring."""

    name = "rolling_flat"

    def __init__(self, num_envs: int = 1, device="cpu", dtype=torch.float32, goal: str | None = None, substeps: int = 40,
                 horizon: int = 300, grid_size: int = 48, lattice: tuple = (18, 8, 18), samples: int = 250, recompute: bool | str = True,
                 backend: str = "auto", validate: bool = True, seed: int | None = None, **physics):
        check_task_options("rolling_flat", goal, ("flatten",), physics, DEFAULTS, ENV_OPTIONS, recompute,
                           substeps=substeps, horizon=horizon, grid_size=grid_size, samples=samples)
        lattice = tuple(int(k) for k in lattice)
        if len(lattice) != 3 or min(lattice) < 1 or samples > math.prod(lattice):
            raise ValueError(f"rolling_flat: lattice must be 3 positive counts with at least samples={samples} particles, got {lattice}")
        p = {**DEFAULTS, **physics}
        super().__init__(num_envs, device, dtype, "flatten", substeps, horizon, recompute, backend, validate, seed, p["dt"])
        kw = dict(dtype=dtype, device=self.device)
        dx = 1.0 / grid_size
        self.floor = 3 * dx
        counts = torch.tensor(lattice, dtype=torch.float64)
        spacing = torch.tensor([SIZE, HEIGHT, SIZE], dtype=torch.float64) / counts
        axes = [(torch.arange(k, dtype=torch.float64) + 0.5) * s for k, s in zip(lattice, spacing.tolist())]
        block = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        self.block = (block - block.mean(0) + torch.tensor([0.5, 0.7 * HEIGHT + self.floor, 0.5], dtype=torch.float64)).to(**kw)
        volume = torch.full((block.shape[0],), float(spacing.prod()), **kw)
        material = Material.from_young("plasticine", p["young"], p["poisson"], yield_stress=p["yield_stress"])
        self.model = MPMModel(grid_size, dx, p["dt"], torch.tensor([0.0, p["gravity"], 0.0], **kw), p["density"] * volume, volume,
                              material, bound=3, sticky_floor=True)
        self.shapes = Shapes(("capsule", "capsule"), torch.tensor([[RADIUS, 0.2, 0.0], [0.4 * RADIUS, 0.3, 0.0]], **kw),
                             friction=p["friction"], softness=p["softness"])
        low = 2 * RADIUS + self.floor
        self.joint_lower = torch.tensor([4 * RADIUS, low, -0.66 * math.pi], **kw)
        self.joint_upper = torch.tensor([1 - 4 * RADIUS, low + 0.25, 0.66 * math.pi], **kw)
        self.joint_start = torch.tensor([0.5, 0.66 * 0.25 + low, 0.0], **kw)
        self.action_scale = torch.tensor(ACTION_SCALE, **kw)
        self.lying = axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.0], **kw), torch.tensor(-math.pi / 2, **kw))  # capsule y -> world z
        self._set_tool_specs(3, block.shape[0], samples)

    # ------------------------------------------------------------------ the protocol's hooks
    def initial_state(self) -> dict[str, Tensor]:
        """The dough block at rest, shifted and scaled at random (see the module docstring); the roller at its start."""
        n, gen = self.num_envs, self.generator
        shift = (2 * torch.rand(n, 1, 3, generator=gen, dtype=torch.float64) - 1) * torch.tensor([0.1, 0.05, 0.1], dtype=torch.float64)
        shift[..., 1] = shift[..., 1].abs()  # up only
        scale = 1 + 0.1 * (2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64) - 1)
        centre = self.block.double().mean(0)
        return self.at_rest(((self.block.double() - centre) * scale + centre + shift).to(self.dtype))

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] Rewarped's flattening reward of the observed particles ``particle_q`` [N, S, 3]."""
        h = observation["particle_q"][..., 1]
        d = h.mean(-1) / HEIGHT
        closeness = (1 / (1 + d)).square()
        return (torch.where(d <= 0.33, 2 * closeness, closeness) - h.var(-1)).unsqueeze(-1)

    # ------------------------------------------------------------------ physics
    def shape_poses(self, joint_q: Tensor) -> tuple[Tensor, Tensor]:
        """World position [N, 2, 3] and rotation [N, 2, 3, 3] of the roller's two capsules at joint_q [N, 3]."""
        n = joint_q.shape[0]
        centre = torch.stack([joint_q[:, 0], joint_q[:, 1], torch.full_like(joint_q[:, 0], 0.5)], -1)
        up = torch.tensor([0.0, 1.0, 0.0], dtype=joint_q.dtype, device=joint_q.device).expand(n, 3)
        rotation = axis_angle_to_matrix(up, joint_q[:, 2]) @ self.lying
        return centre[:, None].expand(n, 2, 3), rotation[:, None].expand(n, 2, 3, 3)

    # ------------------------------------------------------------------ rendering
    def render_positions(self, td, env_index: int = 0):
        """[T + 1, 250 + 11, 3] observed particles and 11 points along the roller, per frame (numpy)."""
        frames = [(td["particle_q"][env_index, 0], td["joint_q"][env_index, 0])]
        frames += [(td["next", "particle_q"][env_index, k], td["next", "joint_q"][env_index, k]) for k in range(td.shape[-1])]
        along = torch.linspace(-0.2, 0.2, 11, dtype=self.dtype, device=self.device)
        points = []
        for particles, joint_q in frames:
            position, rotation = self.shape_poses(joint_q[None])
            axis = rotation[0, 0, :, 1]
            points.append(torch.cat([particles, position[0, 0] + along[:, None] * axis], 0))
        return torch.stack(points).detach().cpu().numpy()

    def render_geometry(self) -> dict:
        roller = [[self.samples + k, self.samples + k + 1] for k in range(10)]
        return dict(dim=3, up_axis=1, edges=roller, cable=[False] * len(roller), ground=self.floor)
