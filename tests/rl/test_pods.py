"""PODS: Gauss-Newton products, conjugate gradients, the line search and one-step LQ optimality."""

import pytest
import torch
from helpers import PARTICLE_ENVS
from hypothesis import given, settings
from hypothesis import strategies as st
from point_mass import PointMass1D

import tphys.envs as E
from rl.modules import DeterministicActor
from rl.objectives.pods import PODSLoss
from rl.objectives.trajectory import (
    GaussNewton,
    backtracking_line_search,
    conjugate_gradient,
    env_major,
    play,
    time_major,
    value_and_gradient,
)


def _start_and_actions(name, seed, steps, integrator="semi_implicit", goal="stop_at_origin", num_envs=2):
    env = E.make(name, num_envs=num_envs, dtype=torch.float64, seed=seed, integrator=integrator, goal=goal)
    start = env.reset()
    gen = torch.Generator().manual_seed(seed)
    actions = 0.8 * torch.rand(steps, num_envs, env.action_dim, generator=gen, dtype=torch.float64) - 0.4
    return env, start, actions, gen


@pytest.mark.parametrize("name", PARTICLE_ENVS)
def test_reward_is_minus_squared_residual(name):
    env, start, actions, _ = _start_and_actions(name, 0, 3)
    rollout = play(env, start, actions, residuals=True)
    assert torch.allclose(rollout.rewards, -rollout.residuals.square().sum(-1), rtol=1e-12, atol=1e-12)


@settings(max_examples=6, deadline=None)
@given(
    case=st.sampled_from([("pendulum2d", "semi_implicit"), ("cable_payload2d", "semi_implicit"), ("rope3d", "bdf2"),
                          ("double_pendulum3d", "bdf2")]),
    seed=st.integers(0, 2**31 - 1),
    steps=st.integers(2, 4),
)
def test_matrix_free_gauss_newton_product_equals_dense(case, seed, steps):
    name, integrator = case
    env, start, actions, gen = _start_and_actions(name, seed, steps, integrator)
    hessian = GaussNewton(env, start, actions, damping=1e-3)
    dense = hessian.dense()
    vectors = torch.randn(2, steps * env.action_dim, generator=gen, dtype=torch.float64)
    expected = (dense @ vectors.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(hessian(vectors), expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    assert torch.allclose(dense, dense.transpose(-1, -2), rtol=1e-10, atol=1e-12)
    # Its gradient is the reward gradient: -|e|² and the env's reward are one function.
    _, gradient = value_and_gradient(env, start, actions)
    assert torch.allclose(hessian.gradient, gradient, rtol=1e-10, atol=1e-12)


def test_gauss_newton_is_the_exact_hessian_on_a_linear_quadratic_problem():
    env = PointMass1D(num_envs=2, horizon=5)
    start = env.reset()
    actions = 0.1 * torch.randn(5, 2, 1, dtype=torch.float64)
    dense = GaussNewton(env, start, actions).dense()

    def negative_value(flat):
        return -play(env, start, time_major(flat.unsqueeze(0).expand(2, -1), 5)).rewards.sum(0)[0]

    exact = torch.autograd.functional.hessian(negative_value, env_major(actions)[0])
    assert torch.allclose(dense[0], exact, rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_solves_each_env_block():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    matrices = a @ a.transpose(-1, -2) + 0.1 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: (matrices @ v.unsqueeze(-1)).squeeze(-1), rhs, iterations=40, tol=1e-12)
    assert torch.allclose(x, torch.linalg.solve(matrices, rhs), rtol=1e-8, atol=1e-10)
    assert info.relative_residual.max() < 1e-10


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3), order=st.sampled_from([1, 2]))
def test_line_search_never_accepts_a_step_that_lowers_the_value(seed, scale, order):
    env, start, actions, gen = _start_and_actions("pendulum2d", seed, 20, num_envs=4)
    rollout = play(env, start, actions)
    value = rollout.rewards.sum(0)
    _, gradient = value_and_gradient(env, start, actions)
    # Random directions, ascent or not, at any scale: the result may only keep or raise V.
    direction = scale * torch.randn(actions.shape, generator=gen, dtype=torch.float64)
    if order == 2:
        direction = torch.where(torch.rand(1, 4, 1, generator=gen) < 0.5, gradient * scale, direction)
    # Env 0 climbs and env 1 descends along dV/dā by at most 1e-5 per action: every trial of env 0 raises V
    # (so a step is accepted and the checks below are not vacuous), every trial of env 1 lowers it.
    unit = gradient / gradient.abs().amax((0, 2), keepdim=True)
    direction[:, 0], direction[:, 1] = 1e-5 * unit[:, 0], -1e-5 * unit[:, 1]
    result = backtracking_line_search(env, start, actions, value, rollout.observations, gradient, direction,
                                      torch.ones(4, dtype=torch.float64), max_trials=6)
    kept = result.step_size == 0
    assert not kept[0], "the ascent step of env 0 was not accepted"
    assert kept[1], "the descent step of env 1, which lowers V, was accepted"
    assert (result.value >= value).all()
    replay = play(env, start, result.actions)
    assert torch.allclose(replay.rewards.sum(0), result.value, rtol=1e-12)
    assert torch.allclose(replay.observations, result.observations)
    assert torch.equal(result.actions[:, kept], actions[:, kept]) and torch.equal(result.value[kept], value[kept])
    improved = ~kept
    assert (result.value[improved] > value[improved]).all()


def test_second_order_step_reaches_the_optimum_of_a_linear_quadratic_problem_in_one_iteration():
    env = PointMass1D(num_envs=3, horizon=10)
    start = env.reset()
    start["observation"] = 0.1 * start["observation"]  # keep the optimal forces inside [-1, 1]
    actor = DeterministicActor(2, 1, hidden=(8,)).double()
    loss = PODSLoss(env, actor, order=2, cg_iterations=10, cg_tol=1e-14, damping=0.0)
    out = loss.improve(start)
    assert (out["stats", "step_size"] == 1.0).all()
    improved = out["batch", "target_action"].transpose(0, 1)
    assert improved.abs().max() < 1.0
    value, gradient = value_and_gradient(env, start, improved)
    assert gradient.abs().max() < 1e-9, "not a stationary point of the concave return"
    assert torch.allclose(value, out["stats", "value_improved"], rtol=1e-12)
    # First order from the same policy gets nowhere near in one step.
    first = PODSLoss(env, actor, order=1, max_action_change=0.5).improve(start)
    assert (first["stats", "value_improved"] < value - 1e-6).all()


@pytest.mark.parametrize("max_action_change", [0.5, None])
def test_first_order_line_search_starts_where_configured_and_halves(max_action_change):
    """Scaled start: α₀ = max_action_change / max|dV/dā| per env; None: α₀ = 1 on the raw gradient (Eq. 6)."""
    env = E.make("pendulum2d", num_envs=4, dtype=torch.float64, seed=2, goal="stop", horizon=20)
    actor = DeterministicActor(env.observation_dim, env.action_dim, hidden=(16,)).double()
    loss = PODSLoss(env, actor, order=1, max_action_change=max_action_change)
    start = env.reset()
    actions, _, _ = loss.policy_actions(start)
    _, gradient = value_and_gradient(env, start, actions)
    first = torch.ones(4, dtype=torch.float64) if max_action_change is None else max_action_change / gradient.abs().amax((0, 2))
    assert torch.allclose(loss.initial_step(gradient), first)
    out = loss.improve(start)
    step = out["stats", "step_size"]
    assert (step > 0).any(), "no env accepted a step: the checks below would hold vacuously"
    halvings = torch.log2(first / step[step > 0])
    assert torch.allclose(halvings, halvings.round(), atol=1e-9) and (halvings >= 0).all()
    assert (out["stats", "value_improved"] >= out["stats", "value_policy"]).all()


def test_improvement_is_monotone_on_every_initial_state_and_regression_fits_targets():
    env = E.make("pendulum2d", num_envs=4, dtype=torch.float64, seed=1, goal="stop", horizon=50)
    actor = DeterministicActor(env.observation_dim, env.action_dim, hidden=(32, 32)).double()
    loss = PODSLoss(env, actor, order=2, cg_iterations=5)
    out = loss.improve(env.reset())
    stats = out["stats"]
    assert (stats["value_improved"] >= stats["value_policy"]).all()
    assert (stats["value_improved"] > stats["value_policy"]).any()
    batch = out["batch"].reshape(-1)
    optimizer = torch.optim.Adam(actor.parameters(), lr=3e-3)
    first = loss(batch)["loss_actor"].item()
    for _ in range(100):
        optimizer.zero_grad()
        loss(batch)["loss_actor"].backward()
        optimizer.step()
    assert loss(batch)["loss_actor"].item() < 0.5 * first


def test_bad_configurations_are_rejected_with_a_clear_message():
    env = PointMass1D()
    actor = DeterministicActor(2, 1, hidden=(8,)).double()
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        PODSLoss(env, actor, order=3)
    with pytest.raises(ValueError, match="max_action_change .* must be > 0 or None"):
        PODSLoss(env, actor, order=1, max_action_change=0.0)
    with pytest.raises(ValueError, match="newton_step_cap must be > 0"):
        PODSLoss(env, actor, order=2, newton_step_cap=0.0)
    with pytest.raises(TypeError, match="reward_residual"):
        PODSLoss(_without_residual(), actor, order=2)


def _without_residual():
    from torchrl.envs import EnvBase

    class Plain(PointMass1D):
        def __getattribute__(self, name):
            if name == "reward_residual":
                raise AttributeError(name)
            return EnvBase.__getattribute__(self, name)

    return Plain()


@pytest.mark.parametrize("fallback", [True, False])
def test_gradient_fallback_where_the_second_order_step_fails(fallback, monkeypatch):
    """A Gauss-Newton direction that only lowers V (here: its negation) is rejected for every env; with the
    fallback the gradient step improves them instead, without it every env keeps the policy's actions."""
    env = E.make("pendulum2d", num_envs=4, dtype=torch.float64, seed=2, goal="stop", horizon=30)
    actor = DeterministicActor(env.observation_dim, env.action_dim, hidden=(32, 32)).double()
    loss = PODSLoss(env, actor, order=2, cg_iterations=5, gradient_fallback=fallback)
    honest = loss.direction

    def uphill(start, actions):
        value, gradient, direction, info = honest(start, actions)
        return value, gradient, -direction.abs() * gradient.sign(), info  # never an ascent direction

    monkeypatch.setattr(loss, "direction", uphill)
    out = loss.improve(env.reset())
    stats = out["stats"]
    assert (stats["value_improved"] >= stats["value_policy"]).all()
    if fallback:
        assert out["gradient_fallback"].item() > 0 and (stats["value_improved"] > stats["value_policy"]).any()
    else:
        assert (stats["step_size"] == 0).all() and "gradient_fallback" not in out.keys()


def test_a_non_finite_gauss_newton_step_falls_back_to_the_gradient(monkeypatch):
    """PODS-2 on cloth once stopped with a NaN action: a CG breakdown in one env must not reach the simulator."""
    import rl.objectives.pods as pods

    env = E.make("pendulum2d", num_envs=4, dtype=torch.float64, seed=2, goal="stop", horizon=30)
    actor = DeterministicActor(env.observation_dim, env.action_dim, hidden=(32, 32)).double()
    loss = PODSLoss(env, actor, order=2, cg_iterations=5)
    solve = pods.conjugate_gradient

    def breaks_in_env_1(*args, **kwargs):
        flat, info = solve(*args, **kwargs)
        flat = flat.clone()
        flat[1] = float("nan")
        return flat, info

    monkeypatch.setattr(pods, "conjugate_gradient", breaks_in_env_1)
    start = env.reset()
    actions, _, _ = loss.policy_actions(start)
    _, gradient, step, info = loss.direction(start, actions)
    assert torch.isfinite(step).all() and info["cg_nonfinite"] == 0.25
    torch.testing.assert_close(step[:, 1], gradient[:, 1])
    out = loss.improve(start)
    assert torch.isfinite(out["batch", "target_action"]).all()


def _one_epoch(num_envs, rollouts, order, integrator="semi_implicit"):
    """A PODSTrainer's first epoch of ``rollouts`` initial states on ``num_envs`` envs: (trainer, scalars)."""
    trainer = _trainer(num_envs, rollouts, order, integrator)
    return trainer, trainer.step()


def _trainer(num_envs, rollouts, order, integrator="semi_implicit"):
    from rl.modules import ObservationNormalizer
    from rl.trainers import PODSConfig, PODSTrainer

    def env_of(n):
        return E.make("pendulum2d", num_envs=n, dtype=torch.float64, seed=5, goal="stop", horizon=8, integrator=integrator)

    env = env_of(num_envs)
    start_env = env if rollouts == num_envs else env_of(rollouts)
    torch.manual_seed(0)
    normalizer = ObservationNormalizer(env.observation_dim)
    actor = DeterministicActor(env.observation_dim, env.action_dim, hidden=(16, 16), normalizer=normalizer).double()
    loss = PODSLoss(env, actor, order=order, cg_iterations=3)
    config = PODSConfig(total_steps=10**6, actor_lr=1e-3, optimizer="adam", betas=(0.9, 0.999), lr_schedule="constant",
                        grad_clip=None, regression_steps=4, rollouts_per_epoch=rollouts, progress=False)
    return PODSTrainer(loss, config, normalizer=normalizer, start_env=start_env)


@pytest.mark.parametrize("order", [1, 2])
def test_rollouts_per_epoch_in_chunks_is_the_epoch_of_one_chunk(order):
    """k = 5 rollouts on 2 envs (chunks of 2, 2 and 1 padded) give the epoch of 5 envs in one chunk: the same k x T
    regression pairs, normalizer statistics, policy after the regression and logged returns, to float64 rounding."""
    chunked, chunked_scalars = _one_epoch(2, 5, order)
    whole, whole_scalars = _one_epoch(5, 5, order)
    assert chunked.env_steps == whole.env_steps == 5 * 8 and chunked.steps_per_iter == 5 * 8
    assert chunked_scalars["pods/accepted"] > 0, "no rollout improved: the comparison would be vacuous"
    for key in ("train/episode_return", "pods/improved_return", "pods/accepted", "pods/step_size", "loss/actor_first", "loss/actor"):
        assert chunked_scalars[key] == pytest.approx(whole_scalars[key], rel=1e-9, abs=1e-12), key
    torch.testing.assert_close(chunked.normalizer.mean, whole.normalizer.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunked.normalizer.var, whole.normalizer.var, rtol=1e-10, atol=1e-12)
    for a, b in zip(chunked.loss.actor.parameters(), whole.loss.actor.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the start env's generator (the one a checkpoint saves) drew once per epoch in both
    assert torch.equal(chunked.env.generator.get_state(), whole.env.generator.get_state())


def test_rollouts_per_epoch_needs_a_start_env_of_k_envs():
    with pytest.raises(ValueError, match="rollouts_per_epoch=5 needs a start_env of 5 envs"):
        from rl.trainers import PODSConfig, PODSTrainer

        env = E.make("pendulum2d", num_envs=2, dtype=torch.float64, seed=5, goal="stop", horizon=12)
        actor = DeterministicActor(env.observation_dim, env.action_dim, hidden=(8,)).double()
        PODSTrainer(PODSLoss(env, actor, order=1), PODSConfig(rollouts_per_epoch=5, progress=False))
    with pytest.raises(ValueError, match="rollouts_per_epoch must be >= 1"):
        PODSConfig(rollouts_per_epoch=0)


def test_a_chunked_epoch_resumes_exactly(tmp_path):
    """rollouts_per_epoch above num_envs: the start env's generator is the one the checkpoint saves (the training env
    never resets), so two epochs equal one epoch, a checkpoint, a fresh trainer resumed from it and the second epoch."""
    straight, _ = _one_epoch(2, 3, 1)
    straight.step()
    first, _ = _one_epoch(2, 3, 1)
    path = first.save(tmp_path / "last.pt")
    resumed = _trainer(2, 3, 1)
    resumed.resume(path)
    resumed.step()
    assert resumed.env_steps == straight.env_steps == 2 * 3 * 8
    for a, b in zip(resumed.loss.actor.parameters(), straight.loss.actor.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed.env.generator.get_state(), straight.env.generator.get_state())
