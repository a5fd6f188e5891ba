"""Test utilities: differentiable rollouts of tphys envs from explicit actions."""

from __future__ import annotations

from torchrl.envs.utils import step_mdp


def summed_reward(env, td0, actions):
    """Sum of rewards of a rollout of ``actions`` [T, N, A] from the state in ``td0``."""
    td = td0
    total = 0.0
    for action in actions:
        td = td.clone(False).set("action", action)
        td = env.step(td)
        total = total + td["next", "reward"].sum()
        td = step_mdp(td)
    return total
