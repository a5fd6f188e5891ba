"""What the MPM tasks share: a material driven by a kinematic tool (a rolling pin, a hand, a container).

``KinematicToolEnv`` implements the protocol's ``physics_step`` and ``observe`` for them. A task calls
``KinematicToolEnv.__init__`` (batch, goal, substeps, horizon, recompute, backend, validate, seed, substep dt) and
``_set_tool_specs``, sets ``name``, ``model`` (``tphys.mpm.MPMModel``), ``shapes`` (``tphys.mpm.colliders.Shapes``),
``action_scale`` (float or [A] tensor, joint units per unit action), ``joint_lower`` / ``joint_upper`` ([A] limits),
``joint_start`` ([A]) and ``shape_poses(joint_q) -> (position [N, S, 3], rotation [N, S, 3, 3])``, and implements
``initial_state`` (``at_rest`` and its own entries) and ``reward``. One env step moves the joints by the scaled action,
clipped to the limits, linearly over the substeps, and the shapes act on the grid as SDF colliders in between.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.autodiff import check_recompute
from tphys.envs.base import TphysEnv
from tphys.envs.ranges import FINITE, NON_NEGATIVE, POSITIVE, check_options, check_ranges, int_at_least, interval
from tphys.mpm import MPMControl, MPMState, outside_detail, outside_grid, step

# Valid range of every physical parameter of the MPM tasks (each task's DEFAULTS: Pa, -, Pa, kg/m³, m/s², s, -, 1/m)
# and of their numeric options (grid_size: nodes per axis of the unit cube). yield_stress = 0 yields at any stress;
# gravity may point either way.
PARAMETER_RANGES = dict(young=POSITIVE, poisson=interval(0.0, 0.5, "[)"), yield_stress=NON_NEGATIVE, density=POSITIVE, gravity=FINITE,
                        dt=POSITIVE, friction=NON_NEGATIVE, softness=POSITIVE, substeps=int_at_least(1), horizon=int_at_least(1),
                        grid_size=int_at_least(12), particles=int_at_least(1), samples=int_at_least(1))


def check_task_options(name: str, goal, goals: tuple, physics: dict, defaults: dict, env_options: tuple, recompute, **values) -> None:
    """The checks of an MPM task's options before anything is built: goal and option names, the ranges of the physical
    parameters (``defaults`` updated by ``physics``) and of the numeric options ``values``, and ``recompute``."""
    check_options(name, goal, goals, physics, defaults, env_options)
    check_ranges(name, {**defaults, **physics, **values}, PARAMETER_RANGES)
    check_recompute(recompute)


class KinematicToolEnv(TphysEnv):
    """Base of the MPM tasks; see the module docstring."""

    name = "mpm"
    state_keys = ("x", "v", "c", "f", "joint_q")  # a task adds its own
    finite_output_keys = ("x", "v", "c", "f")
    observed_keys = ("joint_q",)  # state entries appended to the observation after the particles and their mean

    def __init__(self, num_envs: int, device, dtype: torch.dtype, goal: str, substeps: int, horizon: int, recompute, backend: str,
                 validate: bool, seed: int | None, substep_dt: float) -> None:
        """The settings every MPM task holds; ``dt`` (s per env step) = substep_dt · substeps."""
        super().__init__(num_envs, device, dtype, horizon, substep_dt * substeps, validate, seed)
        self.goal, self.substeps, self.recompute, self.backend = goal, substeps, recompute, backend

    def _set_tool_specs(self, action_dim: int, particles: int, samples: int, **task_entries: tuple[int, ...]) -> None:
        """Specs of the MPM state x, v [N, P, 3], c, f [N, P, 3, 3], the tool's joint_q [N, A], the observed ``samples``
        particles and their mean, the observation and the task's own entries (``name=shape`` of one env's entry)."""
        self.sample_stride, self.samples = particles // samples, samples
        entries = dict(joint_q=(action_dim,), x=(particles, 3), v=(particles, 3), c=(particles, 3, 3), f=(particles, 3, 3), **task_entries)
        self.observation_dim = 3 * samples + 3 + sum(math.prod(entries[key]) for key in self.observed_keys)
        self._set_specs(action_dim, observation=(self.observation_dim,), particle_q=(samples, 3), com_q=(3,), **entries)

    def shape_poses(self, joint_q: Tensor) -> tuple[Tensor, Tensor]:
        """World positions [N, S, 3] and rotations [N, S, 3, 3] of the tool's shapes at joint_q [N, A]."""
        raise NotImplementedError(f"{type(self).__name__} must define shape_poses")

    def swept_poses(self, t: Tensor, joint_q: Tensor, move: Tensor) -> tuple[Tensor, Tensor]:
        """Positions [T, N, S, 3] and rotations [T, N, S, 3, 3] of the shapes at the joints joint_q + t·move [N, A] for each
        of the T fractions t [T] of a step: one ``shape_poses`` call over T·N rows (``tphys.mpm.MPMControl``, batched)."""
        swept = (joint_q + t[:, None, None] * move).flatten(0, 1)  # [T·N, A]
        position, rotation = self.shape_poses(swept)
        return position.unflatten(0, (t.shape[0], -1)), rotation.unflatten(0, (t.shape[0], -1))

    def at_rest(self, x: Tensor) -> dict[str, Tensor]:
        """The state entries of undeformed material at x [N, P, 3] with the tool at its start pose."""
        return dict(zip("xvcf", MPMState.at_rest(x)), joint_q=self.joint_start.expand(x.shape[0], -1).clone())

    def physics_step(self, state: TensorDictBase, action: Tensor) -> TensorDictBase:
        """One env step: the joints move by the clipped, scaled action over ``substeps`` MPM substeps."""
        joint_q = state.get("joint_q")
        move = action * self.action_scale
        move = torch.minimum(torch.maximum(move, self.joint_lower - joint_q.detach()), self.joint_upper - joint_q.detach())
        material = MPMState(*(state.get(k) for k in "xvcf"))
        tool = MPMControl(self.shapes, self.swept_poses, (joint_q, move), batched=True)
        material = step(self.model, material, tool, self.dt, recompute=self.recompute, backend=self.backend)
        return self.next_state(state, **dict(zip("xvcf", material)), joint_q=joint_q + move)

    def invalid_state(self, state: TensorDictBase, when: str) -> tuple[Tensor, str] | None:
        """The envs with a particle whose stencil leaves the grid (``tphys.mpm.outside_grid``: its physics would be
        wrong without an error), and where; None where every particle is on it (one host sync)."""
        x = state.get("x")
        bad = outside_grid(self.model, x)
        if not bool(bad.any()):
            return None
        offset = self.shard[0] if when == "output" and self.shard is not None else 0  # outputs name global envs
        return bad, f"particles off the simulation grid: {outside_detail(self.model, x, bad, offset)}"

    def observed(self, x: Tensor) -> Tensor:
        """[N, S, 3] the observed particles of x [N, P, 3]: every ``sample_stride``-th, the first ``samples``."""
        return x[:, :: self.sample_stride][:, : self.samples]

    def observe(self, state: TensorDictBase, action: Tensor) -> dict[str, Tensor]:
        """``particle_q`` [N, S, 3], ``com_q`` [N, 3] (their mean) and ``observation``: those and ``observed_keys``, flat."""
        particle_q = self.observed(state.get("x"))
        com_q = particle_q.mean(1)
        observation = torch.cat([particle_q.flatten(1), com_q, *(state.get(k) for k in self.observed_keys)], -1)
        return {"observation": observation, "particle_q": particle_q, "com_q": com_q}
