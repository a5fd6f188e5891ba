"""Policy evaluation: full episodes, mean return and a 95 % confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl import distributed

_T975 = (  # dof 1..30: the 0.975 quantile of Student's t, inverted from its CDF (regularized incomplete beta) to 30 digits
    12.706204736174705, 4.302652729749464, 3.1824463052837095, 2.7764451051977943, 2.5705818356363155,
    2.44691185114497, 2.3646242515927853, 2.3060041352041667, 2.2621571627982053, 2.228138851986275,
    2.2009851600916397, 2.178812829667229, 2.1603686564627926, 2.144786687917804, 2.1314495455597755,
    2.1199052992212546, 2.109815577833317, 2.1009220402410387, 2.0930240544083096, 2.085963447265865,
    2.0796138447276804, 2.0738730679040263, 2.0686576104190486, 2.063898561628026, 2.0595385527532977,
    2.055529438642873, 2.0518305164802855, 2.048407141795245, 2.0452296421327043, 2.042272456301238,
)


def t_quantile_975(dof: int) -> float:
    """Two-sided 95 % Student-t quantile: exact (to 1e-15) from a table for dof <= 30, the Cornish-Fisher expansion
    in 1/dof to third order (Abramowitz & Stegun 26.7.5) beyond, where its error is < 2e-6 (1.75e-6 at dof 31,
    shrinking as dof⁻⁴)."""
    if dof <= 0:
        return float("nan")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959963984540054
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
