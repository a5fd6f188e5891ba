"""What the tphys envs share: ``TphysEnv`` (specs, seeding) and input checks whose messages name the
env, the expected shape or dtype, and the env indices at fault."""

from __future__ import annotations

import torch
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class TphysEnv(EnvBase):
    """Base of the tphys envs: stateless (the state travels in the tensordict), batch-locked to
    ``num_envs``, actions in [-1, 1], an [N, 1] reward, done / terminated / truncated flags and a
    seeded torch.Generator for resets. Subclasses call ``_set_specs`` and ``_seed_generator``."""

    batch_locked = True

    def _set_specs(self, action_dim: int, **state) -> None:
        """Specs from the state entries (``name=spec``) plus ``step_count``, actions and reward."""
        n, kw = self.batch_size[0], dict(dtype=self.dtype, device=self.device)
        self.observation_spec = Composite(**state, step_count=Unbounded(shape=(n, 1), dtype=torch.int64, device=self.device),
                                          shape=(n,))
        self.action_spec = Bounded(low=-1.0, high=1.0, shape=(n, action_dim), **kw)
        self.reward_spec = Unbounded(shape=(n, 1), **kw)
        self.done_spec = done_spec(n, self.device)

    def _seed_generator(self, seed: int | None) -> None:
        self._generator = torch.Generator()
        self._set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        self._generator.manual_seed(torch.seed() if seed is None else int(seed))


def check_options(env: str, goal, goals: tuple, physics: dict, defaults: dict, env_options: tuple, **counts) -> None:
    """Raise ValueError naming the env and the valid choices on an unknown goal or physical parameter, or on
    a count (``name=value``) that is not an int >= 1."""
    if goal not in (None, *goals):
        raise ValueError(f"{env}: unknown goal {goal!r}; valid goals: {', '.join(goals)}")
    unknown = sorted(set(physics) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for env {env!r}; env options: {', '.join(env_options)}; "
                         f"physical parameters: {', '.join(defaults)}")
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{env}: {name} must be an int >= 1, got {value!r}")


def env_indices(mask: Tensor, limit: int = 20) -> str:
    """The indices where ``mask`` [N] is True, as text (the first ``limit``)."""
    idx = torch.nonzero(mask).flatten().tolist()
    return str(idx[:limit]) + (f" ... ({len(idx)} in all)" if len(idx) > limit else "")


def check_action(name: str, action: Tensor, num_envs: int, action_dim: int, dtype: torch.dtype) -> None:
    """Raise on a wrong shape (ValueError), a dtype other than the env's (TypeError) or NaN/inf (ValueError)."""
    expected = (num_envs, action_dim)
    if tuple(action.shape) != expected:
        raise ValueError(f"{name}: action has shape {tuple(action.shape)}, expected {expected} (num_envs, action_dim)")
    if action.dtype != dtype:
        raise TypeError(
            f"{name}: action dtype is {action.dtype} but the env runs in {dtype}; "
            f"cast the policy output (a {action.dtype} action would silently promote the state)"
        )
    bad = ~torch.isfinite(action).all(-1)
    if bad.any():
        raise ValueError(f"{name}: non-finite action (NaN/inf) in env indices {env_indices(bad)}")


def done_spec(num_envs: int, device) -> Composite:
    """done / terminated / truncated, [N, 1] bool each."""
    flag = Categorical(2, shape=(num_envs, 1), dtype=torch.bool, device=device)
    return Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=(num_envs,))
