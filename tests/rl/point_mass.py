"""A hand-checkable MDP for loss tests: a 1-D point mass pushed by a bounded force.

State (x, v); action a in [-1, 1]; v' = v + dt a, x' = x + dt v' (exact, differentiable);
reward r = -(x'^2) - 0.1 a^2 = -|e|² with e = (x', sqrt(0.1)·a): linear dynamics, quadratic reward (an
LQ problem: Gauss-Newton is exact on it); truncated after ``horizon`` steps; terminated when |x'| >
``terminate_at`` (if set). Stateless in TorchRL's sense: (x, v, step_count) travel in the td.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class PointMass1D(EnvBase):
    batch_locked = True

    def __init__(self, num_envs: int = 3, horizon: int = 10, dt: float = 0.1, terminate_at: float | None = None,
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        super().__init__(device="cpu", batch_size=torch.Size([num_envs]))
        self.num_envs, self.horizon, self.dt, self.terminate_at, self.dtype = num_envs, horizon, dt, terminate_at, dtype
        n = num_envs
        self.observation_spec = Composite(
            observation=Unbounded(shape=(n, 2), dtype=dtype), step_count=Unbounded(shape=(n, 1), dtype=torch.int64), shape=(n,)
        )
        self.action_spec = Bounded(low=-1.0, high=1.0, shape=(n, 1), dtype=dtype)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=dtype)
        flag = Categorical(2, shape=(n, 1), dtype=torch.bool)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=(n,))
        self.generator = torch.Generator().manual_seed(seed)

    def _set_seed(self, seed):
        self.generator.manual_seed(int(seed or 0))

    def sample_start(self) -> torch.Tensor:
        x = 2 * torch.rand(self.num_envs, 1, generator=self.generator, dtype=self.dtype) - 1
        return torch.cat([x, torch.zeros_like(x)], -1)

    def _reset(self, td=None, **kwargs):
        obs = self.sample_start()
        steps = torch.zeros(self.num_envs, 1, dtype=torch.int64)
        if td is not None and "_reset" in td.keys() and "observation" in td.keys():
            keep = ~td["_reset"].reshape(-1, 1)
            obs = torch.where(keep, td["observation"], obs)
            steps = torch.where(keep, td["step_count"], steps)
        flags = torch.zeros(self.num_envs, 1, dtype=torch.bool)
        return TensorDict(observation=obs, step_count=steps, done=flags, terminated=flags.clone(), truncated=flags.clone(),
                          batch_size=self.batch_size)

    def _step(self, td):
        obs, a = td["observation"], td["action"]
        obs, reward = step_point_mass(obs, a, self.dt)
        steps = td["step_count"] + 1
        truncated = steps >= self.horizon
        terminated = torch.zeros_like(truncated) if self.terminate_at is None else obs[:, :1].abs() > self.terminate_at
        return TensorDict(observation=obs, step_count=steps, reward=reward, done=truncated | terminated, terminated=terminated,
                          truncated=truncated, batch_size=self.batch_size)

    def reward_residual(self, transition):
        """[N, 2] e with reward = -|e|²."""
        return torch.cat([transition["next", "observation"][:, :1], 0.1**0.5 * transition["action"]], -1)


def step_point_mass(obs: torch.Tensor, action: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``obs [N, 2], action [N, 1] -> (next obs [N, 2], reward [N, 1])`` of the MDP above."""
    x, v = obs[:, :1], obs[:, 1:]
    v = v + dt * action
    x = x + dt * v
    return torch.cat([x, v], -1), -(x.square()) - 0.1 * action.square()
