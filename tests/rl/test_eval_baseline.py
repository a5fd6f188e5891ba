"""eval.json's random-policy baseline on envs that terminate early (ant, hopper, humanoid): one episode per env, ended
at its first done, from the same initial states as the trained policy, equal to a direct per-episode computation."""

import pytest
import torch
from omegaconf import OmegaConf
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import step_mdp

import tphys.envs
from rl.experiment import finish_run

SEED = 10_003
# (envs, episode length): long enough for random actions to fall (done) in every env
CASES = {"hopper": (4, 60), "ant": (4, 60), "humanoid": (2, 40)}


def direct_random_returns(env, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(returns [N], first done step [N])`` of uniform random actions, stepping by hand and summing each env's rewards
    up to and including its first done; the same seeds as ``finish_run``."""
    env.set_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    low, high = env.action_spec.space.low, env.action_spec.space.high
    td = env.reset()
    n = env.batch_size[0]
    total = torch.zeros(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    first_done = torch.full((n,), -1)
    with torch.no_grad():
        for t in range(env.horizon):
            td["action"] = low + (high - low) * torch.rand(low.shape, generator=generator, dtype=torch.float64).to(low.dtype)
            td = env.step(td)
            total += torch.where(alive, td["next", "reward"].squeeze(-1).double(), 0.0)
            done = td["next", "done"].squeeze(-1)
            first_done = torch.where(alive & done, t, first_done)
            alive &= ~done
            td = step_mdp(td)
    return total, first_done


@pytest.mark.parametrize("name", ["hopper", "ant", pytest.param("humanoid", marks=pytest.mark.slow)])  # humanoid: 37 s
def test_random_baseline_in_eval_json_is_one_episode_per_env(name, tmp_path):
    n, horizon = CASES[name]
    cfg = OmegaConf.create({"seed": SEED - 10_000, "eval": {"episodes": n}, "env": {"name": name, "goal": None},
                            "algo": {"name": "sapo"}, "video": {"enabled": False}})
    env = tphys.envs.make(name, num_envs=n, seed=0, horizon=horizon)
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    policy = TensorDictModule(torch.nn.Linear(obs_dim, action_dim), in_keys=["observation"], out_keys=["action"])
    summary = finish_run(cfg, tmp_path, env, policy, env_steps=0, wall_time=0.0, stochastic=False)
    expected, first_done = direct_random_returns(env, SEED)
    assert (first_done >= 0).all(), "every random episode should end early for the test to mean something"
    assert summary["random_policy"]["returns"] == pytest.approx(expected.tolist(), rel=1e-12, abs=1e-12)
    assert summary["random_policy"]["episodes"] == n
