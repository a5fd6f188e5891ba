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
    """Actions at the upper bound and a direction pointing further out: every trial clips back to ā, its value equals
    V(ā) (and the Armijo term is 0): no step is accepted, all trials are spent, ā is kept."""
    env = PointMass1D(num_envs=2, horizon=4)
    start = env.reset()
    actions = torch.ones(4, 2, 1, dtype=torch.float64)
    value, result = _line_search(actions, torch.ones_like(actions), env, start, max_trials=3, armijo=0.0)
    assert torch.equal(result.step_size, torch.zeros(2, dtype=torch.float64))
    assert result.trials == 3
    assert torch.equal(result.value, value) and torch.equal(result.actions, actions)


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
