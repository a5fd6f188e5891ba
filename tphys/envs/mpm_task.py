"""What the MPM tasks share: a material driven by a kinematic tool (a rolling pin, a hand, a container).

A subclass calls ``setup`` (batch, goal, substeps, horizon, recompute, backend, validate, env-step dt)
and sets ``name``, ``model`` (``tphys.mpm.MPMModel``), ``shapes`` (``tphys.mpm.colliders.Shapes``),
``action_scale`` (float or [A] tensor, joint units per unit action), ``joint_lower`` / ``joint_upper``
([A] limits) and ``shape_poses(joint_q) -> (position [N, S, 3], rotation [N, S, 3, 3])``. One env step
moves the joints by the scaled action, clipped to the limits, linearly over the substeps, and the shapes
act on the grid as SDF colliders in between.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.data import Unbounded

from tphys.envs.base import (
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    TphysEnv,
    check_action,
    check_finite_inputs,
    check_options,
    check_ranges,
    env_indices,
    int_at_least,
    interval,
)
from tphys.mpm import MPMState, step
from tphys.mpm.step import RECOMPUTE

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
    if recompute not in RECOMPUTE:
        raise ValueError(f"{name}: recompute must be one of {RECOMPUTE} (see tphys.mpm.step), got {recompute!r}")


def particle_specs(num_envs: int, particles: int, **kw) -> dict:
    """Specs of the MPM state keys x, v [N, P, 3] and c, f [N, P, 3, 3]."""
    vectors, matrices = (num_envs, particles, 3), (num_envs, particles, 3, 3)
    return dict(x=Unbounded(shape=vectors, **kw), v=Unbounded(shape=vectors, **kw), c=Unbounded(shape=matrices, **kw),
                f=Unbounded(shape=matrices, **kw))


class KinematicToolEnv(TphysEnv):
    """Base of the MPM tasks; see the module docstring."""

    name = "mpm"
    finite_input_keys = ("x", "v", "c", "f", "joint_q")  # the float inputs of step besides the action (a task adds its own)

    def setup(self, num_envs: int, device, dtype: torch.dtype, goal: str, substeps: int, horizon: int, recompute, backend: str,
              validate: bool, substep_dt: float) -> None:
        """The settings every MPM task holds; ``dt`` (s per env step) = substep_dt · substeps."""
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.goal, self.num_envs, self.dtype, self.substeps, self.horizon = goal, num_envs, dtype, substeps, horizon
        self.recompute, self.backend, self.validate = recompute, backend, validate
        self.dt = substep_dt * substeps

    def shape_poses(self, joint_q: Tensor) -> tuple[Tensor, Tensor]:
        """World positions [N, S, 3] and rotations [N, S, 3, 3] of the tool's shapes at joint_q [N, A]."""
        raise NotImplementedError(f"{type(self).__name__} must define shape_poses")

    def physics_step(self, state: MPMState, joint_q: Tensor, action: Tensor) -> tuple[MPMState, Tensor]:
        """One env step: the joints move by the clipped, scaled action over ``substeps`` MPM substeps."""
        move = action * self.action_scale
        move = torch.minimum(torch.maximum(move, self.joint_lower - joint_q.detach()), self.joint_upper - joint_q.detach())

        state = step(self.model, state, self.substeps, recompute=self.recompute, backend=self.backend, shapes=self.shapes,
                     poses=lambda t, joint_q, move: self.shape_poses(joint_q + t * move), controls=(joint_q, move))
        return state, joint_q + move

    def advance(self, tensordict: TensorDictBase) -> tuple[MPMState, Tensor, Tensor]:
        """(state, joint_q, step_count) after one env step from ``tensordict``, with the input checks."""
        action = tensordict["action"]
        if self.validate:
            check_action(self.name, action, self.num_envs, self.action_spec.shape[-1], self.dtype)
            check_finite_inputs(self.name, tensordict, self.finite_input_keys)
        state = MPMState(*(tensordict[k] for k in "xvcf"))
        state, joint_q = self.physics_step(state, tensordict["joint_q"], action.clamp(-1.0, 1.0))
        if self.validate:
            bad = ~torch.stack([torch.isfinite(t).flatten(1).all(-1) for t in state], -1).all(-1)
            if bad.any():
                raise FloatingPointError(f"{self.name}: non-finite state after the step in env indices {env_indices(bad)}")
        return state, joint_q, tensordict["step_count"] + 1

    def keep_unreset(self, tensordict: TensorDictBase | None, fresh: dict) -> dict:
        """``fresh`` reset values (key -> [N, ...] tensor; MPM state under x, v, c, f), with the envs a partial reset
        (``_reset`` in ``tensordict``) leaves alone keeping their values from ``tensordict``."""
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None or "x" not in tensordict.keys():
            return fresh
        keep = mask.reshape(self.num_envs).logical_not()
        return {k: torch.where(keep.view(-1, *[1] * (t.dim() - 1)), tensordict[k], t) for k, t in fresh.items()}
