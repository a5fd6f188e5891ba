"""``RigidEnv``: a TorchRL env for articulated rigid bodies (the DFlex task family).

Like ``PayloadEnv`` the env is stateless in TorchRL's sense: the generalized state travels in the
tensordict, so ``env.rollout(H, policy, break_when_any_done=False)`` keeps the autograd graph from
every reward back to the actions, the policy and the initial state.

Tensordict keys (N = num_envs, nq / nv generalized positions / velocities, A actuators):
    observation  [N, obs_dim]  the task's observation (DFlex's layout, see ``tphys.envs.locomotion``)
    q            [N, nq]       generalized positions (MuJoCo layout: free joint = position, wxyz quaternion)
    qd           [N, nv]       generalized velocities (free joint = world linear, body-frame angular velocity)
    step_count   [N, 1] int64  steps since reset
    action       [N, A]        motor commands in [-1, 1] (clamped; torque = gear · action)
    reward       [N, 1]        the task's reward
    done / terminated / truncated [N, 1] bool: terminated by the task's rule (fall) or by a diverged
                               simulation (DFlex's rule: non-finite state or |q|, |qd| > 1e6, reward 0);
                               truncated after ``horizon`` steps.

A diverged env's state is replaced by its last finite state, and the gradients leaving a step
towards its inputs (state, action) are cleaned with ``nan_to_num`` (DFlex's "nan hook"), so one
bad env cannot poison the policy gradient of the batch. A non-finite state *given* to ``step`` raises (``validate=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Unbounded

from tphys.envs.base import POSITIVE, TphysEnv, check_action, check_finite_inputs, check_ranges, int_at_least
from tphys.rigid import RigidModel, RigidState, forward_kinematics, step
from tphys.rigid.integrator import compiled_substep
from tphys.rigid.presets import DFLEX, dflex_model

DIVERGED = 1e6  # DFlex: |q| or |qd| beyond this counts as a diverged simulation
# Valid ranges of the family's numeric options and of the task's frame. The DFlex tasks take no physical overrides:
# their physical parameters are tphys.rigid.presets.DFLEX's, fixed per task.
PARAMETER_RANGES = dict(substeps=int_at_least(1), horizon=int_at_least(1), dt=POSITIVE)


@dataclass(frozen=True)
class RigidTask:
    """One task of the family. Functions take and return tensors of the env's dtype.

    Attributes:
        name: registry name.
        preset: key of ``tphys.rigid.presets.DFLEX`` (model and physical parameters).
        goal: the task's one objective (kept for the recipes' ``env.goal`` key).
        horizon: steps per episode (1/60 s each).
        observation_dim: size of ``observe``'s output.
        sample_initial: (model, n, generator) -> (q [n, nq], qd [n, nv]), float64 on the CPU.
        observe: (model, q, qd, action) -> [N, obs_dim]; ``action`` is the command just applied (zeros at reset).
        reward: (observation, action) -> [N].
        terminated: observation -> [N] bool, or None for no early termination.
        metrics: (rollout [N, T], alive [N, T] bool) -> {name: [N]}, task-specific episode metrics.
        contact: simulate ground contact.
    """

    name: str
    preset: str
    goal: str
    horizon: int
    observation_dim: int
    sample_initial: Callable[..., tuple[Tensor, Tensor]]
    observe: Callable[..., Tensor]
    reward: Callable[[Tensor, Tensor], Tensor]
    terminated: Callable[[Tensor], Tensor] | None = None
    metrics: Callable[..., dict] | None = None
    contact: bool = True
    dt: float = 1.0 / 60.0


class RigidEnv(TphysEnv):
    """Batched differentiable env of a ``RigidTask``; see the module docstring for keys."""

    finite_input_keys = ("q", "qd")  # the float inputs of step besides the action

    def __init__(
        self,
        task: RigidTask,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        goal: str | None = None,
        substeps: int | None = None,
        horizon: int | None = None,
        early_termination: bool = True,
        recompute: bool = False,
        compile_substep: bool = False,
        validate: bool = True,
        seed: int | None = None,
    ):
        if goal is not None and goal != task.goal:
            raise ValueError(f"{task.name}: unknown goal {goal!r}; valid goals: {task.goal}")
        substeps = DFLEX[task.preset]["substeps"] if substeps is None else substeps
        horizon = task.horizon if horizon is None else horizon
        check_ranges(task.name, dict(substeps=substeps, horizon=horizon, dt=task.dt), PARAMETER_RANGES)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.task, self.goal = task, task.goal
        self.num_envs, self.dtype, self.dt = num_envs, dtype, task.dt
        self.substeps, self.horizon = substeps, horizon
        self.early_termination, self.recompute, self.validate = early_termination, recompute, validate
        self.model: RigidModel = dflex_model(task.preset, dtype=dtype, device=self.device)
        # opt-in: each substep under torch.compile (``tphys.rigid.integrator.compiled_substep``); TorchRL's
        # EnvBase consumes a keyword named ``compile``, hence the name
        self._substep_fn = compiled_substep(self.model, self.dt, substeps, task.contact) if compile_substep else None
        self.action_dim = self.model.num_actuators
        self.observation_dim = task.observation_dim
        kw = dict(dtype=dtype, device=self.device)
        self._set_specs(self.action_dim, observation=Unbounded(shape=(num_envs, self.observation_dim), **kw),
                        q=Unbounded(shape=(num_envs, self.model.nq), **kw), qd=Unbounded(shape=(num_envs, self.model.nv), **kw))
        self._seed_generator(seed)

    # ------------------------------------------------------------------ TorchRL API
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        q, qd = self.task.sample_initial(self.model, self.num_envs, self.generator)
        q, qd = q.to(device=self.device, dtype=self.dtype), qd.to(device=self.device, dtype=self.dtype)
        zero_action = torch.zeros(self.num_envs, self.action_dim, dtype=self.dtype, device=self.device)
        obs = self.task.observe(self.model, q, qd, zero_action)
        step_count = torch.zeros(self.num_envs, 1, dtype=torch.int64, device=self.device)
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is not None and "q" in tensordict.keys():
            # Partial reset: envs not flagged keep their state (and their autograd graph).
            keep = mask.reshape(self.num_envs, 1).logical_not()
            q, qd = torch.where(keep, tensordict["q"], q), torch.where(keep, tensordict["qd"], qd)
            obs = torch.where(keep, tensordict["observation"], obs)
            step_count = torch.where(keep, tensordict["step_count"], step_count)
        flags = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return self._pack(obs, q, qd, step_count, flags, flags.clone(), flags.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action, q, qd = tensordict["action"], tensordict["q"], tensordict["qd"]
        if self.validate:
            check_action(self.task.name, action, self.num_envs, self.action_dim, self.dtype)
            check_finite_inputs(self.task.name, tensordict, self.finite_input_keys)
        action = action.clamp(-1.0, 1.0)
        new = self.physics_step(RigidState(_CleanGrad.apply(q), _CleanGrad.apply(qd)), _CleanGrad.apply(action))
        diverged = _diverged(new.q) | _diverged(new.qd)  # [N]
        if diverged.any():
            keep = diverged.unsqueeze(-1)
            new = RigidState(torch.where(keep, q, _finite(new.q)), torch.where(keep, qd, _finite(new.qd)))
        obs = self.task.observe(self.model, new.q, new.qd, action)
        reward = torch.where(diverged, 0.0, self.task.reward(obs, action)).unsqueeze(-1)
        terminated = diverged.unsqueeze(-1)
        if self.early_termination and self.task.terminated is not None:
            terminated = terminated | self.task.terminated(obs).unsqueeze(-1)
        step_count = tensordict["step_count"] + 1
        truncated = step_count >= self.horizon
        out = self._pack(obs, new.q, new.qd, step_count, terminated | truncated, terminated, truncated)
        out.set("reward", reward)
        return out

    # ------------------------------------------------------------------ physics and views
    def physics_step(self, state: RigidState, action: Tensor) -> RigidState:
        """One 1/60 s frame of ``substeps`` semi-implicit Euler substeps; ``action`` [N, A] in [-1, 1]."""
        return step(self.model, state, action, self.dt, self.substeps, contact=self.task.contact, recompute=self.recompute,
                    substep_fn=self._substep_fn)

    def episode_metrics(self, trajectory: TensorDictBase) -> dict[str, Tensor]:
        """Metrics of ``env.rollout`` output [N, T], each [N]: ``episode_length`` (steps up to and including
        the first termination, T if none) and the task's own (see ``tphys.envs.locomotion``)."""
        terminated = trajectory["next", "terminated"][..., 0]  # [N, T]
        ended_before = torch.cumsum(terminated.long(), -1) - terminated.long()  # terminations strictly before t
        alive = ended_before == 0
        out = {"episode_length": alive.sum(-1).to(self.dtype)}
        if self.task.metrics is not None:
            out.update(self.task.metrics(trajectory, alive))
        return out

    def render_geometry(self) -> dict:
        """Static drawing data for ``tphys.render``: a skeleton of link origins, centres of mass and contact points."""
        links, contacts = self.model.links, self.model.contacts
        num_links = links.parent.shape[0]
        edges = [[int(p), child] for child, p in enumerate(links.parent.tolist()) if p >= 0]
        edges += [[link, num_links + link] for link in range(num_links) if float(links.mass[link]) > 0]
        edges += [[int(link), 2 * num_links + c] for c, link in enumerate(contacts.link.tolist())]
        return dict(dim=3, up_axis=2, edges=edges, cable=[False] * len(edges), ground=0.0 if self.task.contact else None)

    def render_positions(self, td: TensorDictBase, env_index: int = 0):
        """[T + 1, P, 3] skeleton points (``render_geometry``) of env ``env_index`` in a rollout ``td`` [N, T]."""
        q = torch.cat([td["q"][env_index, :1], td["next", "q"][env_index]], 0).detach()
        return self.skeleton_points(q).cpu().double().numpy()

    def skeleton_points(self, q: Tensor) -> Tensor:
        """[B, P, 3] world positions (m): link origins, centres of mass, contact points for q [B, nq]."""
        poses = forward_kinematics(self.model, q)
        com = poses.pos + (poses.rot @ self.model.links.com[..., None])[..., 0]
        c = self.model.contacts
        points = poses.pos[:, c.link] + (poses.rot[:, c.link] @ c.pos[..., None])[..., 0]
        return torch.cat([poses.pos, com, points], 1)

    # ------------------------------------------------------------------ helpers
    def _pack(self, obs, q, qd, step_count, done, terminated, truncated) -> TensorDictBase:
        return TensorDict(
            {"observation": obs, "q": q, "qd": qd, "step_count": step_count, "done": done, "terminated": terminated,
             "truncated": truncated},
            batch_size=self.batch_size,
            device=self.device,
        )


def _diverged(x: Tensor) -> Tensor:
    return ~torch.isfinite(x).all(-1) | (x.detach().abs() > DIVERGED).any(-1)


def _finite(x: Tensor) -> Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


class _CleanGrad(torch.autograd.Function):
    """Identity whose backward replaces NaN/inf gradient entries by 0 (rows of diverged envs)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _finite(grad)
