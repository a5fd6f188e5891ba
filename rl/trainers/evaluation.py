"""Policy evaluation: full episodes, mean return and a 95 % confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl import distributed


def t_quantile_975(dof: int) -> float:
    """Two-sided 95 % Student-t quantile (Cornish-Fisher expansion; error < 1e-3 for dof >= 5)."""
    z = 1.959963984540054
    if dof <= 0:
        return float("nan")
    n = float(dof)
    return z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z
    ) / (384 * n**3)


@dataclass
class EvalResult:
    """Summary of ``episodes`` full-length episodes; ``ci95`` is the half-width of the 95 % CI of the mean."""

    mean: float
    std: float
    ci95: float
    episodes: int
    deterministic: bool
    returns: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(returns: torch.Tensor, deterministic: bool) -> EvalResult:
    """``returns [E]`` -> mean, sample std and t-based 95 % CI half-width of the mean."""
    r = returns.detach().double().flatten().cpu()
    n = r.numel()
    std = r.std(unbiased=True).item() if n > 1 else 0.0
    ci = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return EvalResult(r.mean().item(), std, ci, n, deterministic, [float(v) for v in r.tolist()])


@torch.no_grad()
def evaluate(env: EnvBase, policy: TensorDictModuleBase, episodes: int = 64, deterministic: bool = True,
             max_steps: int | None = None) -> EvalResult:
    """Return of ``episodes`` full episodes (``env.horizon`` steps unless ``max_steps``).

    Runs ``ceil(episodes / num_envs)`` rounds of ``num_envs`` parallel episodes, each from a
    fresh ``env.reset()``, and keeps the first ``episodes`` returns. An env that is one rank's shard of the global envs
    (``TphysEnv.set_shard``) runs its share of each round and gathers every rank's returns (a collective). Episode returns are
    undiscounted sums of ``("next", "reward")`` up to the first ``done``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    steps = int(max_steps or getattr(env, "horizon", 0))
    if steps < 1:
        raise ValueError("evaluate needs max_steps or an env with a .horizon (episode length)")
    num_envs = int(env.batch_size.numel()) if len(env.batch_size) else 1
    mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    returns = []
    with set_exploration_type(mode), distributed.sharded_noise(distributed.env_shard(env)):
        while sum(r.numel() for r in returns) < episodes:
            traj = env.rollout(steps, policy, break_when_any_done=False, auto_reset=True)
            reward = traj.get(("next", "reward")).reshape(num_envs, steps)
            done = traj.get(("next", "done")).reshape(num_envs, steps)
            alive = (torch.cumsum(done.long(), dim=1) - done.long()) == 0  # up to and including the first done
            # float64 sums: a long episode loses no digits; a data-parallel shard's episodes join every rank's
            returns.append(distributed.gather_envs(env, (reward.double() * alive).sum(1)))
    return summarize(torch.cat(returns)[:episodes], deterministic)
