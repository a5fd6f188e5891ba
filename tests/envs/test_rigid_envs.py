"""The DFlex rigid-body envs: sizes, TorchRL conformance, rewards and terminations by hand, gradients."""

import math

import pytest
import torch
from helpers import check_directional_derivative, summed_reward
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import check_env_specs

import tphys.envs as E
from tphys.math import quat_to_matrix
from tphys.rigid.presets import DFLEX

# DFlex's (obs, action, episode length, substeps) per task
DFLEX_SIZES = {
    "cartpole_swingup": (5, 1, 240, 4),
    "hopper": (11, 3, 1000, 16),
    "cheetah": (17, 6, 1000, 16),
    "ant": (37, 8, 1000, 16),
    "humanoid": (76, 21, 1000, 48),
}
NAMES = sorted(DFLEX_SIZES)


def _policy(env, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(env.observation_dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, env.action_dim),
                              torch.nn.Tanh()).to(env.dtype)
    return net, TensorDictModule(net, ["observation"], ["action"])


@pytest.mark.parametrize("name", NAMES)
def test_sizes_and_episode_lengths_are_dflex_s(name):
    obs, act, horizon, substeps = DFLEX_SIZES[name]
    env = E.make(name, num_envs=2, seed=0)
    assert (env.observation_dim, env.action_dim, env.horizon, env.substeps) == (obs, act, horizon, substeps)
    assert env.observation_spec["observation"].shape[-1] == obs and env.action_spec.shape[-1] == act
    assert name in E.list_envs() and len(E.list_envs()[name]) > 20


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_env_specs(name, dtype):
    env = E.make(name, num_envs=3, dtype=dtype, seed=0)
    check_env_specs(env, seed=0)
    td = env.rollout(3, break_when_any_done=False)
    assert td["next", "observation"].dtype == dtype and td["next", "reward"].dtype == dtype
    assert torch.isfinite(td["next", "observation"]).all()


# (env, N): 64 envs each. Humanoid's case takes 40-80 s at any N (32 frames of 16 substeps of a 27-dof tree, recomputed
# in backward), so it is slow-marked; humanoid's gradients stay in the default suite through the FD check of
# tests/rigid/test_gradients.py
GRADIENT_CASES = [(name, 64) for name in NAMES if name != "humanoid"] + [pytest.param("humanoid", 64, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, num_envs", GRADIENT_CASES)
def test_h32_rollout_of_64_envs_from_random_states_gives_finite_policy_gradients(name, num_envs):
    env = E.make(name, num_envs=num_envs, seed=1, recompute=True)
    net, policy = _policy(env)
    td = env.rollout(32, policy, break_when_any_done=False)
    assert td.shape == (num_envs, 32)
    starts = td["q"][:, 0]
    assert (starts.std(0)[: env.model.nq] > 0).any(), "DFlex's stochastic initial states"
    td["next", "reward"].sum().backward()
    for parameter in net.parameters():
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("name, contact", [("cartpole_swingup", False), ("hopper", True)])
def test_env_rollout_gradient_matches_finite_differences(name, contact):
    @settings(max_examples=3)
    @given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 3), scale=st.floats(0.1, 0.9))
    def check(seed, steps, scale):
        env = E.make(name, num_envs=2, dtype=torch.float64, seed=seed, substeps=4, early_termination=False)
        td0 = env.reset()
        if contact:  # put the hopper's foot into the ground from the first substep
            td0["q"][:, 1] = 0.93
        gen = torch.Generator().manual_seed(seed)
        actions = scale * (2 * torch.rand(steps, 2, env.action_dim, generator=gen, dtype=torch.float64) - 1)
        check_directional_derivative(lambda a: summed_reward(env, td0, a), [actions],
                                     [torch.randn(actions.shape, generator=gen, dtype=torch.float64)])
        state = [td0["q"], td0["qd"]]
        check_directional_derivative(lambda q, qd: summed_reward(env, td0.clone().update({"q": q, "qd": qd}), actions), state,
                                     [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in state])

    check()


def test_cartpole_observation_and_reward_by_hand():
    env = E.make("cartpole_swingup", num_envs=1, dtype=torch.float64, seed=0)
    td = env.reset()
    td["action"] = torch.zeros(1, 1, dtype=torch.float64)
    out = env.step(td)["next"]
    (x, th), (xd, thd) = out["q"][0].tolist(), out["qd"][0].tolist()
    assert out["observation"][0].tolist() == pytest.approx([x, xd, math.sin(th), math.cos(th), thd])
    wrapped = math.atan2(math.sin(th), math.cos(th))
    assert out["reward"].item() == pytest.approx(-(wrapped**2 + 0.1 * thd**2 + 0.05 * x**2 + 0.1 * xd**2))
    starts = E.make("cartpole_swingup", num_envs=256, dtype=torch.float64, seed=1).reset()["q"]
    assert starts[:, 1].min() >= -1.5 * math.pi and starts[:, 1].max() <= -0.5 * math.pi, "the pole starts hanging, ±π/2"


def test_ant_observation_layout_and_reward_by_hand():
    env = E.make("ant", num_envs=2, dtype=torch.float64, seed=0)
    td = env.reset()
    action = torch.tensor([[0.3] * 8, [-0.2] * 8], dtype=torch.float64)
    out = env.step(td.set("action", action))["next"]
    obs, q, qd = out["observation"], out["q"], out["qd"]
    rot = quat_to_matrix(q[:, 3:7])
    assert torch.allclose(obs[:, 0], q[:, 2]) and torch.allclose(obs[:, 1:5], q[:, 3:7])
    assert torch.allclose(obs[:, 5:8], qd[:, :3]) and torch.allclose(obs[:, 8:11], (rot @ qd[:, 3:6, None])[..., 0])
    assert torch.allclose(obs[:, 11:19], q[:, 7:]) and torch.allclose(obs[:, 19:27], 0.1 * qd[:, 6:])
    assert torch.allclose(obs[:, 27], rot[:, 2, 2]) and torch.allclose(obs[:, 28], rot[:, 0, 0])
    assert torch.equal(obs[:, 29:], action)
    expected = qd[:, 0] + 0.1 * rot[:, 2, 2] + rot[:, 0, 0] + q[:, 2] - 0.27
    assert torch.allclose(out["reward"][:, 0], expected)


def test_termination_rules():
    ant = E.make("ant", num_envs=2, dtype=torch.float64, seed=0)
    td = ant.reset()
    td["q"][0, 2] = 0.2  # torso below 0.27 m
    td["action"] = torch.zeros(2, 8, dtype=torch.float64)
    out = ant.step(td)["next"]
    assert out["terminated"].flatten().tolist() == [True, False] and out["done"][0]
    no_term = E.make("ant", num_envs=2, dtype=torch.float64, seed=0, early_termination=False)
    assert not no_term.step(td)["next", "terminated"].any()
    hopper = E.make("hopper", num_envs=2, dtype=torch.float64, seed=0)
    obs = hopper.reset()["observation"]
    obs[:, 0] = torch.tensor([-0.46, -0.44])  # torso height relative to the start (DFlex: terminate below -0.45)
    assert hopper.task.terminated(obs).tolist() == [True, False]
    cart = E.make("cartpole_swingup", num_envs=2, horizon=3, seed=0)
    td = cart.rollout(3, break_when_any_done=False)
    assert not td["next", "terminated"].any() and td["next", "truncated"][:, -1].all()


def test_diverged_env_terminates_with_zero_reward_and_clean_gradients():
    env = E.make("hopper", num_envs=2, dtype=torch.float64, seed=0)
    td = env.reset()
    qd = td["qd"].clone()
    qd[1, 3] = 1e9  # a joint spinning at 1e9 rad/s: the step diverges (DFlex's |qd| > 1e6 rule)
    qd.requires_grad_(True)
    action = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    out = env.step(td.set("qd", qd).set("action", action))["next"]
    assert out["terminated"].flatten().tolist() == [False, True]
    assert out["reward"][1].item() == 0.0
    assert torch.equal(out["qd"][1], qd[1].detach()), "the diverged env keeps its last state"
    (out["reward"].sum() + out["observation"].sum()).backward()
    assert torch.isfinite(qd.grad).all() and torch.isfinite(action.grad).all()


def test_partial_reset_keeps_the_other_envs_and_their_observation():
    env = E.make("ant", num_envs=3, seed=0)
    td = env.reset()
    action = torch.full((3, 8), 0.5, requires_grad=True)
    nxt = env.step(td.set("action", action))["next"]
    nxt.set("_reset", torch.tensor([[True], [False], [False]]))
    after = env.reset(nxt)
    assert after["step_count"].flatten().tolist() == [0, 1, 1]
    assert torch.equal(after["observation"][1:], nxt["observation"][1:])
    assert torch.equal(after["observation"][0, 29:], torch.zeros(8)), "a reset env observes a zero last action"
    (grad,) = torch.autograd.grad(after["q"].sum(), action)
    assert grad[0].abs().sum() == 0 and (grad[1:].abs().sum(-1) > 0).all()


def test_seed_makes_resets_reproducible():
    a = E.make("humanoid", num_envs=4, seed=3).reset()
    b = E.make("humanoid", num_envs=4, seed=3).reset()
    c = E.make("humanoid", num_envs=4, seed=4).reset()
    assert torch.equal(a["q"], b["q"]) and not torch.equal(a["q"], c["q"])
    assert torch.allclose(a["q"][:, 3:7].norm(dim=-1), torch.ones(4)), "unit torso quaternions"


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(goal="stop"), "valid goals: run"), (dict(integrator="bdf2"), "env options"), (dict(substeps=0), "substeps"),
     (dict(horizon=0), "horizon")],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        E.make("ant", num_envs=1, **kwargs)


def test_bad_actions_and_states_are_reported():
    env = E.make("cheetah", num_envs=2, seed=0)
    td = env.reset()
    with pytest.raises(ValueError, match=r"expected \(2, 6\)"):
        env.step(td.clone().set("action", torch.zeros(2, 5)))
    with pytest.raises(TypeError, match="float64"):
        env.step(td.clone().set("action", torch.zeros(2, 6, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"indices \[1\]"):
        env.step(td.clone().set("action", torch.tensor([[0.0] * 6, [math.nan] * 6])))
    bad = td.clone()
    bad["q"][0, 0] = math.inf
    with pytest.raises(FloatingPointError, match=r"indices \[0\]"):
        env.step(bad.set("action", torch.zeros(2, 6)))


def test_presets_cover_every_task():
    assert {env.task.preset for env in (E.make(n, num_envs=1) for n in NAMES)} <= set(DFLEX)


def test_episode_metrics():
    env = E.make("ant", num_envs=3, seed=0, horizon=5)
    td = env.rollout(5, break_when_any_done=False)
    td["next", "terminated"][:] = False
    td["next", "terminated"][1, 2] = True  # env 1 ends at its third step
    metrics = env.episode_metrics(td)
    assert metrics["episode_length"].tolist() == [5, 3, 5]
    speed = td["next", "qd"][..., 0]
    assert torch.allclose(metrics["forward_speed"], torch.stack([speed[0].mean(), speed[1, :3].mean(), speed[2].mean()]))
    cart = E.make("cartpole_swingup", num_envs=2, seed=0, horizon=4)
    td = cart.rollout(4, break_when_any_done=False)
    q = td["next", "q"][:, -1]
    metrics = cart.episode_metrics(td)
    assert torch.allclose(metrics["final_abs_angle"], torch.atan2(torch.sin(q[:, 1]), torch.cos(q[:, 1])).abs())
    assert torch.allclose(metrics["final_abs_position"], q[:, 0].abs())


def test_compile_substep_is_opt_in_and_lazy():
    """The substep is wrapped by torch.compile only on request, and building the env compiles nothing."""
    assert hasattr(E.make("ant", num_envs=1, compile_substep=True)._substep_fn, "__wrapped__")
    assert E.make("ant", num_envs=1)._substep_fn is None


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_divergence_rule_flags_nan_inf_and_large_entries_in_either_tensor(data):
    """``_diverged(q, qd)``: an env is diverged when an entry of q or qd is NaN, ±inf or |x| > DIVERGED (DFlex's rule);
    |x| = DIVERGED exactly is not."""
    from tphys.envs.rigid_env import DIVERGED, _diverged

    n = data.draw(st.integers(1, 6))
    special = st.sampled_from([float("nan"), float("inf"), -float("inf"), DIVERGED, -DIVERGED, 2 * DIVERGED, -1.5e6, 0.0, 3.0])
    entry = st.one_of(st.floats(-10.0, 10.0), special)
    q = torch.tensor(data.draw(st.lists(st.lists(entry, min_size=3, max_size=3), min_size=n, max_size=n)), dtype=torch.float64)
    qd = torch.tensor(data.draw(st.lists(st.lists(entry, min_size=2, max_size=2), min_size=n, max_size=n)), dtype=torch.float64)
    expected = [any(not math.isfinite(x) or abs(x) > DIVERGED for x in [*q[i].tolist(), *qd[i].tolist()]) for i in range(n)]
    assert _diverged(q, qd).tolist() == expected
