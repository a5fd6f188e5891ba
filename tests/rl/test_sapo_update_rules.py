"""SAPO's entropy terms and returned scalars by hand (issue 22: with ``test_losses.py``'s direct Eq. 8-10 / 19 / 21
computation, the mutation job's tests for ``rl/objectives/sapo.py``)."""

import math

import pytest
import torch
from point_mass import PointMass1D

from rl.modules import SquashedGaussianActor, ValueEnsemble
from rl.objectives import SAPOLoss


def sapo(**kw):
    torch.manual_seed(0)
    env = PointMass1D(num_envs=3, horizon=50, seed=7)
    actor = SquashedGaussianActor(2, 1, (8,)).double()
    critic = ValueEnsemble(2, (8,), num_critics=2).double()
    return SAPOLoss(env, actor, critic, horizon=4, **kw), env


def test_scaled_entropy_maps_the_target_entropy_to_zero_and_minus_it_to_one():
    """hh = (h + |Hbar|) / (2|Hbar|): h = Hbar -> 0, h = -Hbar -> 1, h = 0 -> 1/2; identity without normalization."""
    loss, _ = sapo(target_entropy=-2.0)
    h = torch.tensor([-2.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(loss.scaled_entropy(h), torch.tensor([0.0, 1.0, 0.5, 0.75], dtype=torch.float64), rtol=0, atol=0)
    loss, _ = sapo(target_entropy=3.0)  # |Hbar|: the sign of the target does not matter
    torch.testing.assert_close(loss.scaled_entropy(h), (h + 3.0) / 6.0, rtol=0, atol=0)
    raw, _ = sapo(normalize_entropy=False)
    assert raw.scaled_entropy(h) is h


def test_returned_entropy_alpha_and_window_are_the_rollouts():
    """``entropy`` is the mean of -log pi over the window, ``alpha`` the (detached) temperature, the window's rewards
    and dones those of the rollout; without normalization the soft reward uses h itself (checked through the loss: the
    actor loss moves by alpha·mean(h - hh)·(sum_t gamma^t)/H between the two)."""
    loss, env = sapo(init_alpha=0.5)
    windows, rollout = [], loss.rollout

    def kept(td):
        windows.append(rollout(td))
        return windows[-1]

    loss.rollout = kept
    start = env.reset()
    torch.manual_seed(3)
    out = loss(start)
    traj = windows[0][0]
    entropy = -traj.get(loss.tensor_keys.log_prob)
    assert out["entropy"].item() == pytest.approx(entropy.mean().item(), rel=1e-12)
    assert out["alpha"].item() == pytest.approx(0.5, rel=1e-12) and not out["alpha"].requires_grad
    torch.testing.assert_close(out["window", "reward"], traj["next", "reward"].reshape(3, 4).detach())
    assert torch.equal(out["window", "done"], traj["next", "done"].reshape(3, 4))
    assert out["loss_alpha"].item() == pytest.approx(0.5 * (entropy.detach() - (-0.5)).mean().item(), rel=1e-12)
    assert out.batch_size == torch.Size([]) and out["window"].batch_size == torch.Size([3, 4])
    following = windows[0][1]
    assert torch.equal(out["next_state", "observation"], following["observation"]) and "next" not in out["next_state"].keys()
    assert not out["next_state", "observation"].requires_grad
    torch.testing.assert_close(out["critic_batch", "observation"], traj["observation"].reshape(12, -1).detach())
    (g_alpha,) = torch.autograd.grad(out["loss_alpha"], loss.log_alpha, retain_graph=True)  # d/d log_alpha of alpha·mean
    assert g_alpha.item() == pytest.approx(out["loss_alpha"].item(), rel=1e-12)
    (g_entropy,) = torch.autograd.grad(out["loss_alpha"], traj.get(loss.tensor_keys.log_prob), allow_unused=True)
    assert g_entropy is None or g_entropy.abs().max() == 0  # the temperature loss moves alpha only
    # the same window without normalization: soft rewards differ by alpha·(h - hh) at every step
    raw, env2 = sapo(init_alpha=0.5, normalize_entropy=False)
    torch.manual_seed(3)
    out2 = raw(env2.reset())
    h = entropy.detach().reshape(3, 4)
    hh = (h + 0.5) / 1.0
    discount = torch.tensor([raw.gamma**t for t in range(4)], dtype=torch.float64)
    shift = -(0.5 * (h - hh) * discount).sum() / 12
    assert (out2["loss_actor"] - out["loss_actor"]).item() == pytest.approx(shift.item(), rel=1e-9, abs=1e-12)
    assert math.isfinite(out2["loss_actor"].item())


def test_the_actor_loss_leaves_the_critics_without_gradients():
    """The critics bootstrap the actor's window frozen: backward of loss_actor fills the actor's gradients only (their
    own step is the critic loss's)."""
    loss, env = sapo()
    torch.manual_seed(3)
    out = loss(env.reset())
    out["loss_actor"].backward()
    assert all(p.grad is None for p in loss.critic.parameters())
    assert all(p.requires_grad for p in loss.critic.parameters())  # frozen only during the window
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in loss.actor.parameters())
