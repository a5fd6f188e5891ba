"""``RigidEnv``: a TorchRL env for articulated rigid bodies (the DFlex task family).

Like ``PayloadEnv`` the env is stateless in TorchRL's sense: the generalized state travels in the
tensordict, so ``env.rollout(H, policy, break_when_any_done=False)`` keeps the autograd graph from
every reward back to the actions, the policy and the initial state.

Tensordict keys (N = num_envs, nq / nv generalized positions / velocities, A actuators):
    observation  [N, obs_dim]  the task's observation (DFlex's layout, see ``tphys.envs.locomotion``)
    q            [N, nq]       generalized positions (MuJoCo layout: free joint = position, wxyz quaternion)
    qd           [N, nv]       generalized velocities (free joint = world linear, body-frame angular velocity)
    step_count   [N, 1] int64  steps since reset
    action       [N, A]        motor commands in [-1, 1] (clamped; torque = gear · action), or for a muscle-driven
                               task [N, M] muscle commands in [-1, 1]: activation (action + 1) / 2 (DiffRL's SNUHumanoid)
    reward       [N, 1]        the task's reward
    done / terminated / truncated [N, 1] bool: terminated by the task's rule (fall) or by a diverged
                               simulation (DFlex's rule: non-finite state or |q|, |qd| > 1e6, reward 0);
                               truncated after ``horizon`` steps.

A diverged env's state is replaced by its last finite state, and the gradients leaving a step
towards its inputs (state, action) are cleaned with ``nan_to_num`` (DFlex's "nan hook"), so one
bad env cannot poison the policy gradient of the batch. A non-finite state *given* to ``step`` raises (``validate=True``).

``backend`` ("auto" | "cpu" | "torch"; ``tphys.rigid.integrator.route``): "auto" runs each frame as C loops on CPU for
float32/float64 models without muscles (``tphys/kernels/cpu/rigid.c``: one call forward, one autograd node and one call
backward per frame), the torch substeps otherwise; ``compile_substep=True`` is a torch-backend option (with "auto" it selects
the compiled torch substeps, with "cpu" it raises). ``env.backend`` is the resolved choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.autodiff import check_recompute
from tphys.envs.base import TphysEnv
from tphys.envs.ranges import POSITIVE, check_ranges, int_at_least
from tphys.kernels import rigid_kernels
from tphys.rigid import RigidControl, RigidModel, RigidState, forward_kinematics, step
from tphys.rigid.integrator import compiled_substep
from tphys.rigid.presets import DFLEX, dflex_model

DIVERGED = 1e6  # DFlex: |q| or |qd| beyond this counts as a diverged simulation
# A joint quaternion of smaller norm is no rotation: the kinematics normalize q / max(|q|, 1e-12), so a zero one gave a
# zero rotation matrix (a collapsed body), silently. Any larger norm is the rotation of q / |q| (each step renormalizes).
MIN_QUATERNION_NORM = 1e-6
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
        muscles: the actions drive the model's muscles (activation = (action + 1) / 2 in [0, 1]), not its motors.
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
    muscles: bool = False


class RigidEnv(TphysEnv):
    """Batched differentiable env of a ``RigidTask``; see the module docstring for keys."""

    state_keys = ("q", "qd")

    def __init__(self, task: RigidTask, num_envs: int = 1, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 goal: str | None = None, substeps: int | None = None, horizon: int | None = None, early_termination: bool = True,
                 recompute: bool | str = False, compile_substep: bool = False, backend: str = "auto", validate: bool = True,
                 seed: int | None = None):
        if goal is not None and goal != task.goal:
            raise ValueError(f"{task.name}: unknown goal {goal!r}; valid goals: {task.goal}")
        substeps = DFLEX[task.preset]["substeps"] if substeps is None else substeps
        horizon = task.horizon if horizon is None else horizon
        check_ranges(task.name, dict(substeps=substeps, horizon=horizon, dt=task.dt), PARAMETER_RANGES)
        super().__init__(num_envs, device, dtype, horizon, task.dt, validate, seed)
        self.name, self.task, self.goal = task.name, task, task.goal
        self.substeps, self.early_termination, self.recompute = substeps, early_termination, check_recompute(recompute)
        self.model: RigidModel = dflex_model(task.preset, dtype=dtype, device=self.device)
        # backend ("auto" | "cpu" | "torch", ``tphys.rigid.integrator.route``): "cpu" runs each frame as C loops (one call forward,
        # one node / one call backward; ``tphys/kernels/cpu/rigid.c``), "torch" the torch substeps; "auto" takes C for float32/float64
        # CPU models without muscles. compile_substep (opt-in; TorchRL's EnvBase consumes a keyword named ``compile``, hence the
        # name) puts each torch substep under torch.compile (``tphys.rigid.integrator.compiled_substep``): it is a torch-backend
        # option, so with backend "auto" it selects the compiled torch substeps, and with backend "cpu" it raises.
        if compile_substep and backend == "cpu":
            raise ValueError(f"{task.name}: compile_substep=True compiles the torch substep and cannot apply with backend='cpu' (the C "
                             "frame); pass backend='auto' or 'torch' with compile_substep, or compile_substep=False with backend='cpu'")
        self.backend = "torch" if compile_substep else rigid_kernels.resolve_backend(self.model, backend)
        self._substep_fn = compiled_substep(self.model, self.dt, substeps, task.contact) if compile_substep else None
        self.compiled = bool(compile_substep)
        self.observation_dim = task.observation_dim
        action_dim = self.model.num_muscles if task.muscles else self.model.num_actuators
        self._set_specs(action_dim, observation=(self.observation_dim,), q=(self.model.nq,), qd=(self.model.nv,))
        # (joint name, first q index) of each free joint's quaternion (after its position) and each ball joint's
        joints = self.model.names["joints"].items()
        self.quaternions = tuple((name, index + (3 if kind == "free" else 0)) for name, (index, _, kind) in joints
                                 if kind in ("free", "ball"))
        # [J, 4] their q columns, for one gather a check
        self._quaternion_columns = torch.tensor([[i + k for k in range(4)] for _, i in self.quaternions], dtype=torch.int64,
                                                device=self.device).reshape(-1, 4)

    # ------------------------------------------------------------------ the protocol's hooks
    def initial_state(self) -> dict[str, Tensor]:
        """q [N, nq], qd [N, nv] of the task's random initial states."""
        q, qd = self.task.sample_initial(self.model, self.num_envs, self.generator)
        return dict(q=q.to(device=self.device, dtype=self.dtype), qd=qd.to(device=self.device, dtype=self.dtype))

    def physics_step(self, state: TensorDictBase, action: Tensor) -> TensorDictBase:
        """One 1/60 s frame of ``substeps`` semi-implicit Euler substeps; ``action`` [N, A] in [-1, 1].

        DFlex's divergence rule: an env whose new state is not finite or beyond ``DIVERGED`` keeps its state and is
        flagged ``terminated`` [N, 1] in the result; gradients leaving the step are cleaned of NaN/inf."""
        q, qd = state.get("q"), state.get("qd")
        action = _CleanGrad.apply(action)
        control = RigidControl(action.new_zeros(action.shape[0], 0), 0.5 * action + 0.5) if self.task.muscles else RigidControl(action)
        new = step(self.model, RigidState(_CleanGrad.apply(q), _CleanGrad.apply(qd)), control, self.dt,
                   self.substeps, contact=self.task.contact, recompute=self.recompute, substep_fn=self._substep_fn, backend=self.backend)
        diverged = _diverged(new.q, new.qd)  # [N]
        if diverged.any():
            keep = diverged.unsqueeze(-1)
            new = RigidState(torch.where(keep, q, _finite(new.q)), torch.where(keep, qd, _finite(new.qd)))
        return self.next_state(state, q=new.q, qd=new.qd, terminated=diverged.unsqueeze(-1))

    def observe(self, state: TensorDictBase, action: Tensor) -> dict[str, Tensor]:
        """``observation`` [N, obs_dim], the task's (``action``: the command just applied, zeros at reset)."""
        return {"observation": self.task.observe(self.model, state.get("q"), state.get("qd"), action)}

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] the task's reward; 0 where the simulation diverged."""
        return torch.where(state.get("terminated")[:, 0], 0.0, self.task.reward(observation["observation"], action)).unsqueeze(-1)

    def terminated(self, state: TensorDictBase, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] bool: diverged, or (``early_termination``) the task's rule."""
        terminated = state.get("terminated")
        if self.early_termination and self.task.terminated is not None:
            terminated = terminated | self.task.terminated(observation["observation"]).unsqueeze(-1)
        return terminated

    def invalid_state(self, state: TensorDictBase, when: str) -> tuple[Tensor, str] | None:
        """The envs of an input whose free or ball joint quaternion has norm below ``MIN_QUATERNION_NORM`` (no rotation),
        naming the first such joint and its q slice; None otherwise, and for outputs (each step renormalizes; a diverged
        env keeps its input). One host sync where the model has such joints."""
        if when != "input" or not self.quaternions:
            return None
        q = state.get("q").detach()
        norms = torch.linalg.vector_norm(q[:, self._quaternion_columns], dim=-1)  # [N, J]
        small = norms < MIN_QUATERNION_NORM  # NaN: not small (the finite checks name it)
        bad = small.any(-1)
        if not bool(bad.any()):
            return None
        env = int(bad.nonzero()[0])
        joint = int(small[env].nonzero()[0])
        name, i = self.quaternions[joint]
        return bad, (f"joint {name!r} (q[{i}:{i + 4}], w x y z) has a quaternion of norm {float(norms[env, joint]):.3g} in env {env}, "
                     f"below {MIN_QUATERNION_NORM:g}: no rotation (the state holds unit quaternions; any norm above that stands "
                     f"for q / |q|)")

    # ------------------------------------------------------------------ views
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


def _diverged(*xs: Tensor) -> Tensor:
    """[N] bool: an entry of the [N, k] tensors ``xs`` is NaN, ±inf or beyond ``DIVERGED`` in magnitude. One comparison
    does all three (NaN and ±inf fail ``|x| <= DIVERGED``), on the tensors side by side: 5 ops a step where two
    tensors' isfinite / all / abs / any took 15."""
    return ~(torch.cat([x.detach() for x in xs], -1).abs() <= DIVERGED).all(-1)


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
