"""Acceptance rules at their boundary and settings that change what an algorithm computes, pinned (issue 22).

PODS's line search accepts a step only if it *strictly* raises V (section 3.3): a trial whose value merely equals
V(ā), e.g. a step the action bounds project to nothing, is refused; a non-strict rule would accept it and report a
non-zero step. PPO's clip range and the rest of its loss settings are pinned on the loss the recipe builds.
"""

import pytest
import torch
from point_mass import PointMass1D

from rl.objectives.trajectory import backtracking_line_search, play, value_and_gradient


def _line_search(actions, direction, env, start, **kw):
    rollout = play(env, start, actions)
    value = rollout.rewards.sum(0)
    _, gradient = value_and_gradient(env, start, actions)
    return value, backtracking_line_search(env, start, actions, value, rollout.observations, gradient, direction,
                                           torch.ones(env.num_envs, dtype=torch.float64), **kw)


def test_pods_line_search_refuses_a_step_that_only_equals_the_value():
    """Actions at the bounds and a direction pointing further out: every trial clips back to ā, its value equals
    V(ā) (and the Armijo term is 0): no step is accepted, all trials are spent, ā is kept. Unclipped, the steps would
    pay (the masses start 10 m out and the push is towards 0), so the bounds [-1, 1] are what refuses them."""
    env = PointMass1D(num_envs=2, horizon=4)
    start = env.reset()
    start["observation"] = torch.tensor([[-10.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    actions = torch.cat([torch.ones(4, 1, 1), -torch.ones(4, 1, 1)], 1).double()
    value, result = _line_search(actions, actions.clone(), env, start, max_trials=3, armijo=0.0)
    assert torch.equal(result.step_size, torch.zeros(2, dtype=torch.float64))
    assert result.trials == 3
    assert torch.equal(result.value, value) and torch.equal(result.actions, actions)
    unclipped = play(env, start, 2 * actions).rewards.sum(0)
    assert (unclipped > value).all()


def test_pods_line_search_defaults():
    """Called without them: 10 trials, bounds [-1, 1], armijo 1e-4 (checked by what they do, not by the signature)."""
    import inspect

    params = inspect.signature(backtracking_line_search).parameters
    assert {k: params[k].default for k in ("max_trials", "armijo", "low", "high")} == {
        "max_trials": 10, "armijo": 1e-4, "low": -1.0, "high": 1.0}
    env = PointMass1D(num_envs=2, horizon=4)
    start = env.reset()
    start["observation"] = torch.tensor([[-10.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    # from just inside the bounds, pushing out: the first trial is clipped at exactly +-1 and pays (accepted, alpha 1)
    actions = torch.cat([torch.full((4, 1, 1), 0.5), -torch.full((4, 1, 1), 0.5)], 1).double()
    rollout = play(env, start, actions)
    value = rollout.rewards.sum(0)
    _, gradient = value_and_gradient(env, start, actions)
    result = backtracking_line_search(env, start, actions, value, rollout.observations, gradient, 10 * actions.sign(),
                                      torch.ones(2, dtype=torch.float64))
    assert torch.equal(result.actions, actions.sign()) and result.trials == 1
    # a step that only equals V: all default trials are spent
    at_bound = actions.sign()
    rollout = play(env, start, at_bound)
    _, gradient = value_and_gradient(env, start, at_bound)
    none = backtracking_line_search(env, start, at_bound, rollout.rewards.sum(0), rollout.observations, gradient,
                                    at_bound.clone(), torch.ones(2, dtype=torch.float64))
    assert none.trials == 10 and torch.equal(none.step_size, torch.zeros(2, dtype=torch.float64))


def test_pods_line_search_default_armijo_refuses_a_step_below_its_prediction():
    """armijo 1e-4 by default: a trial that improves V by less than 1e-4 of the first-order prediction is refused,
    one that improves it by more is accepted (a long step on the concave return falls short of its prediction)."""
    env = PointMass1D(num_envs=1, horizon=5)
    start = env.reset()
    start["observation"] = torch.tensor([[0.05, 0.0]], dtype=torch.float64)  # a full push overshoots 0
    actions = torch.zeros(5, 1, 1, dtype=torch.float64)
    rollout = play(env, start, actions)
    value = rollout.rewards.sum(0)
    _, gradient = value_and_gradient(env, start, actions)
    direction = gradient / gradient.abs().max()
    gains = []
    for scale in torch.linspace(0.05, 3.0, 60, dtype=torch.float64):
        trial = (actions + scale * direction).clamp(-1, 1)
        v = play(env, start, trial).rewards.sum(0)
        predicted = (gradient * (trial - actions)).sum()
        gain = ((v - value) / predicted).item()
        res = backtracking_line_search(env, start, actions, value, rollout.observations, gradient, scale * direction,
                                       torch.ones(1, dtype=torch.float64), max_trials=1)
        assert (res.step_size.item() == 1.0) == (v.item() > value.item() and gain >= 1e-4), (scale, gain)
        gains.append(gain)
    assert min(gains) < 0 < max(gains) < 1  # both verdicts occur, and accepted steps fall short of the prediction


def test_pods_line_search_armijo_condition():
    """With armijo = 0.5 a trial must also reach V(ā) + 0.5·<dV/dā, trial - ā>: on this concave return the accepted
    alpha is the first halving that does, smaller than the first that merely improves V (armijo = 0)."""
    env = PointMass1D(num_envs=2, horizon=5)
    start = env.reset()
    start["observation"] = torch.tensor([[0.8, 0.0], [-0.6, 0.3]], dtype=torch.float64)
    actions = torch.full((5, 2, 1), 0.1, dtype=torch.float64)  # non-zero: the prediction uses trial - ā
    rollout = play(env, start, actions)
    value = rollout.rewards.sum(0)
    _, gradient = value_and_gradient(env, start, actions)
    direction = 40 * gradient  # a long first step: the first trials overshoot
    first = torch.ones(2, dtype=torch.float64)
    plain = backtracking_line_search(env, start, actions, value, rollout.observations, gradient, direction, first, 12, 0.0)
    strict = backtracking_line_search(env, start, actions, value, rollout.observations, gradient, direction, first, 12, 0.5)
    for i in range(2):
        for j in range(12):
            a = 0.5**j
            trial = (actions + a * direction).clamp(-1, 1)
            v = play(env, start, trial).rewards.sum(0)[i]
            if v > value[i] and v >= value[i] + 0.5 * (gradient * (trial - actions)).sum((0, 2))[i]:
                assert strict.step_size[i].item() == a
                break
    assert (strict.step_size < plain.step_size).any()
    assert (strict.step_size > 0).all()


def test_pods_line_search_accepts_the_first_strict_improvement_and_halves_until_then():
    """1-D point mass from rest at x0 > 0: pushing towards 0 helps for small steps; the first trial (alpha = 1, a large
    push) overshoots and is refused, a halved one is accepted, per env independently."""
    env = PointMass1D(num_envs=2, horizon=3)
    start = env.reset()
    start["observation"] = torch.tensor([[0.5, 0.0], [0.02, 0.0]], dtype=torch.float64)
    actions = torch.zeros(3, 2, 1, dtype=torch.float64)
    direction = -torch.ones_like(actions)  # push towards -x
    value, result = _line_search(actions, direction, env, start, max_trials=8, armijo=0.0)
    for i in range(2):
        alpha = result.step_size[i].item()
        assert alpha > 0 and result.value[i] > value[i]
        # the accepted alpha is the first of 1, 1/2, 1/4, ... that strictly improves V
        for j in range(8):
            a = 0.5**j
            trial = play(env, start, (actions + a * direction).clamp(-1, 1)).rewards.sum(0)[i]
            if trial > value[i]:
                assert alpha == a
                break
    assert result.step_size[0] > result.step_size[1]  # far from 0: a bigger push pays
    # the result holds the accepted trial's actions, value and observations
    accepted = (actions + result.step_size[None, :, None] * direction).clamp(-1, 1)
    torch.testing.assert_close(result.actions, accepted, rtol=0, atol=0)
    replay = play(env, start, accepted)
    torch.testing.assert_close(result.value, replay.rewards.sum(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(result.observations, replay.observations, rtol=0, atol=0)
    assert not torch.equal(result.observations, play(env, start, actions).observations)


def test_pods_armijo_condition_holds_at_equality():
    """V(trial) = V(ā) + armijo·<g, trial - ā> exactly is accepted (>=); a prediction a hair larger is refused. The
    caller's gradient g is chosen so that the prediction equals the trial's gain (Sterbenz: the difference of two
    values within a factor 2 is exact, so V(ā) + (V(trial) - V(ā)) == V(trial))."""
    env = PointMass1D(num_envs=1, horizon=3)
    start = env.reset()
    start["observation"] = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    actions = torch.full((3, 1, 1), 0.2, dtype=torch.float64)  # non-zero: trial - ā is not trial + ā
    direction = torch.zeros_like(actions)
    direction[0, 0, 0] = -0.25
    rollout = play(env, start, actions)
    value = rollout.rewards.sum(0)
    trial_value = play(env, start, actions + direction).rewards.sum(0)
    gain = trial_value - value
    assert gain.item() > 0 and (value + gain == trial_value).all()
    gradient = torch.zeros_like(actions)
    gradient[0, 0, 0] = gain.item() / -0.25  # <g, trial - ā> = gain
    assert ((gradient * direction).sum() == gain).all()
    one = torch.ones(1, dtype=torch.float64)
    at_equality = backtracking_line_search(env, start, actions, value, rollout.observations, gradient, direction, one, 1, 1.0)
    assert at_equality.step_size.item() == 1.0
    above = gradient * (1 + 1e-9)  # a prediction a hair above the gain
    refused = backtracking_line_search(env, start, actions, value, rollout.observations, above, direction, one, 1, 1.0)
    assert refused.step_size.item() == 0.0


def test_ppo_loss_settings_are_pinned(tmp_path):
    """PPO's loss as the recipe builds it: clip range 0.2, no value clipping, no entropy bonus, critic weight 1, L2
    value loss, advantages normalized; GAE(0.99, 0.95); 5 epochs of 4 minibatches."""
    from test_paper_settings import composed

    from rl.experiment import load_recipe, make_env

    cfg = composed("ppo")
    algo = cfg.algo
    assert (algo.clip_epsilon, algo.clip_value, algo.entropy_coeff, algo.critic_coeff) == (0.2, None, 0.0, 1.0)
    assert (algo.loss_critic_type, algo.normalize_advantage, algo.epochs, algo.minibatches) == ("l2", True, 5, 4)
    loss = load_recipe("ppo").make_trainer(cfg, make_env(cfg), run_dir=tmp_path).loss
    assert loss.clip_epsilon.item() == pytest.approx(0.2)
    assert loss.clip_value is None and not loss.entropy_bonus
    assert float(loss.critic_coeff) == 1.0 and loss.loss_critic_type == "l2" and loss.normalize_advantage
    assert (float(loss._value_estimator.gamma), float(loss._value_estimator.lmbda)) == (pytest.approx(0.99), pytest.approx(0.95))
