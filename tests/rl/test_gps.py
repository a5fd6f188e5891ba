"""GPS (mirror-descent guided policy search) on the PODS envs: the simulator's linearization against central
finite differences, the c-step's improvement under its KL bound, the s-step's regression loss."""

from __future__ import annotations

import pytest
import torch

import tphys.envs
from rl.modules import DeterministicActor
from rl.objectives.gps import GPSLoss

D = torch.float64


def make(name="pendulum2d", horizon=6, num_envs=3, seed=0, **kw):
    env = tphys.envs.make(name, num_envs=num_envs, dtype=D, goal="stop_at_origin", seed=seed, horizon=horizon)
    torch.manual_seed(seed)
    actor = DeterministicActor(env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1], (16, 16), "tanh",
                               False).to(D)
    return env, actor, GPSLoss(env, actor, **kw)


def flat_step(env, td, keys, x, u):
    """The next state (flattened ``keys``) and the reward residual of one step from ``td`` with state ``x``, action ``u``."""
    state, offset = td.clone(False), 0
    for k in keys:
        size = td[k][0].numel()
        state.set(k, x[:, offset:offset + size].reshape(td[k].shape))
        offset += size
    out = env.step(state.set("action", u))
    return torch.cat([out["next", k].flatten(1) for k in keys], -1), env.reward_residual(out)


@pytest.mark.parametrize("name", ["pendulum2d", "double_pendulum3d"])
def test_linearization_matches_central_differences(name):
    env, _, loss = make(name, horizon=3)
    start = env.reset()
    generator = torch.Generator().manual_seed(1)
    actions = 1.8 * torch.rand(3, 3, env.action_spec.shape[-1], dtype=D, generator=generator) - 0.9  # inside the box
    lin = loss.linearize(start, actions)
    td = start
    for t in range(3):  # the step's Jacobians at the nominal state of step t
        x, u = lin.states[:, t], lin.actions[:, t]
        h = 1e-6
        columns, residual_columns = [], []
        for j in range(x.shape[-1] + u.shape[-1]):
            dz = torch.zeros(x.shape[0], x.shape[-1] + u.shape[-1], dtype=D)
            dz[:, j] = h
            plus = flat_step(env, td, lin.keys, x + dz[:, :x.shape[-1]], u + dz[:, x.shape[-1]:])
            minus = flat_step(env, td, lin.keys, x - dz[:, :x.shape[-1]], u - dz[:, x.shape[-1]:])
            columns.append((plus[0] - minus[0]) / (2 * h))
            residual_columns.append((plus[1] - minus[1]) / (2 * h))
        F = torch.stack(columns, -1)
        torch.testing.assert_close(lin.dynamics.A[:, t], F[..., :x.shape[-1]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lin.dynamics.B[:, t], F[..., x.shape[-1]:], rtol=1e-5, atol=1e-5)
        J = torch.stack(residual_columns, -1)
        _, e = flat_step(env, td, lin.keys, x, u)
        torch.testing.assert_close(lin.cost.C[:, t], 2 * J.transpose(-1, -2) @ J, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lin.cost.c[:, t], 2 * (J.transpose(-1, -2) @ e.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-5)
        td = env.step(td.clone(False).set("action", u))["next"]
    # the linearization's return is the return of its actions played on the env
    td, total = start, 0.0
    for t in range(3):
        out = env.step(td.clone(False).set("action", lin.actions[:, t]))
        total = total + out["next", "reward"].squeeze(-1)
        td = out["next"]
    torch.testing.assert_close(lin.value, total)


def test_policy_gain_matches_central_differences():
    env, actor, loss = make(horizon=2)
    start = env.reset()
    lin = loss.linearize(start, loss.policy_actions(start))
    x = lin.states[:, 0]
    h, columns = 1e-6, []
    for j in range(x.shape[-1]):
        dx = torch.zeros_like(x)
        dx[:, j] = h
        actions = []
        for sign in (1, -1):
            state, offset = start.clone(False), 0
            for k in lin.keys:
                size = start[k][0].numel()
                state.set(k, (x + sign * dx)[:, offset:offset + size].reshape(start[k].shape))
                offset += size
            observation = env.observe(state, torch.zeros(3, env.action_spec.shape[-1], dtype=D))["observation"]
            actions.append(actor(state.set("observation", observation))["action"])
        columns.append((actions[0] - actions[1]) / (2 * h))
    torch.testing.assert_close(lin.gain[:, 0], torch.stack(columns, -1), rtol=1e-6, atol=1e-8)


def test_c_step_improves_the_return_within_its_bound():
    env, _, loss = make(horizon=20, num_envs=4, kl_step=0.05)
    out = loss.improve(env.reset())
    stats = out["stats"]
    assert (stats["kl"] <= 0.05 * 20 * (1 + 1e-6)).all()
    assert (stats["value_improved"] > stats["value_policy"]).all()
    batch = out["batch"]
    assert batch.shape == torch.Size([4, 20]) and batch["weight"].shape == torch.Size([4, 20, 1, 1])
    # the weights are the controller's precision, scaled to a mean trace of A
    assert torch.allclose(torch.diagonal(batch["weight"], dim1=-2, dim2=-1).sum(-1).mean(), torch.tensor(1.0, dtype=D))
    assert (batch["target_action"].abs() <= 1).all()


def test_larger_kl_steps_move_further_from_the_policy():
    moves = []
    for kl_step in (0.01, 0.5):
        env, actor, loss = make(horizon=10, num_envs=2, kl_step=kl_step)
        start = env.reset()
        before = loss.policy_actions(start)
        moves.append((loss.improve(start)["batch", "target_action"] - before).abs().mean())
    assert moves[1] > 2 * moves[0]


def test_regression_loss_is_the_precision_weighted_error():
    env, actor, loss = make(horizon=3)
    out = loss.improve(env.reset())
    batch = out["batch"].reshape(-1)
    predicted = actor(batch.select("observation").clone(False))["action"]
    error = predicted - batch["target_action"]
    expected = 0.5 * torch.einsum("bi,bij,bj->b", error, batch["weight"], error).mean()
    torch.testing.assert_close(loss(batch)["loss_actor"], expected)
    unweighted = batch.exclude("weight")
    torch.testing.assert_close(loss(unweighted)["loss_actor"], 0.5 * error.square().sum(-1).mean())


def test_bad_settings_and_envs_are_refused():
    env, actor, _ = make()
    with pytest.raises(ValueError, match="kl_step > 0"):
        GPSLoss(env, actor, kl_step=0.0)
    rigid = tphys.envs.make("cartpole", num_envs=1)
    with pytest.raises(TypeError, match="reward_residual"):
        GPSLoss(rigid, actor)


def test_controller_rollout_follows_the_linear_model_with_feedback():
    from rl.objectives.lqr import LinearGaussian, state_moments

    env, _, loss = make(horizon=8, num_envs=2)
    start = env.reset()
    nominal = loss.linearize(start, 0.5 * loss.policy_actions(start))
    g = torch.Generator().manual_seed(3)
    n, t_len, a_dim = nominal.actions.shape
    x_dim = nominal.states.shape[-1]
    controller = LinearGaussian(torch.randn(n, t_len, a_dim, x_dim, generator=g, dtype=D),
                                1e-3 * torch.randn(n, t_len, a_dim, generator=g, dtype=D),
                                torch.eye(a_dim, dtype=D).expand(n, t_len, a_dim, a_dim))
    actions, _, _ = loss.rollout(start, nominal, controller)
    mean, _ = state_moments(nominal.dynamics, controller, nominal.states.new_zeros(n, x_dim), nominal.states.new_zeros(n, x_dim, x_dim))
    feedback = (controller.K @ mean.unsqueeze(-1)).squeeze(-1)
    assert feedback.abs().max() > 1e-4  # the feedback term matters at this size
    torch.testing.assert_close(actions, nominal.actions + feedback + controller.k, rtol=0, atol=1e-3 * feedback.abs().max().item())
