"""SAPO / SHAC / APG losses on a hand-checkable MDP (1-D point mass) against a direct computation.

The direct computation re-runs the window step by step with the same noise and evaluates
Eq. 8-10 and 19 (and Eq. 17-20 for SHAC) as written in the paper, episode by episode: no
code is shared with the loss except the networks and the point-mass step.
"""

import math

import pytest
import torch
from point_mass import PointMass1D, step_point_mass
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from test_returns import naive_lambda_return
from torch.distributions import Normal, TanhTransform, TransformedDistribution

import tphys.envs as E
from rl.modules import SquashedGaussianActor, ValueEnsemble
from rl.objectives import APGLoss, SAPOLoss, SHACLoss

GAMMA, LMBDA = 0.9, 0.8


def make_nets(state_dependent_std=True, critics=2, seed=0):
    torch.manual_seed(seed)
    actor = SquashedGaussianActor(2, 1, (8,), "silu", state_dependent_std=state_dependent_std).double()
    critic = ValueEnsemble(2, (8,), "silu", num_critics=critics).double()
    # non-trivial critic outputs
    for c in critic.critics:
        torch.nn.init.normal_(c.head.weight, std=0.5)
        torch.nn.init.constant_(c.head.bias, 0.3)
    return actor, critic


def start_td(env, obs, steps=0):
    n = env.num_envs
    flags = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(observation=obs, step_count=torch.full((n, 1), steps, dtype=torch.int64), done=flags, terminated=flags.clone(),
                      truncated=flags.clone(), batch_size=[n])


def direct_window(actor, env_twin, start_obs, horizon, terminate_at=None, start_steps=0):
    """Step-by-step twin of a window: per env, a list of segments of (rewards, entropies, states, end)."""
    n = start_obs.shape[0]
    obs, steps = start_obs, torch.full((n,), start_steps, dtype=torch.int64)
    segments = [[{"r": [], "h": [], "s": [], "end": None, "terminated": False}] for _ in range(n)]
    for _ in range(horizon):
        mu, log_std = actor.distribution(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        a = torch.tanh(u)
        dist = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()])
        entropy = -dist.log_prob(a).sum(-1)
        nxt, reward = step_point_mass(obs, a, env_twin.dt)
        steps = steps + 1
        terminated = (nxt[:, 0].abs() > terminate_at) if terminate_at is not None else torch.zeros(n, dtype=torch.bool)
        done = terminated | (steps >= env_twin.horizon)
        if done.any():
            fresh = env_twin.sample_start()
        rows = []
        for i in range(n):
            seg = segments[i][-1]
            seg["r"].append(reward[i, 0])
            seg["h"].append(entropy[i])
            seg["s"].append(obs[i])
            seg["end"] = nxt[i]
            if done[i]:
                seg["terminated"] = bool(terminated[i])
                segments[i].append({"r": [], "h": [], "s": [], "end": None, "terminated": False})
                rows.append(fresh[i])
            else:
                rows.append(nxt[i])
        obs = torch.stack(rows)
        steps = torch.where(done, torch.zeros_like(steps), steps)
    return [[s for s in segs if s["r"]] for segs in segments]


def direct_sapo(actor, critic, segments, alpha, target_entropy, horizon):
    """-(1/(N H)) sum_envs sum_segments [sum gamma^t (r + alpha hh) + gamma^k mean_i V_i(s_end)] (Eq. 8-9)."""
    scale = abs(target_entropy)
    total = 0.0
    for segs in segments:
        for seg in segs:
            k = len(seg["r"])
            soft = [r + alpha * (h + scale) / (2 * scale) for r, h in zip(seg["r"], seg["h"])]
            boot = 0.0 if seg["terminated"] else critic(seg["end"]).mean()
            total = total + sum(GAMMA**t * soft[t] for t in range(k)) + GAMMA**k * boot
    return -total / (len(segments) * horizon)


def direct_sapo_targets(critic, segments, alpha, target_entropy):
    """Eq. 10 soft k-step returns with min_i V_i, combined by Eq. 19, per env and step."""
    scale = abs(target_entropy)
    out = []
    for segs in segments:
        row = []
        for seg in segs:
            k = len(seg["r"])
            soft = [float((r + alpha * (h + scale) / (2 * scale)).detach()) for r, h in zip(seg["r"], seg["h"])]
            states_next = seg["s"][1:] + [seg["end"]]
            values = [float(critic(s).min().detach()) for s in states_next]
            if seg["terminated"]:
                values[-1] = 0.0
            row += [naive_lambda_return(soft, values, t, k, GAMMA, LMBDA) for t in range(k)]
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("case", ["inside_episode", "truncated", "terminated"])
def test_sapo_loss_equals_direct_eq_8_to_10_and_19(case):
    horizon, ep = 6, 50
    start_steps = 46 if case == "truncated" else 0  # truncation after 4 steps of the window
    terminate_at = 1.0 if case == "terminated" else None
    env = PointMass1D(num_envs=3, horizon=ep, terminate_at=terminate_at, seed=7)
    twin = PointMass1D(num_envs=3, horizon=ep, terminate_at=terminate_at, seed=7)
    actor, critic = make_nets()
    loss = SAPOLoss(env, actor, critic, horizon=horizon, gamma=GAMMA, lmbda=LMBDA, init_alpha=0.7)
    obs = torch.tensor([[0.3, 0.1], [-0.5, 0.0], [0.97, 1.5]], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(123)
    out = loss(start_td(env, obs, start_steps))
    torch.manual_seed(123)
    segments = direct_window(actor, twin, obs, horizon, terminate_at, start_steps)
    if case == "terminated":
        assert segments[2][0]["terminated"] and len(segments[2]) == 2, "env 2 should terminate inside the window"
    if case == "truncated":
        assert all(len(s) == 2 and len(s[0]["r"]) == 4 for s in segments)
    alpha, hbar = 0.7, -0.5
    expected = direct_sapo(actor, critic, segments, alpha, hbar, horizon)
    assert torch.allclose(out["loss_actor"], expected, rtol=1e-10, atol=1e-12)
    params = list(actor.parameters())
    got_grads = torch.autograd.grad(out["loss_actor"], params + [obs], retain_graph=True)
    exp_grads = torch.autograd.grad(expected, params + [obs], retain_graph=True)
    for g, e in zip(got_grads, exp_grads):
        assert torch.allclose(g, e, rtol=1e-9, atol=1e-12)
    # critic parameters are held out of the actor loss
    assert all(p.grad is None for p in critic.parameters())
    targets = out["critic_batch", "value_target"].reshape(3, horizon)
    assert torch.allclose(targets, direct_sapo_targets(critic, segments, alpha, hbar), rtol=1e-10, atol=1e-12)
    # Eq. 21: d loss_alpha / d log_alpha = alpha * mean(h - Hbar), with the unnormalized entropy
    entropies = torch.stack([torch.stack([h for seg in segs for h in seg["h"]]) for segs in segments])
    (g_alpha,) = torch.autograd.grad(out["loss_alpha"], loss.log_alpha)
    assert math.isclose(g_alpha.item(), alpha * (entropies.detach() - hbar).mean().item(), rel_tol=1e-9)


class ActionOffsets(TensorDictModuleBase):
    """``actor``, then ``action += offsets[t]`` at the t-th call: the zero leaf ``offsets`` [H, N, A] changes no value,
    and d/d offsets[t] is the gradient with respect to the action taken at window step t."""

    def __init__(self, actor, offsets):
        super().__init__()
        self.actor, self.offsets, self.calls = actor, offsets, 0
        self.in_keys, self.out_keys = actor.in_keys, actor.out_keys

    def forward(self, td):
        td = self.actor(td)
        td.set("action", td["action"] + self.offsets[self.calls])
        self.calls += 1
        return td


RESET_ENVS = {"point_mass": ("observation",), "pendulum2d": ("x", "v")}  # the state keys each env steps from


def reset_window(env_name, steps_done):
    """One SAPO window of 6 steps from episodes ``steps_done`` steps old (episodes of 6 steps), with graph.

    Returns (loss output, window rewards [N, 6] with their graph, done [N, 6], start-state leaves, action offsets).
    """
    if env_name == "point_mass":
        env = PointMass1D(num_envs=2, horizon=6, seed=1)
        actor, critic = make_nets()
    else:
        env = E.make(env_name, num_envs=2, dtype=torch.float64, seed=1, horizon=6)
        torch.manual_seed(0)
        actor = SquashedGaussianActor(env.observation_dim, env.action_dim, (8,), "silu").double()
        critic = ValueEnsemble(env.observation_dim, (8,), "silu").double()
    start = env.reset()
    start["step_count"] = torch.full_like(start["step_count"], steps_done)
    leaves = [start[key].requires_grad_() for key in RESET_ENVS[env_name]]
    offsets = torch.zeros(6, 2, int(env.action_spec.shape[-1]), dtype=torch.float64, requires_grad=True)
    loss = SAPOLoss(env, ActionOffsets(actor, offsets), critic, horizon=6, gamma=GAMMA, lmbda=LMBDA)
    windows, rollout = [], loss.rollout

    def kept_rollout(td):  # forward's own window, kept: the rewards forward returns are detached
        windows.append(rollout(td))
        return windows[-1]

    loss.rollout = kept_rollout
    torch.manual_seed(5)
    out = loss(start)
    traj = windows[0][0]
    return out, traj["next", "reward"].squeeze(-1), traj["next", "done"].squeeze(-1), leaves, offsets


@pytest.mark.parametrize("env_name", list(RESET_ENVS))
def test_sapo_gradient_does_not_cross_an_episode_reset(env_name):
    """Truncation after 3 of the window's 6 steps: the rewards after the reset carry no gradient back to the start
    state or to the 3 actions taken before it. The control: with no reset inside the window the same rewards do
    depend on both, so a reset that kept the graph (even with the right values) fails here."""
    out, rewards, done, leaves, offsets = reset_window(env_name, steps_done=3)
    assert done[:, 2].all() and not done[:, :2].any() and not done[:, 3:].any(), "the reset must fall after step 3"
    after_reset = rewards[:, 3:].sum()
    assert after_reset.requires_grad
    *g_state, g_actions = torch.autograd.grad(after_reset, [*leaves, offsets], allow_unused=True, retain_graph=True)
    for g in g_state:
        assert g is None or not g.any(), "a reward after the reset depends on the state the window started from"
    assert not g_actions[:3].any(), "a reward after the reset depends on an action taken before it"
    assert g_actions[3:].abs().sum() > 0  # the actions after the reset do move those rewards
    # ... and the loss still reaches the start state through the first segment
    (g,) = torch.autograd.grad(out["loss_actor"], leaves[0])
    assert torch.isfinite(g).all() and g.abs().sum() > 0

    _, rewards, done, leaves, offsets = reset_window(env_name, steps_done=0)
    assert not done[:, :5].any()
    *g_state, g_actions = torch.autograd.grad(rewards[:, 3:].sum(), [*leaves, offsets])
    assert sum(g.abs().sum() for g in g_state) > 0 and (g_actions[:3].abs().sum((0, 2)) > 0).all()


def test_shac_loss_equals_direct_eq_20_with_target_critic():
    env = PointMass1D(num_envs=3, horizon=50, seed=3)
    twin = PointMass1D(num_envs=3, horizon=50, seed=3)
    actor, critic = make_nets(state_dependent_std=False, critics=1)
    loss = SHACLoss(env, actor, critic, horizon=5, gamma=GAMMA, lmbda=LMBDA, target_tau=0.5)
    with torch.no_grad():
        for p in loss.critic_target.parameters():
            p.mul_(1.5)  # target differs from the online critic
    obs = torch.tensor([[0.3, 0.1], [-0.5, 0.0], [0.2, -0.3]], dtype=torch.float64)
    torch.manual_seed(9)
    out = loss(start_td(env, obs))
    torch.manual_seed(9)
    segments = direct_window(actor, twin, obs, 5)
    total = sum(sum(GAMMA**t * r for t, r in enumerate(s[0]["r"])) + GAMMA**5 * loss.critic_target(s[0]["end"]).squeeze() for s in segments)
    expected = -total / (3 * 5)
    assert torch.allclose(out["loss_actor"], expected, rtol=1e-10)
    for g, e in zip(torch.autograd.grad(out["loss_actor"], list(actor.parameters()), retain_graph=True),
                    torch.autograd.grad(expected, list(actor.parameters()))):
        assert torch.allclose(g, e, rtol=1e-9, atol=1e-12)
    # targets use the target critic; the update moves it halfway to the online critic
    before = [p.clone() for p in loss.critic_target.parameters()]
    loss.update_target()
    for b, p_t, p in zip(before, loss.critic_target.parameters(), loss.critic.parameters()):
        assert torch.allclose(p_t, 0.5 * b + 0.5 * p)


def test_apg_loss_is_the_negative_mean_discounted_return():
    env = PointMass1D(num_envs=2, horizon=50, seed=0)
    twin = PointMass1D(num_envs=2, horizon=50, seed=0)
    actor, _ = make_nets(state_dependent_std=False)
    loss = APGLoss(env, actor, horizon=4, gamma=GAMMA)
    obs = torch.tensor([[0.3, 0.1], [-0.5, 0.0]], dtype=torch.float64)
    torch.manual_seed(2)
    out = loss(start_td(env, obs))
    torch.manual_seed(2)
    segments = direct_window(actor, twin, obs, 4)
    expected = -sum(sum(GAMMA**t * r for t, r in enumerate(s[0]["r"])) for s in segments) / 8
    assert torch.allclose(out["loss_actor"], expected, rtol=1e-10)


def test_critic_loss_is_ensemble_mean_squared_error():
    env = PointMass1D(num_envs=2)
    actor, critic = make_nets()
    loss = SAPOLoss(env, actor, critic, horizon=4)
    obs = torch.randn(5, 2, dtype=torch.float64)
    target = torch.randn(5, dtype=torch.float64)
    got = loss.critic_loss(TensorDict(observation=obs, value_target=target, batch_size=[5]))["loss_critic"]
    v = critic(obs)
    assert torch.allclose(got, 0.5 * ((v[:, 0] - target) ** 2).mean() + 0.5 * ((v[:, 1] - target) ** 2).mean())


def test_loss_rejects_bad_horizon_and_value_estimator_options():
    env = PointMass1D(num_envs=2, horizon=10)
    actor, critic = make_nets()
    with pytest.raises(ValueError, match="longer than the env's episode of 10"):
        SAPOLoss(env, actor, critic, horizon=11)
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        APGLoss(env, actor, horizon=0)
    loss = SAPOLoss(env, actor, critic, horizon=4)
    with pytest.raises(ValueError, match="unknown value-estimator options"):
        loss.make_value_estimator(gama=0.9)
    loss.set_keys(reward="reward")
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(rewards="r")
