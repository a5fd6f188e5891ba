"""``evaluate`` against a direct per-episode computation on an env whose episodes terminate early (issue 22).

Each episode's return is the undiscounted sum of its rewards up to and including its first done, from a fresh
reset; rounds of ``num_envs`` parallel episodes run until ``episodes`` returns exist and the first ``episodes``
are kept. The starts here depend only on (round, env), so the direct computation can replay every episode.
"""

import math

import pytest
import torch
from point_mass import PointMass1D, step_point_mass
from tensordict.nn import TensorDictModule

from rl.modules import SquashedGaussianActor
from rl.trainers import evaluate, summarize, t_quantile_975
from rl.trainers.evaluation import EvalResult


class RoundStarts(PointMass1D):
    """Point mass whose full resets start round k's env i at x = START(k, i); partial resets (after a done inside
    a rollout) start at x = 0.3 (their rewards must not count)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.round = -1

    STARTS = [[0.05, -0.45, 0.3], [0.02, 0.4, -0.1], [0.49, -0.03, 0.2], [-0.2, 0.01, 0.35]]  # [round][env]

    @staticmethod
    def start(k, i):
        return RoundStarts.STARTS[k % 4][i % 3] * (1 + 0.01 * (i // 3))

    def _reset(self, td=None, **kwargs):
        partial = td is not None and "_reset" in td.keys() and not td["_reset"].all()
        if not partial:
            self.round += 1
        out = super()._reset(td, **kwargs)
        x = torch.tensor([[self.start(self.round, i)] for i in range(self.num_envs)], dtype=self.dtype)
        fresh = torch.cat([x, torch.zeros_like(x)], -1) if not partial else torch.full((self.num_envs, 2), 0.3, dtype=self.dtype)
        if td is not None and "_reset" in td.keys() and "observation" in td.keys():
            keep = ~td["_reset"].reshape(-1, 1)
            fresh = torch.where(keep, td["observation"], fresh)
        out["observation"] = fresh
        return out


def push(obs):
    """The deterministic policy: a = tanh(3 x + v) pushes the mass away from 0 (episodes end at |x| > 0.5)."""
    return torch.tanh(3 * obs[..., :1] + obs[..., 1:])


def policy():
    return TensorDictModule(lambda obs: push(obs), in_keys=["observation"], out_keys=["action"])


def direct_returns(num_envs, rounds, steps, horizon, terminate_at, dtype=torch.float64):
    """Replay every episode by hand: [rounds * num_envs] float64 returns, and each episode's length."""
    returns, lengths = [], []
    for k in range(rounds):
        for i in range(num_envs):
            obs = torch.tensor([[RoundStarts.start(k, i), 0.0]], dtype=dtype)
            total, t = 0.0, 0
            while t < steps:
                obs, reward = step_point_mass(obs, push(obs), 0.1)
                total += float(reward)
                t += 1
                if t >= horizon or abs(obs[0, 0].item()) > terminate_at:
                    break
            returns.append(total)
            lengths.append(t)
    return returns, lengths


@pytest.mark.parametrize("episodes", [3, 7, 9])
def test_returns_are_per_episode_up_to_the_first_done(episodes):
    num_envs, horizon, terminate_at = 3, 8, 0.5
    env = RoundStarts(num_envs=num_envs, horizon=horizon, terminate_at=terminate_at)
    res = evaluate(env, policy(), episodes=episodes, deterministic=True)
    rounds = math.ceil(episodes / num_envs)
    assert env.round == rounds - 1  # one full reset per round, no more
    expected, lengths = direct_returns(num_envs, rounds, horizon, horizon, terminate_at)
    assert any(n < horizon for n in lengths[:episodes]) and any(n == horizon for n in lengths[:episodes])
    assert res.episodes == episodes and len(res.returns) == episodes
    assert res.returns == pytest.approx(expected[:episodes], rel=1e-12, abs=1e-12)
    assert res.mean == pytest.approx(sum(expected[:episodes]) / episodes, rel=1e-12)
    assert res.deterministic is True


def test_max_steps_cuts_the_episodes():
    env = RoundStarts(num_envs=3, horizon=8, terminate_at=0.5)
    res = evaluate(env, policy(), episodes=3, max_steps=2)
    expected, _ = direct_returns(3, 1, 2, 8, 0.5)
    assert res.returns == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_one_step_episodes_are_allowed():
    env = RoundStarts(num_envs=3, horizon=8, terminate_at=0.5)
    res = evaluate(env, policy(), episodes=3, max_steps=1)
    expected, _ = direct_returns(3, 1, 1, 8, 0.5)
    assert res.returns == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_float32_rewards_are_summed_in_float64():
    """The float32 rewards of an episode are added in float64: no digits lost over a long episode."""
    env = RoundStarts(num_envs=2, horizon=300, terminate_at=None, dtype=torch.float32)
    zero = TensorDictModule(lambda obs: 0.0 * obs[..., :1] + 0.01, in_keys=["observation"], out_keys=["action"])
    res = evaluate(env, zero, episodes=2)
    traj = RoundStarts(num_envs=2, horizon=300, terminate_at=None, dtype=torch.float32).rollout(300, zero)
    rewards = traj["next", "reward"].squeeze(-1)
    assert rewards.dtype == torch.float32
    expected = rewards.double().sum(1)
    assert res.returns == pytest.approx(expected.tolist(), rel=1e-15)
    assert (rewards.sum(1).double() - expected).abs().max() > 0  # a float32 sum would differ


def test_deterministic_and_stochastic_modes():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(2, 1, (8,)).double()
    env = RoundStarts(num_envs=2, horizon=5, terminate_at=None)
    det = evaluate(env, actor, episodes=2, deterministic=True)
    with torch.no_grad():
        expected = []
        for i in range(2):
            obs = torch.tensor([[RoundStarts.start(0, i), 0.0]], dtype=torch.float64)
            total = 0.0
            for _ in range(5):
                mu, _ = actor.distribution(obs)
                obs, r = step_point_mass(obs, torch.tanh(mu), 0.1)
                total += float(r)
            expected.append(total)
    assert det.returns == pytest.approx(expected, rel=1e-12)
    sto = evaluate(RoundStarts(num_envs=2, horizon=5, terminate_at=None), actor, episodes=2, deterministic=False)
    assert sto.deterministic is False and sto.returns != pytest.approx(expected, rel=1e-6)


def test_bad_arguments_are_refused():
    env = RoundStarts(num_envs=2, horizon=5)
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        evaluate(env, policy(), episodes=0)
    assert evaluate(env, policy(), episodes=1).episodes == 1
    del env.horizon
    with pytest.raises(ValueError, match="max_steps or an env with a .horizon"):
        evaluate(env, policy(), episodes=2)


def cornish_fisher(dof):
    """The t quantile's expansion in 1/dof to third order, written out (Abramowitz & Stegun 26.7.5)."""
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def test_t_quantile_is_exact_up_to_dof_30_and_the_cornish_fisher_expansion_beyond():
    from scipy.stats import t as student_t

    # closed forms: dof 1 is Cauchy, tan(pi (0.975 - 1/2)); dof 2: (2p - 1) / sqrt(2 p (1 - p))
    assert t_quantile_975(1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-14)
    assert t_quantile_975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-14)
    for dof in range(1, 31):  # the table: every entry
        assert t_quantile_975(dof) == pytest.approx(student_t.ppf(0.975, dof), rel=1e-13), dof
    for dof in (31, 32, 40, 63, 100, 1000):  # the expansion: its terms, and an error < 2e-6 from dof 31
        assert t_quantile_975(dof) == pytest.approx(cornish_fisher(dof), rel=1e-14)
        assert t_quantile_975(dof) == pytest.approx(student_t.ppf(0.975, dof), abs=2e-6)
    assert math.isnan(t_quantile_975(0)) and math.isnan(t_quantile_975(-1))


def test_t_quantile_error_bound_of_the_docstring():
    """Failed (xfail strict) on the expansion alone: 2.8e-3 at dof 5, 1.3e-3 at dof 6; now exact up to dof 30."""
    from scipy.stats import t as student_t

    for dof in range(1, 200):
        assert t_quantile_975(dof) == pytest.approx(student_t.ppf(0.975, dof), abs=2e-6), dof


def test_summary_statistics():
    r = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32)
    res = summarize(r, deterministic=False)
    mean = 7 / 3
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)  # sample std (n - 1)
    assert isinstance(res, EvalResult)
    assert (res.mean, res.episodes, res.deterministic, res.returns) == (pytest.approx(mean), 3, False, [1.0, 2.0, 4.0])
    assert res.std == pytest.approx(std, rel=1e-12)
    assert res.ci95 == pytest.approx(4.302652729749464 * std / math.sqrt(3), rel=1e-12)  # t_0.975 at dof 2
    assert res.to_dict() == {"mean": res.mean, "std": res.std, "ci95": res.ci95, "episodes": 3, "deterministic": False,
                             "returns": [1.0, 2.0, 4.0]}
    one = summarize(torch.tensor([5.0]), deterministic=True)
    assert (one.mean, one.std, one.episodes) == (5.0, 0.0, 1) and math.isnan(one.ci95)
    none = summarize(torch.tensor([]), deterministic=True)  # no episodes: no CI, and no ZeroDivisionError
    assert (none.std, none.episodes, none.returns) == (0.0, 0, []) and math.isnan(none.ci95) and math.isnan(none.mean)
    two = summarize(torch.tensor([[1.0], [3.0]]), deterministic=True)  # flattened
    assert two.std == pytest.approx(math.sqrt(2)) and two.ci95 == pytest.approx(math.tan(0.475 * math.pi) * 1.0)  # dof 1: Cauchy
