"""``PayloadEnv``: a TorchRL env for handle-driven particle systems (the PODS task family).

The env is stateless in TorchRL's sense: the whole physical state travels in the
tensordict, so ``env.rollout(H, policy, break_when_any_done=False)`` keeps the autograd
graph from every reward back to the actions, the policy parameters and the initial state.

Tensordict keys (N = num_envs, P particles, d dims, A action dims):
    observation  [N, obs_dim]  handle coordinates along the actuated axes relative to their
                               target, payload positions relative to their target, payload
                               velocities (flattened in that order)
    x, v         [N, P, d]     positions (m) and velocities (m/s) of all particles
    x_prev, v_prev [N, P, d]   previous step (BDF2 history)
    step_count   [N, 1] int64  steps since reset
    action       [N, A]        handle velocities in units of ``max_handle_speed`` (clamped to [-1, 1])
    reward       [N, 1]        Eq. 15 of PODS: -(w_p|p|² + w_x|x|² + w_v|v|² + w_a|u|²), u in m/s
    done / terminated / truncated [N, 1] bool (truncated after ``horizon`` steps; never terminated)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor

from tphys.derived import per_tensor
from tphys.envs.base import TphysEnv, env_indices
from tphys.envs.ranges import POSITIVE, check_ranges, int_at_least
from tphys.particles import ParticleControl, ParticleModel, ParticleState, bdf2, semi_implicit_euler

GOALS = ("stop", "stop_at_origin")
INTEGRATORS = ("bdf2", "semi_implicit")
BACKENDS = ("auto", "triton", "cpu", "torch")  # semi_implicit_euler's (tphys.kernels' vocabulary): "auto" fuses on CPU
# valid ranges of the env's numeric options and of the task's step (the physical parameters' are in tphys.envs.payload_tasks)
OPTION_RANGES = dict(substeps=int_at_least(1), horizon=int_at_least(1), newton_max_iter=int_at_least(1), newton_tol=POSITIVE.or_none(),
                     dt=POSITIVE)


def _one_hot_rows(scatter: Tensor) -> Tensor | None:
    """[K] long: the column of the single 1 in each row of ``scatter`` [K, P] when every row is one-hot (zeros and one
    1), else None."""
    if scatter.dim() == 2 and bool(((scatter == 0) | (scatter == 1)).all() & ((scatter == 1).sum(-1) == 1).all()):
        return (scatter == 1).to(torch.uint8).argmax(-1)
    return None


_cached_one_hot_rows = per_tensor(_one_hot_rows)


def one_hot_rows(scatter: Tensor) -> Tensor | None:
    """``_one_hot_rows(scatter)``, cached per tensor and version (``tphys.derived``); None under torch.compile tracing
    (the einsum serves there)."""
    return None if torch.compiler.is_compiling() else _cached_one_hot_rows(scatter)


@dataclass(frozen=True)
class RewardWeights:
    """Weights of Eq. 15: handle position, payload position, payload velocity, action."""

    handle_position: float
    payload_position: float
    payload_velocity: float
    action: float


@dataclass(frozen=True)
class PayloadTask:
    """Everything that defines one task of the family, in float64 on the CPU.

    Attributes:
        reference: [P, d] target configuration: payload at rest at its target (centred at the
            origin), handles where they hold it there.
        action_basis: [A, H, d] velocity of each handle for a unit action component.
        sample_initial: (model, reference, n, generator) -> (x [n, P, d], v [n, P, d]).
        weights: RewardWeights for each goal in GOALS.
    """

    name: str
    model: ParticleModel
    reference: Tensor
    action_basis: Tensor
    max_handle_speed: float
    dt: float
    horizon: int
    substeps: int
    sample_initial: Callable[..., tuple[Tensor, Tensor]]
    weights: dict[str, RewardWeights]
    integrator: str = "semi_implicit"


class PayloadEnv(TphysEnv):
    """Batched differentiable env of a ``PayloadTask``; see the module docstring for keys."""

    state_keys = ("x", "v", "x_prev", "v_prev")
    finite_output_keys = ("x", "v")

    def __init__(self, task: PayloadTask, num_envs: int = 1, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 goal: str = "stop", integrator: str | None = None, substeps: int | None = None, newton_tol: float | None = None,
                 newton_max_iter: int = 30, validate: bool = True, seed: int | None = None, horizon: int | None = None,
                 backend: str = "auto"):
        if goal not in GOALS:
            raise ValueError(f"{task.name}: unknown goal {goal!r}; valid goals: {', '.join(GOALS)}")
        integrator = task.integrator if integrator is None else integrator
        if integrator not in INTEGRATORS:
            raise ValueError(f"{task.name}: unknown integrator {integrator!r}; valid: {', '.join(INTEGRATORS)}")
        if backend not in BACKENDS:
            raise ValueError(f"{task.name}: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        substeps = task.substeps if substeps is None else substeps
        horizon = task.horizon if horizon is None else horizon
        check_ranges(task.name, dict(substeps=substeps, horizon=horizon, newton_max_iter=newton_max_iter, newton_tol=newton_tol,
                                     dt=task.dt), OPTION_RANGES)
        super().__init__(num_envs, device, dtype, horizon, task.dt, validate, seed)
        self.name, self.task, self.goal, self.integrator = task.name, task, goal, integrator
        self.substeps, self.newton_tol, self.newton_max_iter, self.backend = substeps, newton_tol, newton_max_iter, backend
        self.weights = task.weights[goal]
        self.model = task.model.to(device=self.device, dtype=dtype)
        self.reference = task.reference.to(device=self.device, dtype=dtype)
        self.action_basis = task.action_basis.to(device=self.device, dtype=dtype)
        self.free_reference = torch.einsum("fp,pd->fd", self.model.free_scatter, self.reference)
        self.handle_reference = torch.einsum("hp,pd->hd", self.model.handle_scatter, self.reference)
        action_dim = task.action_basis.shape[0]
        self.observation_dim = action_dim + 2 * self.model.num_free * task.reference.shape[-1]
        particles = tuple(task.reference.shape)
        self._set_specs(action_dim, observation=(self.observation_dim,), x=particles, v=particles, x_prev=particles, v_prev=particles)

    # ------------------------------------------------------------------ the protocol's hooks
    def initial_state(self) -> dict[str, Tensor]:
        """x, v [N, P, d] of the task's random initial states, without BDF2 history (x_prev = x, v_prev = v)."""
        x, v = self.task.sample_initial(self.task.model, self.task.reference, self.num_envs, self.generator)
        x = x.to(device=self.device, dtype=self.dtype)
        v = v.to(device=self.device, dtype=self.dtype)
        return dict(x=x, v=v, x_prev=x, v_prev=v)

    def physics_step(self, state: TensorDictBase, action: Tensor) -> TensorDictBase:
        """One env step of the configured integrator; ``action`` [N, A] in [-1, 1] commands the handle velocities."""
        if self.integrator == "bdf2":
            particles = bdf2(self.model, self.read_state(state), ParticleControl(self.handle_velocity(action)), self.dt,
                             tol=self.newton_tol, max_iter=self.newton_max_iter)
        else:  # reads x and v only (the history entries of read_state are BDF2's); the handle velocities as action @ basis,
            # which the fused C step computes in place (every other path: ParticleControl.velocities(), these values)
            particles = ParticleState.without_history(state.get("x"), state.get("v"))
            control = ParticleControl(None, handle_map=(action, self.velocity_basis()))
            particles = semi_implicit_euler(self.model, particles, control, self.dt, self.substeps, backend=self.backend)
        return self.next_state(state, x=particles.x, v=particles.v, x_prev=particles.x_prev, v_prev=particles.v_prev)

    def observe(self, state: TensorDictBase, action: Tensor) -> dict[str, Tensor]:
        """``observation`` [N, obs_dim] (see the module docstring)."""
        n, x, v = self.num_envs, state.get("x"), state.get("v")
        handles = self.pick(self.model.handle_scatter, x) - self.handle_reference
        handle_coordinates = torch.einsum("ahd,nhd->na", self.action_basis, handles)
        payload_x = self.pick(self.model.free_scatter, x) - self.free_reference
        payload_v = self.pick(self.model.free_scatter, v)
        return {"observation": torch.cat([handle_coordinates, payload_x.reshape(n, -1), payload_v.reshape(n, -1)], dim=-1)}

    def reward(self, state: TensorDictBase, action: Tensor, observation: dict[str, Tensor]) -> Tensor:
        """[N, 1] reward of Eq. 15 at ``state`` after the ``action`` [N, A] in [-1, 1]."""
        return -self.residual(observation["observation"], self.handle_velocity(action)).square().sum(-1, keepdim=True)

    def nonfinite_state_message(self, bad: Tensor) -> str:
        return (f"{self.name}: non-finite state after the step (NaN/inf) in env indices {env_indices(bad)}; "
                f"integrator={self.integrator}, dt={self.dt}")

    # ------------------------------------------------------------------ views
    def handle_velocity(self, action: Tensor) -> Tensor:
        """[N, H, d] handle velocities (m/s) commanded by ``action`` [N, A] in [-1, 1]."""
        return ParticleControl(None, handle_map=(action, self.velocity_basis())).velocities()

    def velocity_basis(self) -> Tensor:
        """[A, H, d] the handle velocities (m/s) of a unit action component: max_handle_speed · action_basis, built once
        per basis (an in-place edit or a new basis builds it again). For the tasks' axis-aligned bases (one nonzero
        entry a column) a matmul with it rounds exactly as speed · (action @ basis) does."""
        basis = self.action_basis
        key = (id(basis), basis._version, self.task.max_handle_speed)
        cached = getattr(self, "_velocity_basis", None)
        if cached is None or cached[0] != key:
            cached = (key, (self.task.max_handle_speed * basis).contiguous(), basis)  # basis: keeps its id its own
            self._velocity_basis = cached
        return cached[1]

    def pick(self, scatter: Tensor, x: Tensor) -> Tensor:
        """[N, K, d] = scatter [K, P] · x [N, P, d]: the particles a one-hot ``scatter`` (the model's handle or free rows)
        selects, by ``index_select`` (the einsum's values for finite x, without its matmul; and a NaN elsewhere does not
        leak into them), or by the einsum where a row is not one-hot."""
        rows = one_hot_rows(scatter)
        if rows is None:
            return torch.einsum("kp,npd->nkd", scatter, x)
        return x.index_select(-2, rows)

    def residual_scale(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """[obs_dim] sqrt of each observation entry's weight (handle positions, payload positions, payload velocities),
        built once per weights, dtype and device."""
        a, f, w = self.action_dim, (self.observation_dim - self.action_dim) // 2, self.weights
        key = (w, a, f, dtype, device)
        cached = getattr(self, "_residual_scale", None)
        if cached is None or cached[0] != key:
            scale = torch.cat([
                torch.full((a,), w.handle_position, dtype=dtype, device=device),
                torch.full((f,), w.payload_position, dtype=dtype, device=device),
                torch.full((f,), w.payload_velocity, dtype=dtype, device=device),
            ]).sqrt()
            cached = self._residual_scale = (key, scale)
        return cached[1]

    def residual(self, observation: Tensor, handle_velocity: Tensor) -> Tensor:
        """[N, E] weighted errors e with reward = -|e|² (Eq. 15 as a sum of squares).

        e = (sqrt(w_p)·p, sqrt(w_x)·x, sqrt(w_v)·v, sqrt(w_a)·u): handle coordinates,
        payload positions and velocities (the observation) and handle velocities u in m/s.
        Gauss-Newton methods (PODS's second-order step) linearise e, not the reward.
        """
        scale = self.residual_scale(observation.dtype, observation.device)
        return torch.cat([observation * scale, (self.weights.action**0.5) * handle_velocity.flatten(1)], dim=-1)

    def reward_residual(self, transition: TensorDictBase) -> Tensor:
        """[N, E] residual of a transition (``env.step`` output: ``action`` and ``("next", "observation")``).

        ``("next", "reward") == -|reward_residual|²`` for every transition.
        """
        return self.residual(transition["next", "observation"], self.handle_velocity(transition["action"].clamp(-1.0, 1.0)))

    def episode_metrics(self, trajectory: TensorDictBase, window: int = 10) -> dict[str, Tensor]:
        """The PODS paper's metrics (figures 8-10) of ``env.rollout`` output [N, T], each [N].

        final_kinetic_energy  J, payload kinetic energy averaged over the last ``window`` steps
        final_distance        m, payload particles' mean distance to their targets, same average
        mean_handle_speed     m/s, |u| averaged over handles and steps (control effort)
        """
        x, v = trajectory["next", "x"][:, -window:], trajectory["next", "v"][:, -window:]  # [N, W, P, d]
        free = self.model.free_scatter
        payload_x = torch.einsum("fp,nwpd->nwfd", free, x) - self.free_reference
        payload_v = torch.einsum("fp,nwpd->nwfd", free, v)
        mass = free @ self.model.mass
        kinetic = 0.5 * (mass * payload_v.square().sum(-1)).sum(-1)  # [N, W]
        distance = payload_x.norm(dim=-1).mean(-1)
        action = trajectory["action"].clamp(-1.0, 1.0)
        handle_velocity = self.task.max_handle_speed * torch.einsum("ahd,nta->nthd", self.action_basis, action)
        return {
            "final_kinetic_energy": kinetic.mean(-1),
            "final_distance": distance.mean(-1),
            "mean_handle_speed": handle_velocity.norm(dim=-1).mean((-1, -2)),
        }

    def render_geometry(self) -> dict:
        """Static drawing data for ``tphys.render``: edges, triangles, handles, ground."""
        model = self.task.model
        edges, cables = [], []
        if model.springs is not None:
            inc = model.springs.incidence
            edges = torch.stack([inc.argmin(-1), inc.argmax(-1)], -1).tolist()
            cables = (model.springs.tension_only > 0).tolist()
        return dict(
            dim=self.task.reference.shape[-1],
            up_axis=model.up_axis,
            edges=edges,
            cable=cables,
            triangles=[] if model.triangles is None else model.triangles.corners.tolist(),
            handles=model.handle_index.tolist(),
            ground=None if model.ground is None else float(model.ground.height),
            reference=self.task.reference.tolist(),
        )

    def read_state(self, state: TensorDictBase) -> ParticleState:
        """The ``ParticleState`` of a state tensordict of this env (no copy): BDF2 history after the first step."""
        return ParticleState(state["x"], state["v"], state["x_prev"], state["v_prev"], state["step_count"].reshape(-1) > 0)
