"""Update rules checked at values where a swapped coefficient differs (issue 22).

The SHAC target critic follows ``V' <- tau V' + (1 - tau) V``: with tau = 0.5 (the other loss tests)
tau and 1 - tau cannot be told apart, so here tau = 0.8. SHAC's loss and TD(lambda) targets are checked
with the *target* critic on a window where one episode terminates, and its settings are pinned.
"""

import inspect

import pytest
import torch
from point_mass import PointMass1D
from tensordict import TensorDict
from test_losses import GAMMA, LMBDA, direct_window, make_nets, start_td
from test_returns import naive_lambda_return

from rl.objectives import SHACLoss


def shac(tau=0.8, critics=1, terminate_at=None, horizon=6):
    env = PointMass1D(num_envs=3, horizon=50, terminate_at=terminate_at, seed=7)
    twin = PointMass1D(num_envs=3, horizon=50, terminate_at=terminate_at, seed=7)
    actor, critic = make_nets(state_dependent_std=False, critics=critics)
    loss = SHACLoss(env, actor, critic, horizon=horizon, gamma=GAMMA, lmbda=LMBDA, target_tau=tau)
    if loss.critic_target is not None:
        with torch.no_grad():
            for p in loss.critic_target.parameters():
                p.mul_(1.5).add_(0.1)  # the target differs from the online critic
    return env, twin, actor, critic, loss


@pytest.mark.parametrize("tau", [0.8, 0.0, 0.995])
def test_target_critic_moves_by_one_minus_tau(tau):
    """V' <- tau V' + (1 - tau) V, parameter by parameter, once per after_update()."""
    _, _, _, critic, loss = shac(tau)
    before = [p.clone() for p in loss.critic_target.parameters()]
    online = [p.clone() for p in critic.parameters()]
    loss.after_update()
    for b, p_t, p in zip(before, loss.critic_target.parameters(), online):
        torch.testing.assert_close(p_t, tau * b + (1 - tau) * p, rtol=1e-12, atol=1e-12)
    for p, o in zip(critic.parameters(), online):  # the online critic is not touched
        assert torch.equal(p, o)


def test_target_critic_is_a_frozen_copy_sharing_the_normalizer():
    _, _, _, critic, loss = shac(0.8)
    assert loss.critic_target is not critic
    assert loss.critic_target.normalizer is critic.normalizer
    assert all(not p.requires_grad for p in loss.critic_target.parameters())
    assert all(p.requires_grad for p in critic.parameters())
    assert loss.bootstrap_net() is loss.critic_target
    groups = loss.parameter_groups()
    assert set(groups) == {"actor", "critic"}
    assert {id(p) for p in groups["critic"]} == {id(p) for p in critic.parameters()}


def test_target_critic_reads_the_live_normalizer():
    """The target critic normalizes with the online critic's running statistics (one object), so a statistics update
    moves both critics' inputs alike; its own copy would keep the statistics of the moment it was made."""
    from rl.modules import ObservationNormalizer, SquashedGaussianActor, ValueEnsemble

    torch.manual_seed(0)
    norm = ObservationNormalizer(2).double()
    critic = ValueEnsemble(2, (8,), "silu", num_critics=1, normalizer=norm).double()
    actor = SquashedGaussianActor(2, 1, (8,), "silu", state_dependent_std=False).double()
    loss = SHACLoss(PointMass1D(num_envs=2, horizon=50), actor, critic, horizon=4, target_tau=0.8)
    assert loss.critic_target.normalizer is norm
    norm.update(3.0 + 2.0 * torch.randn(64, 2, dtype=torch.float64))
    obs = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(loss.critic_target(obs), critic(obs))  # same weights (no update yet), same statistics


def test_gamma_is_validated():
    env = PointMass1D(num_envs=2, horizon=50)
    actor, critic = make_nets(state_dependent_std=False, critics=1)
    for gamma in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\]"):
            SHACLoss(env, actor, critic, horizon=4, gamma=gamma)
    assert SHACLoss(env, actor, critic, horizon=4, gamma=1.0).gamma == 1.0


def test_without_target_the_critic_bootstraps_itself():
    _, _, _, critic, loss = shac(None)
    assert loss.critic_target is None and loss.bootstrap_net() is critic
    before = [p.clone() for p in critic.parameters()]
    loss.after_update()  # a no-op
    assert all(torch.equal(b, p) for b, p in zip(before, critic.parameters()))


@pytest.mark.parametrize("tau,ok", [(0.0, True), (0.5, True), (0.999, True), (1.0, False), (-1e-9, False), (1.5, False)])
def test_target_tau_range_is_zero_inclusive_one_exclusive(tau, ok):
    if ok:
        assert shac(tau)[-1].target_tau == tau
    else:
        with pytest.raises(ValueError, match=r"target_tau must be in \[0, 1\)"):
            shac(tau)


def test_shac_settings_are_pinned():
    """SHAC's defaults are its paper's (table 2: H = 32, gamma 0.99, lambda 0.95, target tau 0.995)."""
    defaults = {k: v.default for k, v in inspect.signature(SHACLoss.__init__).parameters.items()}
    assert (defaults["horizon"], defaults["gamma"], defaults["lmbda"], defaults["target_tau"]) == (32, 0.99, 0.95, 0.995)
    env = PointMass1D(num_envs=2, horizon=64)
    actor, critic = make_nets(state_dependent_std=False, critics=1)
    loss = SHACLoss(env, actor, critic)
    assert (loss.horizon, loss.gamma, loss.lmbda, loss.target_tau) == (32, 0.99, 0.95, 0.995)
    assert SHACLoss.has_critic is True


def test_shac_loss_and_targets_with_a_termination_use_the_target_critic():
    """Eq. 20 per episode segment: a terminated segment bootstraps 0, the others gamma^k V'(s_end); the critic's
    TD(lambda) targets (Eq. 19) use V' too; the critic batch is the window's detached observations, flat [N H]."""
    horizon = 6
    env, twin, actor, critic, loss = shac(0.8, critics=2, terminate_at=1.0, horizon=horizon)
    obs = torch.tensor([[0.3, 0.1], [-0.5, 0.0], [0.97, 1.5]], dtype=torch.float64)
    torch.manual_seed(11)
    out = loss(start_td(env, obs))
    torch.manual_seed(11)
    segments = direct_window(actor, twin, obs, horizon, terminate_at=1.0)
    assert segments[2][0]["terminated"] and len(segments[2]) == 2, "env 2 should terminate inside the window"
    target = loss.critic_target
    total, rows = 0.0, []
    for segs in segments:
        row = []
        for seg in segs:
            k = len(seg["r"])
            boot = 0.0 if seg["terminated"] else target(seg["end"]).mean()
            total = total + sum(GAMMA**t * r for t, r in enumerate(seg["r"])) + GAMMA**k * boot
            rewards = [float(r.detach()) for r in seg["r"]]
            values = [float(target(s).mean().detach()) for s in seg["s"][1:] + [seg["end"]]]
            if seg["terminated"]:
                values[-1] = 0.0
            row += [naive_lambda_return(rewards, values, t, k, GAMMA, LMBDA) for t in range(k)]
        rows.append(row)
    expected = -total / (3 * horizon)
    torch.testing.assert_close(out["loss_actor"], expected, rtol=1e-10, atol=1e-12)
    for g, e in zip(torch.autograd.grad(out["loss_actor"], list(actor.parameters()), retain_graph=True),
                    torch.autograd.grad(expected, list(actor.parameters()))):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in critic.parameters())  # the critics are held out of the actor loss
    batch = out["critic_batch"]
    assert batch.batch_size == torch.Size([3 * horizon])
    targets = batch["value_target"].reshape(3, horizon)
    torch.testing.assert_close(targets, torch.tensor(rows, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert not batch["value_target"].requires_grad and not batch["observation"].requires_grad
    states = torch.stack([torch.stack([s for seg in segs for s in seg["s"]]) for segs in segments]).detach()
    torch.testing.assert_close(batch["observation"].reshape(3, horizon, 2), states, rtol=0, atol=1e-12)
    window = out["window"]
    assert window.batch_size == torch.Size([3, horizon]) and not window["reward"].requires_grad
    rewards = torch.stack([torch.stack([r for seg in segs for r in seg["r"]]) for segs in segments]).detach()
    torch.testing.assert_close(window["reward"], rewards, rtol=0, atol=1e-12)
    assert window["done"][2].sum() == 1 and window["done"][:2].sum() == 0
    # the next window starts where this one ended: detached, without "next"
    nxt = out["next_state"]
    assert "next" not in nxt.keys() and not nxt["observation"].requires_grad
    ends = torch.stack([segs[-1]["end"] for segs in segments]).detach()
    torch.testing.assert_close(nxt["observation"], ends, rtol=0, atol=1e-12)
    assert nxt["step_count"].squeeze(-1).tolist() == [horizon, horizon, horizon - len(segments[2][0]["r"])]


def test_without_target_the_actor_loss_leaves_the_critic_without_gradients():
    """Bootstrapping from the online critic (no target): the actor loss flows through V(s_H)'s input, not into the
    critic's parameters, which stay trainable afterwards."""
    env, _, actor, critic, loss = shac(None)
    obs = torch.tensor([[0.3, 0.1], [-0.5, 0.0], [0.2, -0.3]], dtype=torch.float64)
    torch.manual_seed(1)
    out = loss(start_td(env, obs))
    out["loss_actor"].backward()
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.requires_grad for p in critic.parameters())
    assert all(p.grad is not None for p in actor.parameters())


def test_shac_critic_loss_is_the_ensemble_mean_squared_error():
    _, _, _, critic, loss = shac(0.8, critics=2)
    obs = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = loss.critic_loss(TensorDict(observation=obs, value_target=target, batch_size=[5]))["loss_critic"]
    v = critic(obs)
    torch.testing.assert_close(got, 0.5 * ((v[:, 0] - target) ** 2).mean() + 0.5 * ((v[:, 1] - target) ** 2).mean())
    got.backward()
    assert all(p.grad is not None for p in critic.parameters())
