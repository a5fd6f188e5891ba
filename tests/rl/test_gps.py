"""GPS (mirror-descent guided policy search) on the PODS envs: the simulator's linearization against central
finite differences, the c-step's improvement under its KL bound, the s-step's regression loss."""

from __future__ import annotations

import copy

import pytest
import torch
from point_mass import step_point_mass
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

import tphys.envs
from rl.modules import DeterministicActor, ObservationNormalizer
from rl.objectives.gps import GPSLoss
from rl.objectives.trajectory import GaussNewton, env_major, time_major, value_and_gradient
from rl.trainers import GPSTrainer, PODSConfig

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


def test_a_failed_dual_search_keeps_the_linearized_policy():
    """Where ``kl_constrained_lqr`` found no η with a positive definite Q_uu (KL inf, a stand-in controller), the c-step
    uses the linearized policy (η = 1e16, KL 0) for that initial state and keeps the others' controllers."""
    from rl.objectives.gps import solved_or_prior
    from rl.objectives.lqr import ConstrainedSolution, LinearGaussian

    g = torch.Generator().manual_seed(0)
    shapes = ((3, 4, 1, 2), (3, 4, 1), (3, 4, 1, 1))
    prior = LinearGaussian(*(torch.randn(*shape, generator=g, dtype=D) for shape in shapes))
    controller = LinearGaussian(*(1e33 * torch.randn(*shape, generator=g, dtype=D) for shape in shapes))
    solution = ConstrainedSolution(controller, torch.tensor([0.1, 1e16, 0.2], dtype=D), torch.tensor([1.0, float("inf"), 2.0], dtype=D))
    out = solved_or_prior(solution, prior)
    for got, failed, kept in zip(out.controller, prior, controller):
        torch.testing.assert_close(got[1], failed[1])
        torch.testing.assert_close(got[[0, 2]], kept[[0, 2]])
    assert out.eta.tolist() == [0.1, 1e16, 0.2] and out.kl.tolist() == [1.0, 0.0, 2.0]
    solved = solution._replace(kl=torch.ones(3, dtype=D))
    assert solved_or_prior(solved, prior) is solved


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


def test_the_s_step_starts_from_the_policy_the_c_step_linearized():
    """The c-step bounds the KL from the policy it linearized; the regression must start from that policy. The observation
    normalizer, updated with every c-step's observations before the regression, changed the policy in between, outside
    the bound (pendulum2d/stop, 64 envs: the evaluation return fell from -20.1 to -53.5 over iterations 2-4). It is fixed
    after the first s-step: from the second iteration on, the policy's actions on the c-step's observations are the same
    at the end of the c-step and at the start of the regression. The logged diagnostics come along."""
    env = tphys.envs.make("pendulum2d", num_envs=4, dtype=D, goal="stop", seed=0, horizon=8)
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    torch.manual_seed(0)
    normalizer = ObservationNormalizer(obs_dim)
    actor = DeterministicActor(obs_dim, action_dim, (16, 16), "tanh", False, normalizer=normalizer).to(D)
    config = PODSConfig(total_steps=10**9, actor_lr=1e-3, optimizer="adam", betas=(0.9, 0.999), lr_schedule="constant",
                        grad_clip=None, regression_steps=5, progress=False)
    trainer = GPSTrainer(GPSLoss(env, actor), config, normalizer=normalizer)
    improve, regress, seen = trainer.improve, trainer.regress, []

    def actions(batch):
        with torch.no_grad():
            return actor(batch.select("observation").reshape(-1).clone(False))["action"]

    def noting_improve(start):
        improved, chunks = improve(start)
        seen.append([actions(improved["batch"])])
        return improved, chunks

    def noting_regress(batch):
        seen[-1].append(actions(batch))
        return regress(batch)

    trainer.improve, trainer.regress = noting_improve, noting_regress
    scalars = [trainer.step() for _ in range(3)]
    for c_step, s_step in seen[1:]:
        torch.testing.assert_close(s_step, c_step, rtol=0, atol=1e-12)
    assert normalizer.count.item() == 4 * 8  # the first c-step's observations, then fixed
    for s in scalars:
        assert 0 <= s["gps/kl"] <= s["gps/kl_bound"] * (1 + 1e-6) and s["gps/quu_min_eig"] > 0 and 0 < s["gps/weight_ess"] <= 1
        assert s["gps/target_rms_after"] < s["gps/target_rms_before"]


def test_an_s_step_that_lowers_the_return_is_undone_and_shrinks_the_kl_step():
    """The s-step's acceptance test: where the regressed policy's mean return from the iteration's initial states is below
    the policy's before (here: a bar raised to +inf), the actor and its optimizer are as before the regression and the KL
    multiplier the c-step left is halved; otherwise the regression stands."""
    env, actor, loss = make(horizon=6, num_envs=3)
    config = PODSConfig(total_steps=10**9, actor_lr=1e-3, optimizer="adam", betas=(0.9, 0.999), lr_schedule="constant",
                        grad_clip=None, regression_steps=3, progress=False)
    trainer = GPSTrainer(loss, config)
    improve, multipliers = trainer.improve, []

    def impossible_bar(start):
        improved, chunks = improve(start)
        multipliers.append(loss.kl_multiplier.item())
        trainer.value_before = torch.full_like(trainer.value_before, float("inf"))
        return improved, chunks

    def parameters():
        return [p.detach().clone() for p in actor.parameters()]

    before = parameters()
    accepted = trainer.step()
    assert accepted["gps/accepted"] == 1.0 and any(not torch.equal(a, b) for a, b in zip(before, parameters()))
    before, moments = parameters(), copy.deepcopy(trainer.optimizers["actor"].state_dict())
    trainer.improve = impossible_bar
    rejected = trainer.step()
    assert rejected["gps/accepted"] == 0.0 and rejected["gps/policy_return_after"] < float("inf")
    assert all(torch.equal(a, b) for a, b in zip(before, parameters()))
    torch.testing.assert_close(trainer.optimizers["actor"].state_dict(), moments, rtol=0, atol=0)
    assert loss.kl_multiplier.item() == max(0.5 * multipliers[-1], 0.1) == rejected["gps/kl_multiplier"]


# ---------------------------------------------------------------------- the LQ point mass: GPS against the LQR solution
class TimedPointMass(EnvBase):
    """``tests/rl/point_mass.py``'s LQ problem (v' = v + dt a, x' = x + dt v', r = -x'² - 0.1 a² = -|e|²) with the hooks
    GPS linearizes through (``state_keys``, ``observe``): the state (x, v) under ``state``; the observation (x, v, t/T)
    holds the time, since the finite-horizon LQR policy is time-varying and the policy is a function of the observation."""

    batch_locked = True
    state_keys = ("state",)

    def __init__(self, num_envs=8, horizon=10, dt=0.1, scale=0.3, seed=0):
        super().__init__(device="cpu", batch_size=torch.Size([num_envs]))
        self.num_envs, self.horizon, self.dt, self.scale = num_envs, horizon, dt, scale
        n = num_envs
        self.observation_spec = Composite(observation=Unbounded(shape=(n, 3), dtype=D), state=Unbounded(shape=(n, 2), dtype=D),
                                          step_count=Unbounded(shape=(n, 1), dtype=torch.int64), shape=(n,))
        self.action_spec = Bounded(low=-1.0, high=1.0, shape=(n, 1), dtype=D)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=D)
        flag = Categorical(2, shape=(n, 1), dtype=torch.bool)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=(n,))
        self.generator = torch.Generator().manual_seed(seed)

    def _set_seed(self, seed):
        self.generator.manual_seed(int(seed or 0))

    def observe(self, state, action):
        return {"observation": torch.cat([state["state"], state["step_count"].to(D) / self.horizon], -1)}

    def _reset(self, td=None, **kwargs):
        x = self.scale * (2 * torch.rand(self.num_envs, 1, generator=self.generator, dtype=D) - 1)
        flags = torch.zeros(self.num_envs, 1, dtype=torch.bool)
        out = TensorDict(state=torch.cat([x, torch.zeros_like(x)], -1), step_count=torch.zeros(self.num_envs, 1, dtype=torch.int64),
                         done=flags, terminated=flags.clone(), truncated=flags.clone(), batch_size=self.batch_size)
        return out.update(self.observe(out, None))

    def _step(self, td):
        action = td["action"].clamp(-1.0, 1.0)
        state, reward = step_point_mass(td["state"], action, self.dt)
        steps = td["step_count"] + 1
        done = steps >= self.horizon
        out = TensorDict(state=state, step_count=steps, reward=reward, done=done, terminated=torch.zeros_like(done), truncated=done,
                         batch_size=self.batch_size)
        return out.update(self.observe(out, action))

    def reward_residual(self, transition):
        return torch.cat([transition["next", "observation"][:, :1], 0.1**0.5 * transition["action"].clamp(-1.0, 1.0)], -1)


def lqr_solution(env, start):
    """``(actions [T, N, A], values [N])``: the maximizer of the concave quadratic return from ``start``, solved densely
    (the Gauss-Newton matrix is the exact Hessian on an LQ problem), independently of GPS's Riccati recursion."""
    zero = torch.zeros(env.horizon, env.num_envs, 1, dtype=D)
    hessian = GaussNewton(env, start, zero)
    step = torch.linalg.solve(hessian.dense(), env_major(hessian.gradient).unsqueeze(-1)).squeeze(-1)
    actions = time_major(step, env.horizon)
    value, gradient = value_and_gradient(env, start, actions)
    assert gradient.abs().max() < 1e-12 and actions.abs().max() < 1  # the optimum, inside the action box
    return actions, value


def test_a_c_step_under_a_loose_bound_is_the_lqr_solution():
    """On an LQ problem the linearization is exact: with a KL bound that does not bind, one c-step's controller, rolled
    out, plays the LQR optimum from every initial state."""
    env = TimedPointMass(num_envs=4)
    start = env.reset()
    optimum, best = lqr_solution(env, start)
    torch.manual_seed(0)
    actor = DeterministicActor(3, 1, (16, 16), "tanh", False).to(D)
    out = GPSLoss(env, actor, kl_step=1e6).improve(start)
    torch.testing.assert_close(out["batch", "target_action"].transpose(0, 1), optimum, rtol=0, atol=1e-5)  # eta = 1e-8 on the prior
    torch.testing.assert_close(out["stats", "value_improved"], best, rtol=1e-9, atol=1e-9)
    assert (out["stats", "value_policy"] < best - 1e-3).all()


def test_gps_converges_to_the_lqr_solution_on_the_point_mass():
    """GPS iterations (c-step under the adaptive KL bound, then the precision-weighted regression) bring the policy to the
    LQR solution: on initial states it never trained on, its return closes 99 % of the gap from the initial policy's to
    the optimum's, and its actions come within 0.15 of the optimal plan (the MLP's fit), after 6 iterations."""
    env, test_env = TimedPointMass(num_envs=8), TimedPointMass(num_envs=16, seed=123)
    test = test_env.reset()
    optimum, best = lqr_solution(test_env, test)
    torch.manual_seed(0)
    actor = DeterministicActor(3, 1, (32, 32), "tanh", False).to(D)
    loss = GPSLoss(env, actor, kl_step=0.2, policy_std=0.1)
    config = PODSConfig(total_steps=10**9, actor_lr=3e-3, optimizer="adam", betas=(0.9, 0.999), lr_schedule="constant",
                        grad_clip=None, regression_steps=50, progress=False)
    trainer = GPSTrainer(loss, config)

    def policy():
        actions = GPSLoss(test_env, actor).policy_actions(test).transpose(0, 1)
        return actions, value_and_gradient(test_env, test, actions)[0]

    _, initial = policy()
    for _ in range(6):
        trainer.step()
    actions, value = policy()
    gap = ((best - value).mean() / (best - initial).mean()).item()
    assert 0 <= gap < 0.01, gap
    assert (actions - optimum).abs().max() < 0.15


# ---------------------------------------------------------------------- pendulum2d/stop: five monotone iterations
@pytest.mark.slow
def test_gps_improves_the_policy_monotonically_on_pendulum2d_stop():
    """The gps recipe's defaults on pendulum2d/stop (16 envs, float64): over 5 iterations the deterministic policy's mean
    return on 32 fixed initial states it never trained on never falls (measured: -123.3, -66.5, -20.1, -12.1, -12.1, -12.1:
    the s-steps of the last two iterations lowered the return from their training states and were undone). Without the
    c-step's backtracking (algo.backtracks=0) the third iteration dropped to -352.7. ~3-8 min."""
    from rl.cli import compose
    from rl.experiment import load_recipe, make_env, setup
    from rl.objectives.trajectory import play

    cfg = compose("gps", ["env=pendulum2d", "env.goal=stop", "num_envs=16", "progress=false", "dtype=float64"])
    setup(cfg)
    trainer = load_recipe("gps").make_trainer(cfg, make_env(cfg))
    test_env = make_env(cfg, num_envs=32, seed=10_000)
    test = test_env.reset()

    def test_return():
        actions = GPSLoss(test_env, trainer.loss.actor).policy_actions(test).transpose(0, 1)
        return play(test_env, test, actions).rewards.sum(0).mean().item()

    returns = [test_return()]
    for _ in range(5):
        trainer.step()
        returns.append(test_return())
    assert all(after >= before for before, after in zip(returns, returns[1:])), returns
    assert returns[-1] > 0.5 * returns[0]  # and by a margin: -123 -> -12 measured


@pytest.mark.slow
def test_gps_does_not_fall_at_the_table_settings_on_pendulum2d_stop():
    """The gps recipe's defaults as the PODS table runs them (pendulum2d/stop, 64 envs, float32): over 6 iterations the
    deterministic policy's mean return on the 64 initial states of the table's evaluation falls by less than 2 at any
    iteration (the 95 % CI of that evaluation is about ±2) and ends above a fifth of where it began. Measured: -120.5,
    -59.3, -19.3, -19.3, -9.9, -10.9, -10.9 (the third and sixth s-steps undone, the fifth accepted on its training states
    and 1.0 lower here). With the observation normalizer running through every iteration it fell by 13.7 and 19.7 at the
    third and fourth (-120.5, -59.3, -20.1, -33.8, -53.5). ~5 min."""
    from rl.cli import compose
    from rl.experiment import load_recipe, make_env, make_eval_env, setup

    cfg = compose("gps", ["env=pendulum2d", "env.goal=stop", "progress=false"])
    setup(cfg)
    trainer = load_recipe("gps").make_trainer(cfg, make_env(cfg))
    test_env = make_eval_env(cfg)
    test = test_env.reset()

    def test_return():
        return GPSLoss(test_env, trainer.loss.actor).policy_episode(test)[1].mean().item()

    returns = [test_return()]
    for _ in range(6):
        trainer.step()
        returns.append(test_return())
    print("fixed-state returns", returns)
    assert all(after > before - 2.0 for before, after in zip(returns, returns[1:])), returns
    assert returns[-1] > 0.2 * returns[0], returns
