"""SoftJumper (SAPO paper, Rewarped's ``gradsim.Jumper``): a soft quadruped of muscle tetrahedra that
learns to jump forward.

The body is ours: cubes of ``cell`` m on a grid (a 7 x 2 x 4 torso on four 2 x 2 x 1 legs), split
into 6 tetrahedra each (``tphys.particles.meshing.voxel_mesh``): 72 cubes, 432 tetrahedra, 168
particles, 9 kg, about Rewarped's size (444 tetrahedra, 204 particles). Stable neo-Hookean tissue with
muscle fibers along x in the torso and along y (up) in the legs; one activation per pair of
tetrahedra, so 216 action dims (Rewarped: 222), each in [-1, 1] scaling the fiber stress
``max_stress`` (negative: active extension, as in a pneumatic actuator). Penalty ground at y = 0 with
smooth Coulomb friction, viscous below ``slip`` = 0.2 m/s: the friction's tangent damping
friction·f_n/slip must keep h·friction·f_n/(slip·m) < 2 for the linearised explicit substep to stay
contractive. With a small slip (0.01 m/s) the forward stays bounded but gradients over 32-step
windows blow up past float32's range, and training stalls.
Frames of 1/60 s with 80 substeps (Rewarped's), 300-step episodes, no early termination.
The substeps are ``tphys.particles.solid_substep.SolidSubstep``'s, picked by ``backend`` ("auto" | "cpu" |
"torch", default "auto"): on CPU ("auto" or "cpu") a frame's 80 substeps are one call of C loops
(``tphys/kernels/cpu/fem.c``) forward and one backward, a single autograd node; with "torch" (and on CUDA)
each substep is one autograd node with a hand-written backward in torch ops, which ``compile_substep=True``
runs under torch.compile (the first frames compile; a torch-backend option: with backend "auto" it selects the
compiled torch substeps, with "cpu" it raises). (TorchRL's
EnvBase takes a ``compile`` keyword of its own, hence the name.)

Reward (Rewarped's): 10·(COM forward velocity, m/s) + 30·(COM height above its start, m) - 0.001·|a|².

Observation [N, 6 + 6·S + 6 + 8] (S = 30 sampled particles; 200 in all):
    COM position relative to its start (3), COM velocity (3), positions of S sampled particles
    relative to the COM (3S), their velocities relative to the COM's (3S), two rows of the sampled
    particles' second-moment matrix (6, orientation cues), and the gait phase: sin and cos of 2π·t/period
    for periods of 60, 30, 15 and 7.5 steps (8).

Tensordict keys: observation, x / v [N, P, 3] (m, m/s), com_start [N, 3], step_count [N, 1], action
[N, 216], reward, done / terminated (always False) / truncated.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.autodiff import check_recompute
from tphys.envs.base import TphysEnv
from tphys.envs.ranges import NON_NEGATIVE, POSITIVE, check_options, check_ranges, int_at_least, ranges_for
from tphys.envs.registry import register
from tphys.particles import ParticleBuilder, ParticleModel, ParticleState, SolidControl, solid
from tphys.particles.meshing import voxel_mesh
from tphys.particles.solid_substep import SolidSubstep

DEFAULTS = dict(cell=0.05, density=1000.0, mu=1e5, lam=4e5, damping=30.0, max_stress=1.2e5, ground_stiffness=3e4,
                ground_damping=100.0, friction=0.8, slip=0.2)  # fmt: skip
ENV_OPTIONS = ("goal", "substeps", "horizon", "recompute", "compile_substep", "backend", "validate", "seed", "samples")
# Valid range of every physical parameter (DEFAULTS) and numeric option, checked before the body is meshed:
# lam > 0 as the builder's tetrahedra need it; max_stress = 0 leaves the muscles off.
PARAMETER_RANGES = dict(cell=POSITIVE, density=POSITIVE, mu=POSITIVE, lam=POSITIVE, damping=NON_NEGATIVE, max_stress=NON_NEGATIVE,
                        ground_stiffness=POSITIVE, ground_damping=NON_NEGATIVE, friction=NON_NEGATIVE, slip=POSITIVE,
                        substeps=int_at_least(1), horizon=int_at_least(1), samples=int_at_least(1))
PERIODS = (60.0, 30.0, 15.0, 7.5)  # gait-phase clocks, steps


def quadruped_cells() -> tuple[list, list]:
    """(torso cells, leg cells) of the soft quadruped on the integer grid (x forward, y up, z side)."""
    torso = [(i, j, k) for i in range(7) for j in (2, 3) for k in range(4)]
    legs = [(i, j, k) for i0 in (0, 5) for k in (0, 3) for i in (i0, i0 + 1) for j in (0, 1)]
    return torso, legs


def quadruped(cell, density, mu, lam, damping, max_stress, ground_stiffness, ground_damping, friction,
              slip) -> tuple[ParticleModel, Tensor]:
    """The soft quadruped standing on the ground at y = 0: (model, rest positions [P, 3])."""
    torso, legs = quadruped_cells()
    vertices, tets = voxel_mesh(torso + legs, cell)
    # fibers: legs (cells below the torso) along y, the torso along x; Kuhn tetrahedra come 6 per cube in cell order
    leg_cells = set(legs)
    cells = sorted(set(torso + legs))
    fibers = [(0.0, 1.0, 0.0) if c in leg_cells else (1.0, 0.0, 0.0) for c in cells for _ in range(6)]
    b = ParticleBuilder(dim=3)
    b.add_solid(vertices, tets, density, mu=mu, lam=lam, damping=damping, fiber=fibers, max_stress=max_stress)
    b.set_ground(height=0.0, stiffness=ground_stiffness, damping=ground_damping, friction=friction, slip=slip, smoothing=1e-3)
    return b.build()


@register("soft_jumper", "SoftJumper: soft quadruped of 432 muscle tetrahedra (168 particles), 80 substeps; obs 200, action 216, 300 steps",
          defaults=DEFAULTS, ranges=ranges_for(PARAMETER_RANGES, (*DEFAULTS, *ENV_OPTIONS)))
class SoftJumperEnv(TphysEnv):
    """Batched differentiable SoftJumper; see the module docstring."""

    name = "soft_jumper"
    state_keys = ("x", "v", "com_start")
    finite_output_keys = ("x", "v")

    def __init__(self, num_envs: int = 1, device="cpu", dtype=torch.float32, goal: str | None = None, substeps: int = 80,
                 horizon: int = 300, recompute=True, compile_substep: bool = False, backend: str = "auto", validate: bool = True,
                 seed: int | None = None, samples: int = 30, **physics):
        check_options("soft_jumper", goal, ("jump",), physics, DEFAULTS, ENV_OPTIONS)
        check_ranges("soft_jumper", {**DEFAULTS, **physics, "substeps": substeps, "horizon": horizon, "samples": samples},
                     PARAMETER_RANGES)
        super().__init__(num_envs, device, dtype, horizon, 1.0 / 60.0, validate, seed)
        model, rest = quadruped(**{**DEFAULTS, **physics})
        self.goal, self.substeps, self.recompute = "jump", substeps, check_recompute(recompute)
        self.model = model.to(device=self.device, dtype=dtype)
        self.rest = rest.to(device=self.device, dtype=dtype)
        # C backend: one node per frame (C loops forward and backward); torch backend: one node per substep with a
        # hand-written backward, optionally each under torch.compile (substeps stay a Python loop). As in the rigid envs,
        # compile_substep is a torch-backend option: with backend "auto" it selects the compiled torch substeps, with
        # "cpu" it raises (never silently unused)
        if compile_substep and backend == "cpu":
            raise ValueError("soft_jumper: compile_substep=True compiles the torch substep and cannot apply with backend='cpu' "
                             "(the C frame); pass backend='auto' or 'torch' with compile_substep, or compile_substep=False")
        backend = "torch" if compile_substep and backend == "auto" else backend
        self._substep = SolidSubstep(self.model, self.dt / substeps, compile=compile_substep, backend=backend)
        self.backend = self._substep.backend
        self.compiled = bool(compile_substep) and self.backend == "torch"
        num_particles = rest.shape[0]
        if samples > num_particles:
            raise ValueError(f"soft_jumper: samples={samples} exceeds the {num_particles} particles")
        self.sample_index = torch.linspace(0, num_particles - 1, samples).round().long().to(self.device)
        self.num_tets = model.tetrahedra.corners.shape[0]
        self.observation_dim = 6 + 6 * samples + 6 + 2 * len(PERIODS)
        self._set_specs(self.num_tets // 2, observation=(self.observation_dim,), x=(num_particles, 3), v=(num_particles, 3), com_start=(3,))

    # ------------------------------------------------------------------ the protocol's hooks
    def initial_state(self) -> dict[str, Tensor]:
        """The body at rest shape, shifted up to ±0.05 m in x and z, with a random common velocity up to ±0.05 m/s per axis."""
        n, gen = self.num_envs, self.generator
        shift = torch.zeros(n, 1, 3, dtype=torch.float64)
        shift[..., 0] = 0.05 * (2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1)
        shift[..., 2] = 0.05 * (2 * torch.rand(n, 1, generator=gen, dtype=torch.float64) - 1)
        v = 0.05 * (2 * torch.rand(n, 1, 3, generator=gen, dtype=torch.float64) - 1)
        x = (self.rest.double() + shift).to(self.dtype)
        v = v.expand(n, self.rest.shape[0], 3).to(self.dtype).clone()
        return dict(x=x, v=v, com_start=self.com(x))

    def physics_step(self, state: TensorDictBase, action: Tensor) -> TensorDictBase:
        """One frame of the FEM solid's engine step (``tphys.particles.solid.step``: ``substeps`` semi-implicit Euler
        substeps, ``recompute`` as there) with activations from ``action`` [N, A]."""
        control = SolidControl(action.repeat_interleave(2, dim=-1))  # one action per pair of tetrahedra
        body = ParticleState.without_history(state.get("x"), state.get("v"))
        body = solid.step(self.model, body, control, self.dt, self.substeps, recompute=self.recompute, substepper=self._substep)
        return self.next_state(state, x=body.x, v=body.v)

    def observe(self, state: TensorDictBase, action: Tensor) -> dict[str, Tensor]:
        """``observation`` [N, 200] (see the module docstring)."""
        x, v, com_start = state.get("x"), state.get("v"), state.get("com_start")
        com, com_v = self.com(x), self.com(v)
        points = x[:, self.sample_index] - com[:, None]
        speeds = v[:, self.sample_index] - com_v[:, None]
        spread = points.transpose(-1, -2) @ points / points.shape[1]  # [N, 3, 3] second moment of the body
        phase = state.get("step_count").to(x.dtype) * (2 * math.pi / torch.tensor(PERIODS, dtype=x.dtype, device=x.device))
        return {"observation": torch.cat([com - com_start, com_v, points.flatten(1), speeds.flatten(1), spread[:, 0], spread[:, 1],
                                          torch.sin(phase), torch.cos(phase)], -1)}

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] 10·COM x velocity + 30·COM height gain - 0.001·|a|²."""
        com_v = self.com(state.get("v"))
        gain = self.com(state.get("x"))[:, 1] - state.get("com_start")[:, 1]
        return (10.0 * com_v[:, 0] + 30.0 * gain - 0.001 * action.square().sum(-1)).unsqueeze(-1)

    # ------------------------------------------------------------------ views
    def com(self, x: Tensor) -> Tensor:
        """[N, 3] centre of mass, m."""
        mass = self.model.mass
        return (mass[:, None] * x).sum(-2) / mass.sum()

    def render_geometry(self) -> dict:
        """Static drawing data for ``tphys.render``: the tetrahedra's edges and the ground."""
        corners = self.model.tetrahedra.corners.tolist()
        edges = sorted({tuple(sorted((t[a], t[b]))) for t in corners for a in range(4) for b in range(a + 1, 4)})
        return dict(dim=3, up_axis=1, edges=[list(e) for e in edges], cable=[False] * len(edges), ground=0.0)
